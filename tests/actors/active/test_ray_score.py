"""Scoring as a Ray Data stage gives the same predictions and per-image scores as scoring in-process."""

from __future__ import annotations

import numpy as np
import pytest

from actors.core.runtime import Resources


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny world and a detector trained one epoch on its train split (checkpoint in the workspace)."""
    from actors.active.rounds import _classes
    from actors.catalog.world import make_world
    from actors.core.workspace import Workspace
    from actors.detection.data import FeatureCache, build_data, catalog_rows, labels_by_image
    from actors.detection.models import get_detector
    from actors.detection.train import TrainConfig, train_detector

    root = tmp_path_factory.mktemp("rayscore")
    make_world(root / "world", seed=6, n_images=14, size=(128, 96), object_area=(0.02, 0.06), classes=("shape",),
               splits=(("train", 0.4), ("pool", 0.6)), workers=1, workspace=root / "ws")
    ws = Workspace(root / "ws")
    classes = _classes(ws)
    det = get_detector("dense-lite0", classes)
    cache = FeatureCache(ws, det)
    rows = catalog_rows(ws)
    train = [rows[i] for i in sorted(rows) if rows[i]["split"] == "train"]
    labels = labels_by_image(ws, [r["image_id"] for r in train], classes)
    train_detector(det, build_data(det, train, labels, cache=cache), TrainConfig(epochs=1, batch_size=4, seed=2),
                   ws=ws, ckpt="runs/t/models/round-0.pt")
    pool = [rows[i] for i in sorted(rows) if rows[i]["split"] == "pool"]
    return ws, det, cache, pool, classes


@pytest.mark.slow
def test_ray_scores_equal_in_process_scores(ray_cluster, trained):
    from actors.active.ray_score import score_pool_on_ray
    from actors.active.rounds import _dets
    from actors.active.scores import inconsistency_scores, uncertainty_scores
    from actors.detection.data import build_data
    from actors.detection.train import predict

    ws, det, cache, pool, classes = trained
    ids = [r["image_id"] for r in pool]
    preds = predict(det, build_data(det, pool, cache=cache))
    flipped = predict(det, build_data(det, pool, cache=cache, mirrored=True), mirrored=True)
    d, f = {k: _dets(v) for k, v in preds.items()}, {k: _dets(v) for k, v in flipped.items()}
    u, r = uncertainty_scores(d, ids), inconsistency_scores(d, f, ids)
    assert sum(len(v["boxes"]) for v in preds.values()) > 0 and np.ptp(u) > 0  # scores that could differ

    ps = score_pool_on_ray(ws, "runs/t/models/round-0.pt", pool, len(classes),
                           resources=Resources(pool_size=1, num_cpus=0.5, batch_size=3), threads=1)
    assert ps.ids == ids
    np.testing.assert_allclose(ps.uncertainty, u, atol=1e-5)
    np.testing.assert_allclose(ps.inconsistency, r, atol=1e-5)
    def canonical(p: dict) -> dict:  # detections with tied scores may come in either order: compare as sets
        b = np.round(np.asarray(p["boxes"], float).reshape(-1, 4), 2)
        order = np.lexsort(b.T[::-1]) if len(b) else np.arange(0)
        return {k: np.asarray(p[k])[order] for k in ("boxes", "scores", "probs", "labels")}

    for i in ids:
        for got, want in ((ps.preds[i], preds[i]), (ps.flipped[i], flipped[i])):
            got, want = canonical(got), canonical(want)
            for k in ("boxes", "scores", "probs"):
                np.testing.assert_allclose(got[k], want[k], atol=1e-4)
            assert (got["labels"] == want["labels"]).all()
