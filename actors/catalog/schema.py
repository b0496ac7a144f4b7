"""The catalog's tables and ids: where they live, their schemas, and how to read them.

``catalog/images.parquet``: image_id, uri, width, height, source, split, status, error, then any extra manifest
columns (as strings). ``catalog/labels.parquet``: image_id, box_id, x0, y0, x1, y1 (pixels), category,
source (``human`` | ``pseudo``), status, error, run_id (the active-learning run that wrote a pseudo-label).
A row with status ``empty`` (:data:`EMPTY`: box_id -1, a 0×0 box, category ``""``) records that a labeler saw no
object on the image: the image is labelled, with no boxes (readers of ``status="ok"`` rows never see it).

``image_id`` is the first 16 hex digits of the SHA-1 of the normalised URI, so it is stable across runs and
machines that see the same paths. Every module that touches the catalog names its files through ``IMAGES`` and
``LABELS`` here.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from actors.core.workspace import Workspace

IMAGES = "catalog/images.parquet"
LABELS = "catalog/labels.parquet"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("width", pa.int32()),
                          ("height", pa.int32()), ("source", pa.string()), ("split", pa.string()),
                          ("status", pa.string()), ("error", pa.string())])
LABEL_SCHEMA = pa.schema([("image_id", pa.string()), ("box_id", pa.int64()), ("x0", pa.float32()),
                          ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
                          ("category", pa.string()), ("source", pa.string()), ("status", pa.string()),
                          ("error", pa.string()), ("run_id", pa.string())])
RESERVED = {f.name for f in IMAGE_SCHEMA}
EMPTY = "empty"  # label status of "labelled, no objects on this image"


def normalize_uri(uri: str, base: str | None = None) -> str:
    """Absolute, normalised local path (relative ones joined to ``base``); URIs with a scheme as given.

    ``base`` may itself be a URI (``s3://bucket/dir``, the folder of a manifest on object storage): a relative
    ``uri`` then becomes ``s3://bucket/dir/<uri>``, normalised (``..`` resolved) within the bucket.
    """
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        return uri
    if base and "://" in base and not base.startswith("file://") and not os.path.isabs(uri):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, uri))}"
    if not os.path.isabs(uri):
        uri = os.path.join((base or os.getcwd()).removeprefix("file://"), uri)
    return os.path.normpath(uri)


def image_id(uri: str) -> str:
    """Stable id of a normalised URI: the first 16 hex digits of its SHA-1."""
    return hashlib.sha1(uri.encode()).hexdigest()[:16]


def conform_labels(t: pa.Table) -> pa.Table:
    """``t`` with every column of ``LABEL_SCHEMA`` in order; columns it lacks (``run_id`` in catalogs written before
    pseudo-labels existed) are added as nulls."""
    cols = [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in LABEL_SCHEMA]
    return pa.table(cols, schema=LABEL_SCHEMA)


def load_images(ws: Workspace | str, split: str | None = None, status: str | None = "ok",
                columns: list[str] | None = None) -> pa.Table:
    """Catalog rows, optionally only one ``split`` and/or ``status`` (``None``: any)."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    t = ws.read_table(IMAGES)
    if split is not None:
        t = t.filter(pc.equal(t["split"], split))
    if status is not None:
        t = t.filter(pc.equal(t["status"], status))
    return t.select(columns) if columns else t


def load_labels(ws: Workspace | str, split: str | None = None, status: str | None = "ok",
                category: str | None = None, source: str | None = None) -> pa.Table:
    """Label rows, optionally only those of images in ``split`` and with the given status/category/source."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    t = ws.read_table(LABELS) if ws.exists(LABELS) else LABEL_SCHEMA.empty_table()
    t = conform_labels(t)
    for col, value in (("status", status), ("category", category), ("source", source)):
        if value is not None:
            t = t.filter(pc.equal(t[col], value))
    if split is not None:
        ids = load_images(ws, split=split, status=None, columns=["image_id"])["image_id"]
        t = t.filter(pc.is_in(t["image_id"], value_set=ids.combine_chunks()))
    return t


def attach_uris(ws: Workspace | str, t: pa.Table) -> pa.Table:
    """``t`` (which has an ``image_id`` column) with a ``uri`` column right after it, joined from the catalog, so
    a reader can open each image; ``""`` for an id the catalog lacks (or when there is no catalog)."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    cat = (ws.read_table(IMAGES, columns=["image_id", "uri"]) if ws.exists(IMAGES)
           else pa.table({"image_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}))
    at = pc.index_in(t["image_id"], value_set=cat["image_id"].combine_chunks())
    uri = pc.fill_null(pc.take(cat["uri"], at), "") if cat.num_rows else pa.array([""] * t.num_rows, pa.string())
    if "uri" in t.column_names:
        t = t.drop_columns(["uri"])
    return t.add_column(t.column_names.index("image_id") + 1, pa.field("uri", pa.string()), uri)


def _counts(t: pa.Table, col: str) -> dict[str, int]:
    vc = pc.value_counts(t[col]).to_pylist() if t.num_rows else []
    return {str(d["values"]): int(d["counts"]) for d in sorted(vc, key=lambda d: str(d["values"]))}


def catalog_summary(ws: Workspace | str) -> dict[str, Any]:
    """Counts of images by split/status/error reason and of labels by category/status."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    img = ws.read_table(IMAGES, columns=["split", "status", "error"])
    lab = ws.read_table(LABELS, columns=["category", "status"]) if ws.exists(LABELS) else LABEL_SCHEMA.empty_table()
    by_split = {s: _counts(img.filter(pc.equal(img["split"], s)), "status") for s in _counts(img, "split")}
    errors = img.filter(pc.equal(img["status"], "error"))
    return {"workspace": ws.uri, "images": img.num_rows, "labels": lab.num_rows,
            "images_by_split": by_split, "images_by_status": _counts(img, "status"),
            "errors_by_reason": _counts(errors, "error"), "labels_by_category": _counts(lab, "category"),
            "labels_by_status": _counts(lab, "status")}


__all__ = ["IMAGES", "LABELS", "EMPTY", "IMAGE_EXTS", "IMAGE_SCHEMA", "LABEL_SCHEMA", "conform_labels", "normalize_uri",
           "image_id", "attach_uris", "load_images", "load_labels", "catalog_summary"]
