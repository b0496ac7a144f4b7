"""Targeted-selection page on a tiny workspace (toy feature store + index + catalog images): run a query through
``mine``, browse the gallery, open a saved selection, export; bad input leaves the workspace unchanged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.apps.planner.helpers import files, ok, page

W, H = 512, 384  # the toy maps are 12x16 cells of 32 px


@pytest.fixture
def toy_ws(ws_dir, tmp_path):
    """15 pool images with toy features (every third holds a planted pattern), both indexes, and a catalog."""
    from actors.core.workspace import Workspace
    from actors.selection.index import build_index
    from tests.actors.features.test_backbones import write_catalog
    from tests.actors.selection.test_match import _pool

    ws = Workspace(ws_dir)
    fms, _, _ = _pool(ws, n=15)
    build_index(ws, "toy", progress=False)
    build_index(ws, "toy", kind="global", progress=False)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for fm in fms:
        uri = img_dir / f"{fm.image_id}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(uri)
        rows.append(dict(image_id=fm.image_id, uri=str(uri), width=W, height=H, source="toy", split="pool",
                         status="ok", error=""))
    write_catalog(ws, rows)
    return ws


def _gallery(at) -> list[str]:
    """Captions of the gallery's images by rank (the query image's caption does not start with '#')."""
    caps = [i.captions[0] for i in at.get("image") if i.captions and i.captions[0].startswith("#")]
    return sorted(caps, key=lambda c: int(c[1:].split(" ")[0]))


def _set_box(at, box):
    for lbl, v in zip(("x0", "y0", "x1", "y1"), box):
        next(n for n in at.number_input if n.label == lbl).set_value(float(v))


def _query_page(top_k=5, box=(64, 64, 192, 160)):
    at = ok(page("selection"))
    at.selectbox(key="sel_pool").set_value("img003.png (pool)")
    ok(at.run())
    _set_box(at, box)
    at.number_input(key="sel_topk").set_value(top_k)
    return at


def test_run_a_query_and_browse_the_gallery(toy_ws):
    from actors.selection.mine import mine

    at = _query_page()
    at.button(key="sel_run").click()
    ok(at.run())
    want = mine(toy_ws, image="img003", boxes=[(64, 64, 192, 160)], top_k=5, model="toy", write=False,
                image_size=(W, H))
    assert "5 images selected" in at.success[0].value
    assert toy_ws.exists(f"selections/{want.query_id}.parquet")  # the same query id: the same library call
    captions = _gallery(at)
    assert captions == [f"#{r + 1} · score {h.score:.3f} · {h.image_id}.png" for r, h in enumerate(want.hits)]
    labels = {b.label for b in at.get("download_button")}
    assert labels == {"Export manifest (CSV)", "Export manifest (Parquet)", "Export COCO JSON",
                      "Export for FiftyOne (zip)"}


def test_open_a_saved_selection_paginates_and_exports(toy_ws):
    from actors.selection.mine import mine
    from apps.planner import selection_data as sd

    sel = mine(toy_ws, image="img000", boxes=[(32, 32, 160, 128)], top_k=14, model="toy", image_size=(W, H))
    at = _query_page()
    at.radio(key="sel_mode").set_value("Open a saved selection")
    ok(at.run())
    assert at.selectbox(key="sel_saved").value == sel.query_id
    assert len(_gallery(at)) == 12  # page 1 of 2
    at.number_input(key=f"sel_page_{sel.query_id}").set_value(2)
    ok(at.run())
    assert len(_gallery(at)) == 2
    name, data = sd.export_file(toy_ws, sel.query_id, "csv")
    csv = data.decode().splitlines()
    assert name == f"selection-{sel.query_id}.csv" and len(csv) == 15
    assert csv[0] == '"rank","image_id","uri","score","x0","y0","x1","y1","is_query"'
    coco = json.loads(sd.export_file(toy_ws, sel.query_id, "coco")[1])
    assert len(coco["images"]) == len(coco["annotations"]) == 14
    a = coco["annotations"][0]
    assert a["bbox"][2] > 0 and a["score"] == pytest.approx(sel.hits[0].score, rel=1e-5)
    assert coco["images"][0]["file_name"].endswith(".png") and coco["images"][0]["width"] == W


def test_a_selection_downloads_for_fiftyone_as_assay_export_writes_it(toy_ws, tmp_path):
    """#25 item 4: the page exported CSV and COCO only, while `assay export --format fiftyone` wrote a FiftyOne
    folder; the page now offers that folder as a zip, made by the same library function."""
    import zipfile

    from actors.selection.export import export_selection
    from actors.selection.mine import mine
    from apps.planner import selection_data as sd

    sel = mine(toy_ws, image="img000", boxes=[(32, 32, 160, 128)], top_k=4, model="toy", image_size=(W, H))
    at = _query_page()
    at.radio(key="sel_mode").set_value("Open a saved selection")
    ok(at.run())
    button = next(b for b in at.get("download_button") if b.label == "Export for FiftyOne (zip)")
    assert button.proto.url.endswith(".zip")
    name, data = sd.export_file(toy_ws, sel.query_id, "fiftyone")
    export_selection(toy_ws, sel.query_id, str(tmp_path / "fo"), fmt="fiftyone")  # what the CLI writes
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(z.namelist()) == ["data.json", "labels.json"]
        for member in z.namelist():
            assert z.read(member) == (tmp_path / "fo" / member).read_bytes()
    assert name == f"selection-{sel.query_id}-fiftyone.zip"
    assert len(json.loads((tmp_path / "fo" / "labels.json").read_text())["labels"]) == 4


def test_images_and_selections_are_named_by_file_not_by_hex_id(toy_ws, tmp_path):
    """#25 item 5: the page showed raw hex image ids and query ids where a reader knows file names."""
    from actors.catalog.schema import IMAGES
    from actors.selection.mine import mine
    from tests.actors.features.test_backbones import write_catalog

    rows = toy_ws.read_table(IMAGES).to_pylist()
    for r in rows:  # real image ids are hashes: give every image a file name unlike its id
        new = tmp_path / "photos" / f"beach_{r['image_id'][-3:]}.png"
        new.parent.mkdir(exist_ok=True)
        new.write_bytes(open(r["uri"], "rb").read())
        r["uri"] = str(new)
    write_catalog(toy_ws, rows)
    sel = mine(toy_ws, image="img000", boxes=[(32, 32, 160, 128)], top_k=3, model="toy", image_size=(W, H))
    at = ok(page("selection"))
    assert at.selectbox(key="sel_pool").value.startswith("beach_")
    at.radio(key="sel_mode").set_value("Open a saved selection")
    ok(at.run())
    label = at.selectbox(key="sel_saved").format_func(sel.query_id)
    assert label.startswith("beach_000.png · template · ") and label.endswith(sel.query_id)
    captions = _gallery(at)
    assert len(captions) == 3 and all(c.split(" · ")[-1].startswith("beach_") for c in captions)
    assert not any("img0" in c for c in captions)


def test_box_outside_the_image_is_a_message_and_writes_nothing(toy_ws, ws_dir):
    before = files(ws_dir)
    at = _query_page(box=(400, 300, 600, 400))
    at.button(key="sel_run").click()
    ok(at.run())
    assert "outside the image of size 512x384" in " ".join(e.value for e in at.error)
    assert files(ws_dir) == before


def test_an_upload_that_is_not_an_image_is_a_message(toy_ws, ws_dir):
    before = files(ws_dir)
    at = ok(page("selection"))
    at.radio(key="sel_src").set_value("Upload an image")
    ok(at.run())
    at.file_uploader(key="sel_upload").set_value(("photo.png", b"definitely not a PNG", "image/png"))
    ok(at.run())
    assert "not an image" in " ".join(e.value for e in at.error)
    assert not _gallery(at) and files(ws_dir) == before


def test_an_uploaded_image_that_cannot_be_mined_is_removed_again(toy_ws, ws_dir, monkeypatch):
    """Mining an uploaded image saves it under a content-hash name first; when the query fails (here: the store
    has no region encoder for new images) the page says so and the saved upload is deleted again."""
    import actors.selection.mine as mine_mod
    from actors.core.workspace import WorkspaceError

    seen = []

    def fail(ws, queries, **kw):
        seen.append(queries[0].image)
        raise WorkspaceError("features/toy: no region encoder to embed a new query image")

    monkeypatch.setattr(mine_mod, "mine_batch", fail)
    before = files(ws_dir)
    buf = io.BytesIO()
    Image.new("RGB", (W, H), (120, 30, 30)).save(buf, format="PNG")
    at = ok(page("selection"))
    at.radio(key="sel_src").set_value("Upload an image")
    ok(at.run())
    at.file_uploader(key="sel_upload").set_value(("../../evil name.png", buf.getvalue(), "image/png"))
    ok(at.run())
    at.button(key="sel_run").click()
    ok(at.run())
    assert "no region encoder" in " ".join(e.value for e in at.error)
    (path,) = seen
    assert path.startswith(str(ws_dir / "queries" / "images")) and "evil" not in path  # generated name
    assert files(ws_dir) == before


def test_missing_features_or_index_name_the_command(ws_dir):
    at = ok(page("selection"))
    text = " ".join(i.value for i in at.info)
    assert "assay embed --workspace" in text and "assay index --workspace" in text

    from actors.core.workspace import Workspace
    from tests.actors.selection.test_match import _pool

    _pool(Workspace(ws_dir), n=3)
    at = ok(page("selection"))
    text = " ".join(i.value for i in at.info)
    assert "assay index --workspace" in text and "--model toy" in text and "assay embed" not in text


@pytest.mark.slow
def test_mining_on_ray_match_actors_gives_the_same_gallery(toy_ws, ray_cluster):
    from actors.selection.mine import mine

    at = _query_page()
    at.number_input(key="sel_workers").set_value(1)
    at.button(key="sel_run").click()
    ok(at.run())
    want = mine(toy_ws, image="img003", boxes=[(64, 64, 192, 160)], top_k=5, model="toy", write=False,
                image_size=(W, H))
    assert _gallery(at) == [f"#{r + 1} · score {h.score:.3f} · {h.image_id}.png" for r, h in enumerate(want.hits)]


def test_a_box_drawn_on_the_canvas_maps_back_to_image_pixels():
    from apps.planner.selection_data import box_from_canvas, check_box

    assert box_from_canvas(None, 1.0) is None and box_from_canvas({"objects": [{"type": "path"}]}, 1.0) is None
    drawn = {"objects": [{"type": "Rect", "left": 10, "top": 20, "width": 30, "height": 40, "scaleX": 2,
                          "scaleY": 1},   # Fabric 7 writes 'Rect'; an edited box carries its scale
                         {"type": "rect", "left": 50, "top": 25, "width": 100, "height": 50}]}
    assert box_from_canvas(drawn, 0.5) == (100.0, 50.0, 300.0, 150.0)  # the last box, canvas at half size
    assert check_box((100, 50, 300, 150), 512, 384) == (100.0, 50.0, 300.0, 150.0)
    with pytest.raises(Exception, match="empty"):
        check_box((300, 50, 100, 150), 512, 384)


def test_the_indexed_images_cache_key_changes_when_a_sharded_index_is_written(ws_dir):
    from actors.core.workspace import Workspace
    from apps.planner.selection_data import index_stamp

    ws = Workspace(ws_dir)
    before = index_stamp(ws, "toy")
    ws.write_json("index/toy/shards/manifest.json", {"shards": []})  # `assay index --shards N` writes only this
    after = index_stamp(ws, "toy")
    assert after != before and after[0] == before[0]
