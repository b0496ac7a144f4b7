"""`assay labels import` accepts every COCO layout `assay ingest` accepts (#24 item 12): one resolver of
``file_name``s (actors.catalog.coco.coco_uris), tried here on real files in each layout ingest searches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from actors.active.oracle import import_labels
from actors.catalog.ingest import ingest
from actors.catalog.schema import image_id, load_labels, normalize_uri

# where the images live, relative to the folder holding the JSON (the four bases ingest tries)
LAYOUTS = {"beside": ".", "images_beside": "images", "parent": "..", "images_in_parent": "../images"}


def _layout(root, where: str):
    """root/ann/coco.json and images under root/ann/<where>/{train,val}/0001.png (one base name, two images)."""
    ann = root / "ann"
    base = (ann / where).resolve()
    for split in ("train", "val"):
        (base / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 50, 3), 90 if split == "train" else 160, np.uint8)).save(base / split / "0001.png")
    ann.mkdir(parents=True, exist_ok=True)
    return ann, base


def _coco(path, boxes):
    images = [{"id": 1, "file_name": "train/0001.png", "width": 50, "height": 40},
              {"id": 2, "file_name": "val/0001.png", "width": 50, "height": 40}]
    anns = [{"id": k + 1, "image_id": i, "category_id": 1, "bbox": b} for k, (i, b) in enumerate(boxes)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "dot"}]}))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_labels_import_resolves_file_names_as_ingest_does(workspace, tmp_path, layout):
    ann, base = _layout(tmp_path, LAYOUTS[layout])
    rep = ingest(str(_coco(ann / "coco.json", [(1, [1, 1, 5, 5])])), workspace.uri, progress=False)
    assert rep.added == 2 and rep.errors == 0
    team = _coco(ann / "team.json", [(2, [10, 10, 6, 6])])  # same layout; the base name alone is ambiguous
    got = import_labels(workspace, team)
    assert (got.images, got.added) == (2, 1)
    val = image_id(normalize_uri(str(base / "val" / "0001.png")))
    rows = [r for r in load_labels(workspace, source="human").to_pylist() if r["status"] == "ok"]
    assert {(r["image_id"], r["x0"]) for r in rows} >= {(val, 10.0)}
