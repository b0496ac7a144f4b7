"""A saved selection exported as a manifest (CSV/Parquet), COCO JSON and FiftyOne's image detection layout, with
the query image marked when it is a hit; files are written atomically (#25 item 4)."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors.core.errors import UserError
from actors.selection.export import export_format, export_selection

W, H = 200, 100


@pytest.fixture
def saved(workspace, tmp_path):
    """A workspace with a catalog of 3 images and selection q1 whose hit 1 is the query's own image (img0)."""
    from tests.actors.features.test_backbones import write_catalog

    rows = []
    for k in range(3):
        uri = tmp_path / "photos" / f"beach_{k}.png"
        uri.parent.mkdir(exist_ok=True)
        Image.new("RGB", (W, H)).save(uri)
        rows.append(dict(image_id=f"img{k}", uri=str(uri), width=W, height=H, source="t", split="pool",
                         status="ok", error=""))
    write_catalog(workspace, rows)
    workspace.write_table("selections/q1.parquet", pa.table({
        "image_id": ["img0", "img2", "img1"], "rank": [1, 2, 3], "score": [0.99, 0.8, 0.5],
        "x0": [10.0, 20.0, 0.0], "y0": [10.0, 30.0, 0.0], "x1": [50.0, 120.0, 100.0], "y1": [60.0, 80.0, 50.0]}))
    workspace.write_json("queries/q1.json", {"image": "img0", "boxes": [[10, 10, 50, 60]], "method": "template"})
    return workspace


def test_manifest_csv_and_parquet_carry_uri_box_score_and_mark_the_query(saved, tmp_path):
    res = export_selection(saved, "q1", str(tmp_path / "out" / "sel.csv"))
    assert res["format"] == "csv" and res["hits"] == 3 and res["query_marked"] == 1
    with open(tmp_path / "out" / "sel.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "image_id", "uri", "score", "x0", "y0", "x1", "y1", "is_query"]
    assert [r["image_id"] for r in rows] == ["img0", "img2", "img1"] and rows[1]["uri"].endswith("beach_2.png")
    assert [r["is_query"] for r in rows] == ["true", "false", "false"] and float(rows[1]["x1"]) == 120.0
    export_selection(saved, "q1", str(tmp_path / "out" / "sel.parquet"), top=2)
    t = pq.read_table(tmp_path / "out" / "sel.parquet")
    assert t.num_rows == 2 and t.column("is_query").to_pylist() == [True, False]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sel.csv", "sel.parquet"]  # no temp files left


def test_coco_json_has_pixel_boxes_scores_and_the_query_marked(saved, tmp_path):
    export_selection(saved, "q1", str(tmp_path / "sel.json"))
    c = json.loads((tmp_path / "sel.json").read_text())
    assert [i["file_name"].rsplit("/", 1)[-1] for i in c["images"]] == ["beach_0.png", "beach_2.png", "beach_1.png"]
    assert c["images"][0]["width"] == W and c["images"][0]["is_query"] and not c["images"][1]["is_query"]
    a = c["annotations"][1]
    assert a["bbox"] == [20.0, 30.0, 100.0, 50.0] and a["score"] == 0.8 and a["rank"] == 2 and a["image_id"] == 2
    assert c["categories"] == [{"id": 1, "name": "match"}] and c["info"]["query"]["image"] == "img0"


def test_fiftyone_folder_is_the_image_detection_layout(saved, tmp_path):
    """FiftyOneImageDetectionDataset: data.json (uuid -> path) and labels.json {classes, labels: {uuid: [label,
    bounding_box (relative x, y, w, h), confidence, attributes]}} (fiftyone.utils.data.importers)."""
    out = tmp_path / "fo"
    res = export_selection(saved, "q1", str(out))
    assert res["format"] == "fiftyone" and sorted(p.name for p in out.iterdir()) == ["data.json", "labels.json"]
    data = json.loads((out / "data.json").read_text())
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] is None and set(data) == set(labels["labels"]) == {"img0", "img1", "img2"}
    assert data["img2"].endswith("beach_2.png")
    (d,) = labels["labels"]["img2"]
    assert d["label"] == "match" and d["confidence"] == 0.8 and d["attributes"] == {"rank": 2, "is_query": False}
    assert d["bounding_box"] == pytest.approx([20 / W, 30 / H, 100 / W, 50 / H])
    assert labels["labels"]["img0"][0]["label"] == "query" and labels["labels"]["img0"][0]["attributes"]["is_query"]


def test_formats_and_missing_selections_are_user_errors(saved, tmp_path):
    assert export_format("x.CSV") == "csv" and export_format("dir/") == "fiftyone" and export_format("a", "coco") == "coco"
    with pytest.raises(UserError, match="cannot tell the format"):
        export_format("x.txt")
    with pytest.raises(UserError, match="--format must be one of"):
        export_format("x.csv", "yolo")
    with pytest.raises(UserError, match="no such selection"):
        export_selection(saved, "nope", str(tmp_path / "x.csv"))
