"""Active-learning rounds on a tiny world: a catalog of mixed image sizes trains, scores, evaluates and
pseudo-labels; the curve counts the images each round actually trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from actors.detection.train import TrainConfig


def _shrink(world: Path, name: str, scale: float) -> None:
    """Resize every other image of the COCO file ``name`` by ``scale``, with its boxes and its size fields."""
    path = world / "annotations" / f"{name}.json"
    doc = json.loads(path.read_text())
    small = {im["id"] for im in doc["images"][::2]}
    for im in doc["images"]:
        if im["id"] in small:
            f = world / "images" / name / Path(im["file_name"]).name
            w, h = round(im["width"] * scale), round(im["height"] * scale)
            Image.open(f).resize((w, h)).save(f)
            im["width"], im["height"] = w, h
    for ann in doc["annotations"]:
        if ann["image_id"] in small:
            ann["bbox"] = [v * scale for v in ann["bbox"]]
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def mixed_ws(tmp_path_factory):
    """A workspace whose catalog mixes 128×96 and 96×72 images, ingested from the world's COCO files."""
    from actors.catalog.ingest import ingest
    from actors.catalog.world import make_world
    from actors.core.workspace import Workspace

    root = tmp_path_factory.mktemp("mixed")
    make_world(root / "world", n_images=24, size=(128, 96), workers=1, object_area=(0.01, 0.04),
               workspace=root / "ws0")
    ws = Workspace(root / "ws")
    for name in ("train", "val", "pool"):
        _shrink(root / "world", name, 0.75)
        ingest(root / "world" / "annotations" / f"{name}.json", ws, split=name, progress=False)
    return ws


def _cfg(**kw):
    from actors.active.rounds import LearnConfig

    return LearnConfig(**{"rounds": 1, "budget": 3, "initial": 4, "train": TrainConfig(epochs=1, batch_size=2),
                          **kw})


@pytest.mark.parametrize("strategy", ["uncertainty_robustness", "coreset"])
def test_learn_on_images_of_mixed_sizes(mixed_ws, strategy):
    """#24 item 1: training, pool scoring, evaluation and pseudo-labels on 128×96 and 96×72 images at once."""
    from actors.active.rounds import run_learning
    from actors.catalog.schema import load_images, load_labels

    rows = {r["image_id"]: r for r in load_images(mixed_ws).to_pylist()}
    assert {(r["width"], r["height"]) for r in rows.values()} == {(128, 96), (96, 72)}
    run = f"mixed-{strategy}"
    rep = run_learning(mixed_ws, _cfg(strategy=strategy, pseudo=True, pseudo_threshold=0.0), run_id=run,
                       progress=False, ray_scoring=False)
    assert len(rep.map50) == 2 and all(0.0 <= v <= 100.0 for v in rep.map50)
    assert len(rep.selected) == 1 and len(rep.selected[0]) == 3
    scored = mixed_ws.read_table(f"runs/{run}/round-1/scores.parquet")["image_id"].to_pylist()
    assert {(rows[i]["width"], rows[i]["height"]) for i in scored} == {(128, 96), (96, 72)}
    pseudo = load_labels(mixed_ws, source="pseudo").to_pylist()
    assert {(rows[p["image_id"]]["width"], rows[p["image_id"]]["height"]) for p in pseudo} == {(128, 96), (96, 72)}
    for p in pseudo:  # each image's boxes are in its own frame
        assert p["x1"] <= rows[p["image_id"]]["width"] + 1e-3 and p["y1"] <= rows[p["image_id"]]["height"] + 1e-3



@pytest.fixture
def unlabeled_pool(tmp_path):
    """A tiny world whose pool images have no labels in the catalog; its pool COCO file plays the labeling team."""
    import pyarrow.compute as pc

    from actors.catalog.schema import LABELS, load_images
    from actors.catalog.world import make_world
    from actors.core.workspace import Workspace

    make_world(tmp_path / "world", n_images=24, size=(128, 96), workers=1, object_area=(0.01, 0.04),
               workspace=tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    pool = load_images(ws, split="pool")["image_id"].combine_chunks()
    labels = ws.read_table(LABELS)
    ws.write_table(LABELS, labels.filter(pc.invert(pc.is_in(labels["image_id"], value_set=pool))))
    return ws, tmp_path / "world"


def _team_file(world: Path, ws, ids: list[str], empty: str, out: Path) -> Path:
    """The pool COCO file cut to the images ``ids`` and the catalog's categories, with no annotation on ``empty``
    (seen, no objects)."""
    from actors.catalog.schema import load_images, load_labels

    uri = {r["image_id"]: Path(r["uri"]).name for r in load_images(ws).to_pylist()}
    doc = json.loads((world / "annotations" / "pool.json").read_text())
    known = set(load_labels(ws, source="human")["category"].to_pylist())
    cats = [c for c in doc["categories"] if c["name"] in known]
    keep = {im["id"]: im for im in doc["images"] if Path(im["file_name"]).name in {uri[i] for i in ids}}
    gone = next(k for k, im in keep.items() if Path(im["file_name"]).name == uri[empty])
    anns = [a for a in doc["annotations"] if a["image_id"] in keep and a["image_id"] != gone
            and a["category_id"] in {c["id"] for c in cats}]
    for im in keep.values():
        im["file_name"] = str(world / "images" / "pool" / Path(im["file_name"]).name)
    out.write_text(json.dumps({"images": list(keep.values()), "annotations": anns, "categories": cats}))
    return out


def test_curve_counts_only_images_the_round_trained_on(unlabeled_pool, tmp_path):
    """#24 item 2: a round whose selected images have no labels waits (no curve row at a size it never trained
    on); after `labels import` (one image marked as holding no object) the same run trains it on all of them."""
    from actors.active.oracle import import_labels
    from actors.active.rounds import run_learning

    ws, world = unlabeled_pool
    first = run_learning(ws, _cfg(), run_id="wait", progress=False, ray_scoring=False)
    curve = ws.read_table("runs/wait/curve.parquet").to_pylist()
    assert [(r["round"], r["n_labeled"], r["n"]) for r in curve] == [(0, 4, 4)]  # round 1 waits
    picked = first.selected[0]
    assert sorted(first.waiting) == sorted(picked) == sorted(ws.read_json("runs/wait/to_label.json")["image_ids"])
    from actors.catalog.schema import EMPTY, load_labels

    team = _team_file(world, ws, picked, picked[0], tmp_path / "team.json")
    doc = json.loads(team.read_text())
    bare = {im["id"] for im in doc["images"]} - {a["image_id"] for a in doc["annotations"]}  # picked[0], and any
    rep = import_labels(ws, team, run_id="wait")  # picked image whose objects are all of unknown categories
    assert rep.empty == len(bare) >= 1
    assert picked[0] in load_labels(ws, status=EMPTY)["image_id"].to_pylist()
    again = run_learning(ws, _cfg(), run_id="wait", progress=False, ray_scoring=False)
    curve = ws.read_table("runs/wait/curve.parquet").to_pylist()
    assert [(r["round"], r["n_labeled"], r["n"]) for r in curve] == [(0, 4, 4), (1, 7, 7)]
    assert again.waiting == [] and not ws.exists("runs/wait/to_label.json")
    assert [m["n_trained"] for m in ws.read_json("runs/wait/metrics.json")] == [4, 7]
