"""Active-learning rounds on a tiny world: a catalog of mixed image sizes trains, scores, evaluates and
pseudo-labels; the curve counts the images each round actually trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
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

