"""`labels import`: a labeling team's COCO file merges as human labels; bad files change nothing."""

from __future__ import annotations

import json

import pytest

from actors.active.oracle import import_labels
from actors.catalog.schema import LABELS, load_labels
from actors.core.errors import UserError


def _coco(tmp_path, images, anns, cats, name="team.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return p


GOOD_IMAGES = [{"id": 1, "file_name": "pics/im2.jpg"}, {"id": 2, "file_name": "im3.jpg"}]
GOOD_ANNS = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12]},
             {"id": 2, "image_id": 2, "category_id": 8, "bbox": [5, 5, 4, 4]}]
CATS = [{"id": 7, "name": "circle"}, {"id": 8, "name": "star"}]


def test_import_adds_human_labels_once(catalog_ws, tmp_path):
    rep = import_labels(catalog_ws, _coco(tmp_path, GOOD_IMAGES, GOOD_ANNS, CATS))
    assert (rep.images, rep.added, rep.skipped_duplicates) == (2, 2, 0)
    rows = {r["image_id"]: r for r in load_labels(catalog_ws, source="human").to_pylist()}
    assert rows["im2"]["category"] == "circle" and (rows["im2"]["x1"], rows["im2"]["y1"]) == (11.0, 14.0)
    again = import_labels(catalog_ws, _coco(tmp_path, GOOD_IMAGES, GOOD_ANNS, CATS))
    assert (again.added, again.skipped_duplicates) == (0, 2)


@pytest.mark.parametrize("images, anns, cats, match", [
    ([{"id": 1, "file_name": "elsewhere/unknown.jpg"}], [], CATS, r"images\[0\].*not an image of the catalog"),
    (GOOD_IMAGES, GOOD_ANNS, [{"id": 7, "name": "circle"}, {"id": 8, "name": "dragon"}],
     r"categories\[1\] 'dragon' is not a category"),
    (GOOD_IMAGES, GOOD_ANNS + [{"id": 3, "image_id": 99, "category_id": 7, "bbox": [0, 0, 1, 1]}], CATS,
     r"annotations\[2\] refers to image id 99"),
    (GOOD_IMAGES, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, -1, 3]}], CATS,
     r"annotations\[0\]\.bbox"),
])
def test_bad_labels_file_one_line_error_and_nothing_changed(catalog_ws, tmp_path, images, anns, cats, match):
    before = catalog_ws.read_bytes(LABELS)
    with pytest.raises(UserError, match=match) as e:
        import_labels(catalog_ws, _coco(tmp_path, images, anns, cats))
    assert "\n" not in str(e.value) and "team.json" in str(e.value)
    assert catalog_ws.read_bytes(LABELS) == before


def test_not_json(catalog_ws, tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        import_labels(catalog_ws, p)


def test_image_with_no_annotation_is_marked_empty_once(catalog_ws, tmp_path):
    """#24 item 2: an image a labeler saw with no object is labelled (an EMPTY row), not left unlabelled; an image
    that already has human boxes is not marked; importing the file again adds nothing."""
    from actors.catalog.schema import EMPTY

    images = GOOD_IMAGES + [{"id": 3, "file_name": "im0.jpg"}]  # im3: no annotation; im0 has a human box already
    rep = import_labels(catalog_ws, _coco(tmp_path, images, GOOD_ANNS[:1], CATS))
    assert (rep.added, rep.empty) == (1, 1)
    marks = load_labels(catalog_ws, status=EMPTY).to_pylist()
    assert [(r["image_id"], r["source"]) for r in marks] == [("im3", "human")]
    assert "im3" not in load_labels(catalog_ws)["image_id"].to_pylist()  # readers of boxes never see the mark
    again = import_labels(catalog_ws, _coco(tmp_path, images, GOOD_ANNS[:1], CATS))
    assert (again.added, again.empty) == (0, 0)
