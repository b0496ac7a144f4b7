"""A saved selection (``selections/<query_id>.parquet``) written out for other tools.

Formats (:data:`FORMATS`), each written atomically (temp file, then rename; :class:`~actors.core.workspace.Workspace`):

``csv`` / ``parquet``
    A manifest, one row per hit: rank, image_id, uri, score, x0, y0, x1, y1 (the matched box, pixels), is_query.
``coco``
    COCO detection JSON: one image per hit (``file_name`` = its uri, width, height from the catalog), its matched
    box as an annotation (``bbox`` x, y, w, h in pixels) with ``score`` and ``rank``; one category, ``match``.
``fiftyone``
    A folder in FiftyOne's ``FiftyOneImageDetectionDataset`` layout: ``data.json`` (a manifest: image_id -> uri)
    and ``labels.json`` (``{"classes": null, "labels": {image_id: [{"label": "match", "bounding_box": [x, y, w, h]
    relative to the image, "confidence": score, "attributes": {...}}]}}``), imported with
    ``fo.Dataset.from_dir(dataset_dir=DIR, dataset_type=fo.types.FiftyOneImageDetectionDataset)``.

The query image itself, when it is among the hits (``assay mine --keep-query``, or a selection written by a
pipeline), is marked: ``is_query`` in the manifest, on the COCO image and annotation, and in the FiftyOne
attributes (with the tag-like label ``query`` instead of ``match``).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import zipfile
from typing import Any

import pyarrow as pa

from actors.catalog.schema import IMAGES, attach_uris, image_id, normalize_uri
from actors.core.errors import UserError
from actors.core.workspace import Workspace

FORMATS = ("csv", "parquet", "coco", "fiftyone")
MANIFEST_COLUMNS = ["rank", "image_id", "uri", "score", "x0", "y0", "x1", "y1", "is_query"]
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "coco"}
_EXTENSIONS = {"csv": "csv", "parquet": "parquet", "coco": "json"}


def export_format(out: str, fmt: str | None = None) -> str:
    """The format to write: ``fmt`` when given (one of :data:`FORMATS`), else from ``out``'s suffix (``.csv``,
    ``.parquet``, ``.json`` -> coco; no suffix: a ``fiftyone`` folder). :class:`UserError` otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = os.path.splitext(out.rstrip("/"))[1].lower()
    if not suffix:
        return "fiftyone"
    if suffix not in _SUFFIXES:
        raise UserError(f"{out}: cannot tell the format from {suffix!r}; give --format ({', '.join(FORMATS)})")
    return _SUFFIXES[suffix]


def _query_ids(query: dict) -> set[str]:
    """The image_ids the query's own image can have: the id given, or the id of the file's URI."""
    image = str(query.get("image") or "")
    if not image:
        return set()
    ids = {image}
    try:
        ids.add(image_id(normalize_uri(image)))
    except (ValueError, OSError):
        pass
    return ids


def selection_hits(ws: Workspace, query_id: str, top: int | None = None) -> tuple[list[dict[str, Any]], dict]:
    """The hits of ``selections/<query_id>.parquet`` by rank (uri, width and height joined from the catalog,
    ``is_query`` marking the query's own image) and the query record (``{}`` when it was not saved)."""
    rel = f"selections/{query_id}.parquet"
    if not ws.exists(rel):
        raise UserError(f"{ws.path(rel)}: no such selection (the query id assay mine printed)")
    t = ws.read_table(rel)
    if "uri" not in t.column_names or not all(t.column("uri").to_pylist()):
        t = attach_uris(ws, t)
    rows = sorted(t.to_pylist(), key=lambda r: r["rank"])[:top]
    sizes = {}
    if ws.exists(IMAGES):
        cat = ws.read_table(IMAGES, columns=["image_id", "width", "height"]).to_pylist()
        sizes = {r["image_id"]: (r["width"], r["height"]) for r in cat}
    qrel = f"queries/{query_id}.json"
    query = ws.read_json(qrel) if ws.exists(qrel) else {}
    own = _query_ids(query)
    for r in rows:
        r["width"], r["height"] = sizes.get(r["image_id"], (None, None))
        r["is_query"] = r["image_id"] in own
    return rows, query


def _size(r: dict) -> tuple[int, int]:
    """An image's (width, height): the catalog's, else read from its file header; :class:`UserError` if neither."""
    if r["width"] and r["height"]:
        return int(r["width"]), int(r["height"])
    if r.get("uri") and os.path.isfile(r["uri"]):
        from PIL import Image

        with Image.open(r["uri"]) as im:
            return im.size
    raise UserError(f"image {r['image_id']}: no size in the catalog and no readable file "
                    f"({r.get('uri') or 'no uri'}); COCO and FiftyOne need each image's width and height")


def manifest(rows: list[dict]) -> pa.Table:
    """The manifest table (:data:`MANIFEST_COLUMNS`) of :func:`selection_hits` rows."""
    return pa.table({c: [r.get(c) for r in rows] for c in MANIFEST_COLUMNS}).cast(pa.schema([
        ("rank", pa.int32()), ("image_id", pa.string()), ("uri", pa.string()), ("score", pa.float64()),
        ("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()), ("y1", pa.float64()),
        ("is_query", pa.bool_())]))


def coco(rows: list[dict], query_id: str, query: dict) -> dict[str, Any]:
    """COCO detection JSON (as a dict) of :func:`selection_hits` rows."""
    images, anns = [], []
    for i, r in enumerate(rows, start=1):
        w, h = _size(r)
        images.append({"id": i, "file_name": r["uri"] or r["image_id"], "width": w, "height": h,
                       "assay_image_id": r["image_id"], "is_query": r["is_query"]})
        bw, bh = float(r["x1"] - r["x0"]), float(r["y1"] - r["y0"])
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [float(r["x0"]), float(r["y0"]), bw, bh],
                     "area": bw * bh, "iscrowd": 0, "score": float(r["score"]), "rank": int(r["rank"]),
                     "is_query": r["is_query"]})
    info = {"description": f"Assay selection {query_id}", "query": query}
    return {"info": info, "images": images, "annotations": anns, "categories": [{"id": 1, "name": "match"}]}


def fiftyone(rows: list[dict]) -> tuple[dict[str, str], dict[str, Any]]:
    """``(data.json, labels.json)`` of FiftyOne's ``FiftyOneImageDetectionDataset`` for :func:`selection_hits`
    rows: image_id -> uri, and image_id -> one detection (box relative to the image)."""
    data, labels = {}, {}
    for r in rows:
        if not r["uri"]:
            raise UserError(f"image {r['image_id']}: not in the catalog, so it has no file for FiftyOne to open")
        w, h = _size(r)
        data[r["image_id"]] = r["uri"]
        labels[r["image_id"]] = [{
            "label": "query" if r["is_query"] else "match",
            "bounding_box": [r["x0"] / w, r["y0"] / h, (r["x1"] - r["x0"]) / w, (r["y1"] - r["y0"]) / h],
            "confidence": float(r["score"]), "attributes": {"rank": int(r["rank"]), "is_query": r["is_query"]}}]
    return data, {"classes": None, "labels": labels}


def export_selection(ws: Workspace, query_id: str, out: str, fmt: str | None = None,
                     top: int | None = None) -> dict[str, Any]:
    """Write selection ``query_id`` to ``out`` (a file, or a folder for ``fiftyone``; local path or URI) in ``fmt``
    (see :func:`export_format`), the first ``top`` hits (all when None). Every file is written atomically.

    Returns ``{"format", "out", "files", "hits", "query_marked"}``; raises :class:`UserError` for an unknown
    selection or format, or an image COCO/FiftyOne cannot size."""
    fmt = export_format(out, fmt)
    rows, contents = _render(ws, query_id, fmt, top)
    if fmt == "fiftyone":
        folder = Workspace(out)
        files = [folder.write_bytes(name, data) for name, data in contents.items()]
    else:
        parent, name = posixpath.split(out.rstrip("/")) if "://" in out else os.path.split(os.path.abspath(out))
        files = [Workspace(parent or ".").write_bytes(name, contents[""])]
    return {"format": fmt, "out": out, "files": files, "hits": len(rows),
            "query_marked": sum(r["is_query"] for r in rows)}


def export_bytes(ws: Workspace, query_id: str, fmt: str, top: int | None = None) -> tuple[str, bytes]:
    """Selection ``query_id`` in ``fmt`` (one of :data:`FORMATS`) as one file to hand over, e.g. a browser download:
    ``(file name, bytes)``. ``csv``, ``parquet``, ``coco``: what :func:`export_selection` writes; ``fiftyone``: its
    folder as a zip archive (``data.json`` and ``labels.json`` at the top: unzip it and import the folder). Raises as
    :func:`export_selection` does."""
    fmt = export_format("", fmt)
    _, contents = _render(ws, query_id, fmt, top)
    if fmt != "fiftyone":
        return f"selection-{query_id}.{_EXTENSIONS[fmt]}", contents[""]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in contents.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # same bytes every time
    return f"selection-{query_id}-fiftyone.zip", buf.getvalue()


def _render(ws: Workspace, query_id: str, fmt: str, top: int | None) -> tuple[list[dict], dict[str, bytes]]:
    """The :func:`selection_hits` rows and the export's files: ``{"data.json", "labels.json"}`` for ``fiftyone``,
    else the one file under the name ``""``."""
    if top is not None and top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    rows, query = selection_hits(ws, query_id, top)
    if fmt == "fiftyone":
        data, labels = fiftyone(rows)
        return rows, {"data.json": _json(data), "labels.json": _json(labels)}
    if fmt == "coco":
        return rows, {"": _json(coco(rows, query_id, query))}
    return rows, {"": _parquet(manifest(rows)) if fmt == "parquet" else _csv(manifest(rows))}


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def _parquet(t: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def _csv(t: pa.Table) -> bytes:
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(t, buf)
    return buf.getvalue()


__all__ = ["FORMATS", "MANIFEST_COLUMNS", "export_format", "selection_hits", "manifest", "coco", "fiftyone",
           "export_selection", "export_bytes"]
