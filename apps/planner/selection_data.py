"""Workspace reads, validation and exports behind the targeted-selection page.

Mining itself is :func:`actors.selection.mine.mine` / :func:`~actors.selection.mine.mine_batch` — the calls
``assay mine`` makes. This module only checks input before anything is written (image bytes that decode, a box
inside the image) and turns a saved selection (``selections/<query_id>.parquet``) into a gallery and the downloads
of ``assay export`` (:func:`actors.selection.export.export_bytes`).
"""

from __future__ import annotations

import hashlib
import io
import math

import pandas as pd
import streamlit as st

from actors.core.errors import UserError
from apps.planner.data import _stamp

THUMB = 360  # longest side of a gallery thumbnail, pixels


def stores(ws) -> list[str]:
    """Feature stores (folders under ``features/``)."""
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(ws.path("features"), allow_not_found=True)
    return sorted(i.base_name for i in ws.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)


def indexed_stores(ws) -> list[str]:
    """Feature stores whose region index exists (``index/<model>/manifest.json``, or its shards')."""
    return [m for m in stores(ws) if ws.exists(f"index/{m}/manifest.json")
            or ws.exists(f"index/{m}/shards/manifest.json")]


def catalog(ws) -> pd.DataFrame:
    """The ok catalog rows (image_id, uri, width, height, split); empty when there is no catalog."""
    from actors.catalog.schema import IMAGES

    cols = ["image_id", "uri", "width", "height", "split"]
    if not ws.exists(IMAGES):
        return pd.DataFrame(columns=cols)
    return _catalog(ws.uri, _stamp(ws, IMAGES)).copy()


@st.cache_data(show_spinner=False, max_entries=8)
def _catalog(uri: str, stamp) -> pd.DataFrame:
    from actors.catalog.schema import load_images

    return load_images(uri, columns=["image_id", "uri", "width", "height", "split"]).to_pandas()


def index_stamp(ws, model: str) -> tuple:
    """A cache key that changes whenever ``model``'s region index changes: the stamps of the single index's
    manifest and of the sharded index's manifest (``assay index --shards N``), whichever exist."""
    return _stamp(ws, f"index/{model}/manifest.json"), _stamp(ws, f"index/{model}/shards/manifest.json")


@st.cache_resource(show_spinner=False, max_entries=4)
def indexed_images(uri: str, model: str, stamp) -> frozenset[str]:
    """Image ids in ``model``'s region index (their stored features can serve as a query)."""
    from actors.core.workspace import Workspace
    from actors.selection.sharded_build import indexed_images as in_index  # single or sharded

    return frozenset(in_index(Workspace(uri), model))


def decode_upload(data: bytes):
    """A PIL RGB image from uploaded bytes and its format (``"png"``/``"jpeg"``/…); :class:`UserError` when the
    bytes are not an image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UserError("the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = (im.format or "png").lower()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"the uploaded file is not an image this app can read ({type(e).__name__})") from e
    if rgb.width < 1 or rgb.height < 1:
        raise UserError("the uploaded image is empty")
    return rgb, fmt


def box_from_canvas(json_data: dict | None, scale: float) -> tuple[float, float, float, float] | None:
    """The last rectangle drawn on the canvas (Fabric.js JSON, canvas pixels) in image pixels (canvas / ``scale``),
    or None when none is drawn."""
    objs = (json_data or {}).get("objects") or []
    rects = [o for o in objs if isinstance(o, dict) and str(o.get("type", "")).lower() == "rect"]
    if not rects:
        return None
    o = rects[-1]
    x0, y0 = float(o["left"]) / scale, float(o["top"]) / scale
    return (x0, y0, x0 + float(o["width"]) * float(o.get("scaleX", 1)) / scale,
            y0 + float(o["height"]) * float(o.get("scaleY", 1)) / scale)


def check_box(box, width: float, height: float) -> tuple[float, float, float, float]:
    """The box as floats when ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``; else :class:`UserError`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise UserError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has a value that is not a number")
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: need x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise UserError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image of size "
                        f"{width:g}x{height:g}")
    return x0, y0, x1, y1


def _encode(image, fmt: str) -> tuple[bytes, str]:
    ext = "jpg" if fmt in ("jpeg", "jpg") else "png"
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if ext == "jpg" else "PNG")
    return buf.getvalue(), ext


def upload_rel(image, fmt: str):
    """Where an uploaded query image goes: ``queries/images/<sha256 of its pixels' encoding>.<ext>`` (the uploaded
    file name is never used), and a check ``existed(ws)`` telling whether it is already there."""
    data, ext = _encode(image, fmt)
    rel = f"queries/images/{hashlib.sha256(data).hexdigest()[:16]}.{ext}"
    return rel, lambda ws: ws.exists(rel)


def save_upload(ws, rel: str, image, fmt: str) -> str:
    """Write an uploaded query image to ``rel`` (see :func:`upload_rel`); returns its local path."""
    data, _ = _encode(image, fmt)
    ws.write_bytes(rel, data)
    return str(ws.local_path(rel))


def file_name(uri, image_id: str) -> str:
    """What a reader calls an image: the file name of its ``uri`` (local path or URI), else its image_id."""
    import posixpath

    if isinstance(uri, str) and uri:
        name = posixpath.basename(uri.rstrip("/").replace("\\", "/"))
        if name:
            return name
    return str(image_id)


def query_image_name(ws, query: dict) -> str:
    """The file name of a query's image (``query["image"]`` is a file path or a pool image_id)."""
    image = str(query.get("image", ""))
    uri = catalog(ws).set_index("image_id")["uri"].get(image, image) if image else ""
    return file_name(uri, image)


def selection_label(ws, query_id: str) -> str:
    """A saved selection as a reader finds it: the query image's file name, the method and when it was saved
    (``"cat.jpg · template · 2025-06-01 14:02"``), the query id last."""
    import datetime as dt

    qrel = f"queries/{query_id}.json"
    query = ws.read_json(qrel) if ws.exists(qrel) else {}
    parts = [query_image_name(ws, query)] if query.get("image") else []
    parts += [str(query["method"])] if query.get("method") else []
    mtime = _stamp(ws, f"selections/{query_id}.parquet")[0]
    if mtime:
        parts.append(dt.datetime.fromtimestamp(mtime / 1e9).strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts + [query_id])


def selection_ids(ws) -> list[str]:
    """Saved selections (``selections/<query_id>.parquet``), newest first."""
    names = [n[: -len(".parquet")] for n in ws.listdir("selections", ".parquet")]
    return sorted(names, key=lambda q: _stamp(ws, f"selections/{q}.parquet")[0] or 0, reverse=True)


def load_selection(ws, query_id: str) -> tuple[pd.DataFrame, dict]:
    """The selection's hits joined with the catalog (uri, width, height) and the query record (or {})."""
    rel = f"selections/{query_id}.parquet"
    if not ws.exists(rel):
        raise UserError(f"{ws.path(rel)}: no such selection")
    hits = _selection(ws.uri, rel, _stamp(ws, rel)).copy()
    cat = catalog(ws)[["image_id", "uri", "width", "height"]]
    hits = hits.merge(cat, on="image_id", how="left")
    qrel = f"queries/{query_id}.json"
    query = ws.read_json(qrel) if ws.exists(qrel) else {}
    return hits.sort_values("rank").reset_index(drop=True), query


@st.cache_data(show_spinner=False, max_entries=32)
def _selection(uri: str, rel: str, stamp) -> pd.DataFrame:
    from actors.core.workspace import Workspace

    cols = ["image_id", "rank", "score", "x0", "y0", "x1", "y1"]
    return Workspace(uri).read_table(rel, columns=cols).to_pandas()


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(uri: str, box: tuple[float, float, float, float], mtime=None) -> bytes | None:
    """PNG bytes of the image at ``uri`` with ``box`` drawn, at most :data:`THUMB` px; None when unreadable."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(uri) as im:
            im = im.convert("RGB")
    except (OSError, ValueError):
        return None
    draw = ImageDraw.Draw(im)
    w = max(2, round(max(im.size) / 160))
    draw.rectangle([box[0], box[1], box[2], box[3]], outline=(255, 40, 40), width=w)
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def export_file(ws, query_id: str, fmt: str) -> tuple[str, bytes]:
    """Selection ``query_id`` as one download in ``fmt`` (csv, parquet, coco, fiftyone: a zip of its folder): the
    files ``assay export`` writes (:func:`actors.selection.export.export_bytes`), cached until the selection, its
    query or the catalog changes. ``(file name, bytes)``; :class:`UserError` when the format cannot be written."""
    from actors.catalog.schema import IMAGES

    stamps = (_stamp(ws, f"selections/{query_id}.parquet"), _stamp(ws, f"queries/{query_id}.json"), _stamp(ws, IMAGES))
    return _export(ws.uri, query_id, fmt, stamps)


@st.cache_data(show_spinner=False, max_entries=32)
def _export(uri: str, query_id: str, fmt: str, stamps) -> tuple[str, bytes]:
    from actors.core.workspace import Workspace
    from actors.selection.export import export_bytes

    return export_bytes(Workspace(uri), query_id, fmt)
