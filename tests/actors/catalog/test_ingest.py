from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors.core.errors import UserError
from actors.catalog.schema import IMAGES, LABELS, catalog_summary, image_id, load_images, load_labels, normalize_uri

from actors.catalog.ingest import check_image, ingest


def _jpeg(path: Path, w: int = 32, h: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "imgs"
    for i in range(5):
        _jpeg(d / ("sub" if i % 2 else "") / f"ok_{i}.jpg", seed=i)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(d / "ok.png")
    data = _jpeg(tmp_path / "t.jpg", seed=9).read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.jpg").write_text("not an image at all\n")
    (d / "readme.txt").write_text("ignored")
    return d


def _status(ws) -> dict[str, tuple[str, str]]:
    t = ws.read_table(IMAGES).to_pylist()
    return {Path(r["uri"]).name: (r["status"], r["error"]) for r in t}


def test_folder_keeps_bad_files_as_error_rows(folder, workspace):
    report = ingest(folder, workspace, progress=False)
    assert report.added == 8 and report.errors == 2
    st = _status(workspace)
    assert st["truncated.jpg"] == ("error", "truncated")
    assert st["notes.jpg"] == ("error", "not an image")
    assert st["ok.png"] == ("ok", "")
    assert any(f.endswith("truncated.jpg: truncated") for f in report.failures)
    rows = workspace.read_table(IMAGES).to_pylist()
    ok = next(r for r in rows if r["uri"].endswith("ok.png"))
    assert (ok["width"], ok["height"], ok["split"]) == (12, 10, "pool")  # a folder is the pool unless told
    assert ok["image_id"] == image_id(normalize_uri(str(folder / "ok.png")))
    assert workspace.read_table(LABELS).num_rows == 0


def test_reingest_is_idempotent_and_appends_only_new(folder, workspace):
    ingest(folder, workspace, split="pool", progress=False)
    before = workspace.read_table(IMAGES)
    again = ingest(folder, workspace, progress=False)
    assert again.added == 0 and again.already_present == 8
    assert workspace.read_table(IMAGES).equals(before)
    _jpeg(folder / "new.jpg", seed=42)
    third = ingest(folder, workspace, split="pool", progress=False)
    assert third.added == 1
    assert workspace.read_table(IMAGES).num_rows == 9


def test_empty_folder_is_an_error_and_writes_nothing(tmp_path, workspace):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="empty folder"):
        ingest(tmp_path / "empty", workspace, progress=False)
    assert not workspace.exists("catalog")


def _manifest_rows(tmp_path: Path) -> list[dict]:
    _jpeg(tmp_path / "m" / "a.jpg")
    _jpeg(tmp_path / "m" / "b.jpg", w=40, h=30)
    return [{"uri": "a.jpg", "split": "train", "width": "32", "height": "24", "camera": "c1"},
            {"uri": "b.jpg", "split": "val", "width": "40", "height": "30", "camera": "c2"},
            {"uri": "gone.jpg", "split": "val", "width": "5", "height": "5", "camera": "c3"},
            {"uri": "a.jpg", "split": "train", "width": "32", "height": "24", "camera": "c1"}]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_missing_file_and_metadata(tmp_path, workspace, fmt):
    rows = _manifest_rows(tmp_path)
    path = tmp_path / "m" / f"manifest.{fmt}"
    t = pa.Table.from_pylist(rows)
    if fmt == "csv":
        path.write_text("uri,split,width,height,camera\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    else:
        pq.write_table(t, path)
    report = ingest(path, workspace, progress=False)
    assert (report.added, report.duplicates, report.errors) == (3, 1, 1)
    row = 4 if fmt == "csv" else 3  # CSV: its line (line 1 is the header); Parquet: 1-based
    assert any(f.endswith(f"gone.jpg (row {row}): missing file") for f in report.failures), report.failures
    got = {Path(r["uri"]).name: r for r in workspace.read_table(IMAGES).to_pylist()}
    assert got["gone.jpg"]["status"] == "error" and got["gone.jpg"]["error"] == "missing file"
    assert got["b.jpg"]["split"] == "val" and got["b.jpg"]["camera"] == "c2" and got["b.jpg"]["width"] == 40
    assert got["a.jpg"]["uri"] == str(tmp_path / "m" / "a.jpg")


def test_manifest_without_header_checks_needs_no_files(tmp_path, workspace):
    uris = [f"s3://bucket/img/{i:05d}.jpg" for i in range(1000)]
    pq.write_table(pa.table({"uri": uris, "width": list(range(1000)), "height": [7] * 1000}), tmp_path / "m.parquet")
    report = ingest(tmp_path / "m.parquet", workspace, check_headers=False, progress=False)
    t = workspace.read_table(IMAGES)
    assert report.added == 1000 and set(t["status"].to_pylist()) == {"unchecked"}
    assert t["uri"].to_pylist() == uris and t["width"].to_pylist() == list(range(1000))
    assert t["image_id"][0].as_py() == image_id("s3://bucket/img/00000.jpg")


def test_small_batches_give_the_same_catalog(tmp_path):
    from actors.core.workspace import Workspace

    uris = [f"s3://b/{i % 700}.jpg" for i in range(1000)]  # 300 duplicates spread over batches
    pq.write_table(pa.table({"uri": uris, "split": ["pool"] * 1000}), tmp_path / "m.parquet")
    one, many = Workspace(tmp_path / "one"), Workspace(tmp_path / "many")
    r1 = ingest(tmp_path / "m.parquet", one, check_headers=False, progress=False)
    r2 = ingest(tmp_path / "m.parquet", many, check_headers=False, batch_size=64, progress=False)
    assert r2.batches == 16 and r1.batches == 1
    assert (r1.added, r1.duplicates) == (r2.added, r2.duplicates) == (700, 300)
    assert one.read_table(IMAGES).equals(many.read_table(IMAGES))


def test_manifest_without_uri_column(tmp_path, workspace):
    (tmp_path / "m.csv").write_text("path,split\na.jpg,train\n")
    with pytest.raises(UserError, match=r"m\.csv: manifest has no 'uri' column"):
        ingest(tmp_path / "m.csv", workspace, progress=False)
    assert not workspace.exists(IMAGES)


def _coco(tmp_path: Path, images: list[dict], anns: list[dict]) -> Path:
    for im in images:
        _jpeg(tmp_path / "images" / im["file_name"], w=im["width"], h=im["height"])
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat", "supercategory": "x"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_box_outside_the_image_is_an_error_row(tmp_path, workspace):
    images = [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}]
    anns = [{"id": 10, "image_id": 1, "bbox": [2, 3, 10, 10], "category_id": 1},
            {"id": 11, "image_id": 1, "bbox": [20, 3, 40, 10], "category_id": 1},
            {"id": 12, "image_id": 1, "bbox": [5, 5, 0, 4], "category_id": 1},
            {"id": 13, "image_id": 1, "bbox": [float("nan"), 5, 3, 4], "category_id": 1}]
    report = ingest(_coco(tmp_path, images, anns), workspace, split="train", progress=False)
    assert (report.added, report.labels_added, report.label_errors) == (1, 4, 3)
    labels = {r["box_id"]: r for r in workspace.read_table(LABELS).to_pylist()}
    assert labels[10]["status"] == "ok" and labels[10]["x1"] == 12 and labels[10]["category"] == "cat"
    assert labels[11]["status"] == "error" and "x1=60 > width 32" in labels[11]["error"]
    assert "w=0" in labels[12]["error"] and "bbox x is nan" in labels[13]["error"]
    assert any("ann.json annotation 11 (a.jpg): bbox x1=60" in f for f in report.failures)
    assert load_labels(workspace, split="train").num_rows == 1
    again = ingest(tmp_path / "ann.json", workspace, progress=False)
    assert again.labels_added == 0 and again.labels_already_present == 4


def test_coco_duplicate_image_id_aborts_and_writes_nothing(tmp_path, workspace):
    images = [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24},
              {"id": 1, "file_name": "b.jpg", "width": 32, "height": 24}]
    with pytest.raises(UserError, match=r"ann\.json: duplicate image id 1 \(a\.jpg and b\.jpg\)"):
        ingest(_coco(tmp_path, images, []), workspace, progress=False)
    assert not workspace.exists("catalog")


def test_check_image_reasons(tmp_path, folder):
    assert check_image(str(tmp_path / "nope.jpg"))[2:] == ("error", "missing file")
    assert check_image(str(folder / "ok_0.jpg")) == (32, 24, "ok", "")


def test_summary_and_loaders(folder, workspace):
    ingest(folder, workspace, split="pool", progress=False)
    s = catalog_summary(workspace)
    assert s["images_by_split"] == {"pool": {"error": 2, "ok": 6}}
    assert s["errors_by_reason"] == {"not an image": 1, "truncated": 1}
    assert load_images(workspace, split="pool").num_rows == 6
    assert load_images(workspace, status=None).num_rows == 8
    assert load_images(workspace, split="train").num_rows == 0


# ------------------------------------------------------------------------------------------ manifest defects
def test_null_or_blank_uri_is_an_error_naming_the_row_not_the_manifest_folder(tmp_path, workspace):
    _jpeg(tmp_path / "m" / "a.jpg")
    pq.write_table(pa.table({"uri": ["a.jpg", None, "  ", ""]}), tmp_path / "m" / "m.parquet")
    report = ingest(tmp_path / "m" / "m.parquet", workspace, progress=False)
    assert (report.added, report.errors) == (1, 3)
    assert [f.split(": ", 1)[1] for f in report.failures] == [f"row {r}: field 'uri' is empty" for r in (2, 3, 4)]
    uris = workspace.read_table(IMAGES)["uri"].to_pylist()
    assert uris == [str(tmp_path / "m" / "a.jpg")] and str(tmp_path / "m") not in uris


def test_unsupported_scheme_is_an_error_row_naming_the_row_not_a_rejected_manifest(tmp_path, workspace):
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("uri\na.jpg\nhttp://example.com/x.jpg\n")
    for check in (True, False):
        ws = workspace if check else type(workspace)(tmp_path / f"ws-{check}")
        report = ingest(tmp_path / "m.csv", ws, check_headers=check, progress=False)
        assert (report.added, report.errors) == (2, 1)
        assert report.failures == ["http://example.com/x.jpg (row 3): unsupported URI scheme 'http' (readable: "
                                   "file, s3, gs, gcs, hdfs, viewfs, abfs, abfss)"]
        got = {r["uri"]: r for r in ws.read_table(IMAGES).to_pylist()}
        assert got["http://example.com/x.jpg"]["status"] == "error"
    assert check_image("http://example.com/x.jpg")[2:] == ("error", report.failures[0].split(": ", 1)[1])


def test_malformed_csv_manifest_error_names_the_file(tmp_path, workspace):
    (tmp_path / "bad.csv").write_text("uri,split\na.jpg,train\nb.jpg,train,extra,cols\n")
    with pytest.raises(UserError, match=r"bad\.csv: cannot read the csv manifest.*(CSV parse error|Expected)"):
        ingest(tmp_path / "bad.csv", workspace, check_headers=False, progress=False)
    assert not workspace.exists(IMAGES)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match=r"bad\.parquet: cannot read the parquet manifest"):
        ingest(tmp_path / "bad.parquet", workspace, progress=False)


def test_recheck_re_reads_error_rows_and_a_restored_file_becomes_ok(tmp_path, workspace):
    from actors.catalog.recheck import recheck_errors

    _jpeg(tmp_path / "m" / "a.jpg")
    (tmp_path / "m" / "m.csv").write_text("uri\na.jpg\nlater.jpg\nnever.jpg\n")
    first = ingest(tmp_path / "m" / "m.csv", workspace, progress=False)
    assert first.errors == 2
    _jpeg(tmp_path / "m" / "later.jpg", w=40, h=30)  # restored after the ingest
    again = ingest(tmp_path / "m" / "m.csv", workspace, progress=False)
    status = {Path(r["uri"]).name: r["status"] for r in workspace.read_table(IMAGES).to_pylist()}
    assert again.already_present == 3 and status["later.jpg"] == "error"  # ingest alone never re-checks
    rep = recheck_errors(workspace)
    assert (rep.checked, rep.recovered, rep.still_failing) == (2, 1, 1) and rep.errors_by_reason == {"missing file": 1}
    rows = {Path(r["uri"]).name: r for r in workspace.read_table(IMAGES).to_pylist()}
    assert (rows["later.jpg"]["status"], rows["later.jpg"]["width"], rows["later.jpg"]["error"]) == ("ok", 40, "")
    assert rows["never.jpg"]["status"] == "error" and rows["a.jpg"]["status"] == "ok"



def test_relative_uris_of_a_manifest_on_object_storage_resolve_in_its_bucket():
    from actors.catalog.schema import normalize_uri

    assert normalize_uri("img/a.png", "s3://bucket/data") == "s3://bucket/data/img/a.png"
    assert normalize_uri("./img/../b.png", "s3://bucket/data") == "s3://bucket/data/b.png"
    assert normalize_uri("s3://other/c.png", "s3://bucket/data") == "s3://other/c.png"  # absolute: as given
    assert normalize_uri("/local/d.png", "s3://bucket/data") == "/local/d.png"
    assert normalize_uri("e.png", "/data") == "/data/e.png"
