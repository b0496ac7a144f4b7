"""COCO JSON as a catalog source: image rows, label rows and the reasons bad boxes fail.

Structural problems (not JSON, no ``images`` list, a duplicate image or annotation id, an annotation on an unknown
image) raise ``ValueError`` naming the file; a bad box only marks its label row ``status="error"`` with a reason that
names the field (``bbox x1=300 > width 256 (outside the image)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from actors.catalog.schema import LABEL_SCHEMA, conform_labels, image_id, normalize_uri
from actors.core.errors import UserError


def coco_uris(path: Path, images: list[dict]) -> dict[Any, str]:
    """The catalog URI of each COCO image entry (``id`` -> normalised URI): the one resolver of ``file_name``s that
    ``assay ingest`` and ``assay labels import`` share.

    An absolute ``file_name`` is kept; a relative one is joined to the first of the JSON's folder, its ``images/``,
    its parent and the parent's ``images/`` where most of the first 20 relative names exist (the JSON's folder when
    none do). Entries without ``id`` are skipped.
    """
    path = Path(path)
    base = _coco_base(path, images)
    return {im["id"]: normalize_uri(str(im.get("file_name", "")), base)
            for im in images if isinstance(im, dict) and "id" in im}


def _coco_base(path: Path, images: list[dict]) -> str:
    """The folder that COCO ``file_name``s are relative to: the one where most of the first 20 exist."""
    d = path.parent
    candidates = [d, d / "images", d.parent, d.parent / "images"]
    names = [im.get("file_name", "") for im in images[:20]
             if isinstance(im, dict) and not os.path.isabs(str(im.get("file_name", "")))]
    hits = [sum((c / str(n)).exists() for n in names) for c in candidates]
    return str(candidates[int(np.argmax(hits))] if max(hits, default=0) else d)


def _box_error(bbox: Any, width: Any, height: Any, tol: float = 1.0) -> tuple[list[float], str]:
    """([x0, y0, x1, y1], reason or "") for a COCO ``[x, y, w, h]`` box; ``tol`` pixels of slack at the edges."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return [float("nan")] * 4, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    xyxy = [x, y, x + w, y + h]
    for name, v in zip("xywh", (x, y, w, h)):
        if not np.isfinite(v):
            return xyxy, f"bbox {name} is {v}"
    if w <= 0 or h <= 0:
        return xyxy, f"bbox {'w' if w <= 0 else 'h'}={w if w <= 0 else h:g} must be > 0 (x1 <= x0 or y1 <= y0)"
    for name, v, lim in (("x0", x, 0), ("y0", y, 0)):
        if v < -tol:
            return xyxy, f"bbox {name}={v:g} < 0 (outside the image)"
    for name, v, lim, dim in (("x1", x + w, width, "width"), ("y1", y + h, height, "height")):
        if isinstance(lim, (int, float)) and v > lim + tol:
            return xyxy, f"bbox {name}={v:g} > {dim} {lim} (outside the image)"
    return xyxy, ""


def _coco_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise UserError(f"{path}: not a COCO file (no 'images' list)")
    if not doc["images"]:
        raise UserError(f"{path}: COCO file has no images")
    return doc


def _coco_images(path: Path, doc: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    by_id: dict[Any, dict[str, Any]] = {}
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise UserError(f"{path}: image entry without 'id' and 'file_name': {im!r:.80}")
        if im["id"] in by_id:
            raise UserError(f"{path}: duplicate image id {im['id']} "
                             f"({by_id[im['id']]['file_name']} and {im['file_name']})")
        by_id[im["id"]] = im
    return by_id


def read_coco(path: Path) -> tuple[pa.Table, pa.Table, list[tuple[str, str]]]:
    """(image rows, label rows, [(where, reason)] for bad boxes) of a COCO file; raises on structural errors."""
    doc = _coco_doc(path)
    by_id = _coco_images(path, doc)
    uris = coco_uris(path, list(by_id.values()))
    cats = {c.get("id"): str(c.get("name", "")) for c in doc.get("categories") or [] if isinstance(c, dict)}
    rows, failures, seen = [], [], set()
    for k, ann in enumerate(doc.get("annotations") or []):
        im = by_id.get(ann.get("image_id"))
        if im is None:
            raise UserError(f"{path}: annotation {ann.get('id', k)} refers to unknown image id {ann.get('image_id')}")
        box_id = int(ann.get("id", k))
        if box_id in seen:
            raise UserError(f"{path}: duplicate annotation id {box_id}")
        seen.add(box_id)
        xyxy, reason = _box_error(ann.get("bbox"), im.get("width"), im.get("height"))
        category = cats.get(ann.get("category_id"))
        if category is None:
            category, reason = "", reason or f"category_id {ann.get('category_id')} not in categories"
        if reason:
            failures.append((f"{path} annotation {box_id} ({im['file_name']})", reason))
        rows.append((image_id(uris[im["id"]]), box_id, *xyxy, category, "human", "error" if reason else "ok", reason))
    fields = pa.schema(list(LABEL_SCHEMA)[:10])  # everything but run_id, which human labels do not have
    labels = conform_labels(pa.table(list(zip(*rows)) if rows else [[] for _ in fields], schema=fields))
    images = pa.table({"uri": list(uris.values()),
                       "width": pa.array([_int(im.get("width")) for im in by_id.values()], pa.int32()),
                       "height": pa.array([_int(im.get("height")) for im in by_id.values()], pa.int32())})
    return images, labels, failures


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and np.isfinite(v) else None
