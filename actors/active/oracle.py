"""Labels coming back from a labeling team: a COCO JSON file merged into the catalog as human labels.

Contract (:func:`import_labels`)
--------------------------------
* Each COCO image is matched to a catalog image by its ``assay_image_id`` field, else by ``file_name`` resolved
  exactly as ``assay ingest`` resolves it (:func:`actors.catalog.coco.coco_uris`: absolute, or relative to the JSON's
  folder, its ``images/``, its parent or the parent's ``images/``), else by a base name that is unique in the
  catalog.
* Each category name must be one the catalog already knows (a human label of that category exists) or be listed
  in ``allow_new``.
* Any unknown image, unknown category, annotation on an unknown image id or malformed box raises
  :class:`~actors.core.errors.UserError` naming the file and the offending entry, and **nothing is written**.
* Otherwise the boxes are appended as ``source="human"`` rows with fresh ``box_id``s; a box identical to one the
  image already has is skipped (importing the same file twice changes nothing). Pseudo rows are left alone: a
  human label of an image takes precedence in training. With ``run_id``, the images join that run's labeled set.
* The labels table (and the run's labeled set) are read, merged and written under :meth:`Workspace.locked`, so
  concurrent imports and pseudo-labelling keep every writer's rows (local workspaces).
* An image of the file with no annotation was looked at and holds no object: it gets one ``status="empty"`` row
  (:data:`~actors.catalog.schema.EMPTY`), unless it already has human rows, so it counts as labelled (with no
  boxes) from then on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from actors.catalog.coco import coco_uris
from actors.catalog.schema import EMPTY, LABELS, conform_labels, load_images, load_labels
from actors.core.errors import UserError
from actors.core.workspace import Workspace


@dataclass
class ImportReport:
    """What :func:`import_labels` did."""

    path: str
    images: int
    added: int
    skipped_duplicates: int
    empty: int = 0  # images marked as holding no object


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such labels file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise UserError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    return doc


def _match_images(doc: dict, path: Path, ws: Workspace) -> dict:
    rows = load_images(ws, status=None, columns=["image_id", "uri"]).to_pylist()
    ids = {r["image_id"] for r in rows}
    by_uri = {r["uri"]: r["image_id"] for r in rows}
    uris = coco_uris(path, doc["images"])  # the resolver ingest uses
    by_name: dict[str, list[str]] = {}
    for r in rows:
        by_name.setdefault(os.path.basename(r["uri"]), []).append(r["image_id"])
    out = {}
    for k, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise UserError(f"{path}: images[{k}] has no 'id'")
        found = im.get("assay_image_id") if im.get("assay_image_id") in ids else None
        name = str(im.get("file_name", ""))
        if found is None and name:
            names = by_name.get(os.path.basename(name), [])
            found = by_uri.get(uris[im["id"]]) or (names[0] if len(names) == 1 else None)
        if found is None:
            raise UserError(f"{path}: images[{k}] (id {im['id']}, file_name {name!r}) is not an image of the "
                            f"catalog of {ws.uri}")
        out[im["id"]] = found
    return out


def _box(ann: dict, path: Path, k: int) -> tuple[float, float, float, float]:
    b = ann.get("bbox")
    if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b) \
            or b[2] <= 0 or b[3] <= 0:
        raise UserError(f"{path}: annotations[{k}].bbox must be [x, y, w, h] with w, h > 0, got {b!r}")
    return float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3])


def import_labels(ws: Workspace, path: str | os.PathLike, *, run_id: str | None = None,
                  allow_new: tuple[str, ...] = ()) -> ImportReport:
    """Merge a labeling team's COCO file into ``catalog/labels.parquet`` (see the module contract)."""
    path = Path(path).expanduser().resolve()
    doc = _read(path)
    known = set(load_labels(ws, source="human").column("category").to_pylist()) | set(allow_new)
    cats = {}
    for k, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c or c.get("name") not in known:
            raise UserError(f"{path}: categories[{k}] {c.get('name') if isinstance(c, dict) else c!r} is not a "
                            f"category of the catalog (known: {', '.join(sorted(known)) or 'none'})")
        cats[c["id"]] = c["name"]
    images = _match_images(doc, path, ws)
    new = []
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise UserError(f"{path}: annotations[{k}] refers to image id {ann.get('image_id')!r}, "
                            "which is not in the file's images")
        if ann.get("category_id") not in cats:
            raise UserError(f"{path}: annotations[{k}] has category_id {ann.get('category_id')!r}, "
                            "not in the file's categories")
        new.append((images[ann["image_id"]], _box(ann, path, k), cats[ann["category_id"]]))
    with ws.locked(LABELS):  # a read-modify-write of the shared labels table
        added, dup, empty = _merge(ws, new, set(images.values()))
    if run_id:
        _join_run(ws, run_id, sorted(set(images.values())))
    return ImportReport(str(path), len(set(images.values())), added, dup, empty)


def _merge(ws: Workspace, new: list[tuple], ids: set[str]) -> tuple[int, int, int]:
    """Append the boxes ``new`` (image_id, xyxy, category) and the marks of the images of ``ids`` with none to the
    labels table (call under its lock); returns (boxes added, duplicates skipped, images marked empty)."""
    old = load_labels(ws, status=None)
    rows, dup = _box_rows(old, new)
    empty = _empty_rows(old, ids - {i for i, _, _ in new})
    if rows or empty:
        ws.write_table(LABELS, pa.concat_tables([conform_labels(old),
                                                 conform_labels(pa.Table.from_pylist(rows + empty))]))
    return len(rows), dup, len(empty)


def _box_rows(old: pa.Table, new: list[tuple]) -> tuple[list[dict], int]:
    """Human rows of the boxes of ``new`` that ``old`` lacks (fresh box ids), and how many it already had."""
    have = {(r["image_id"], round(r["x0"], 2), round(r["y0"], 2), round(r["x1"], 2), round(r["y1"], 2),
             r["category"]) for r in old.to_pylist() if r["source"] != "pseudo"}
    next_id: dict[str, int] = {}
    for i, b in zip(old["image_id"].to_pylist(), old["box_id"].to_pylist()):
        next_id[i] = max(next_id.get(i, 0), int(b) + 1)
    rows, dup = [], 0
    for image_id, (x0, y0, x1, y1), cat in new:
        key = (image_id, round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2), cat)
        if key in have:
            dup += 1
            continue
        have.add(key)
        box_id = next_id.get(image_id, 0)
        next_id[image_id] = box_id + 1
        rows.append({"image_id": image_id, "box_id": box_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                     "category": cat, "source": "human", "status": "ok", "error": None, "run_id": None})
    return rows, dup


def _empty_rows(old: pa.Table, ids: set[str]) -> list[dict]:
    """One ``EMPTY`` row for each image of ``ids`` that has no human row yet (a box or an earlier mark)."""
    human = {r["image_id"] for r in old.select(["image_id", "source"]).to_pylist() if r["source"] != "pseudo"}
    return [{"image_id": i, "box_id": -1, "x0": 0.0, "y0": 0.0, "x1": 0.0, "y1": 0.0, "category": "",
             "source": "human", "status": EMPTY, "error": None, "run_id": None} for i in sorted(ids - human)]


def _join_run(ws: Workspace, run_id: str, ids: list[str]) -> None:
    from actors.active.rounds import LABELED_SCHEMA

    rel = f"runs/{run_id}/labeled.parquet"
    if not ws.exists(rel):
        raise UserError(f"{ws.path(rel)}: no such run; start it with `assay learn --run {run_id}`")
    with ws.locked(rel):
        old = ws.read_table(rel).to_pylist()
        seen, last = {r["image_id"] for r in old}, max((r["round"] for r in old), default=0)
        old += [{"image_id": i, "round": last, "reason": "imported"} for i in ids if i not in seen]
        ws.write_table(rel, pa.Table.from_pylist(old, schema=LABELED_SCHEMA))


__all__ = ["ImportReport", "import_labels"]
