"""Pseudo-labels never overwrite human labels and are removed by run."""

from __future__ import annotations

import numpy as np

from actors.active.pseudo import add_pseudo_labels, pseudo_boxes, remove_pseudo_labels
from actors.catalog.schema import LABELS, load_labels

CLASSES = ["circle", "star"]


def _preds():
    box = np.array([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 50.0, 60.0]])
    return {i: {"boxes": box, "scores": np.array([0.9, 0.3]), "labels": np.array([1, 0])}
            for i in ("im0", "im1", "im2", "im3")}


def _human(ws):
    return sorted(tuple(r.values()) for r in load_labels(ws, status=None, source="human").to_pylist())


def test_pseudo_labels_never_overwrite_human_labels(catalog_ws):
    before = _human(catalog_ws)
    n = add_pseudo_labels(catalog_ws, _preds(), CLASSES, "run-a", threshold=0.5, exclude={"im1"})
    assert n == 3  # one confident box on each of im0, im2, im3; im1 is in the run's labeled set
    assert _human(catalog_ws) == before
    t = load_labels(catalog_ws, status=None).to_pylist()
    keys = [(r["image_id"], r["box_id"]) for r in t]
    assert len(keys) == len(set(keys)), "a pseudo row reused a box_id"
    pseudo = [r for r in t if r["source"] == "pseudo"]
    assert {r["image_id"] for r in pseudo} == {"im0", "im2", "im3"}
    assert all(r["run_id"] == "run-a" and r["category"] == "star" for r in pseudo)
    # training never reads pseudo rows of an image the run has human labels for
    assert set(pseudo_boxes(catalog_ws, "run-a", CLASSES, exclude={"im0"})) == {"im2", "im3"}


def test_pseudo_labels_removed_by_run(catalog_ws):
    before = catalog_ws.read_table(LABELS).num_rows
    add_pseudo_labels(catalog_ws, _preds(), CLASSES, "run-a", threshold=0.5)
    add_pseudo_labels(catalog_ws, _preds(), CLASSES, "run-b", threshold=0.2)
    assert remove_pseudo_labels(catalog_ws, "run-a") == 4
    left = load_labels(catalog_ws, status=None).to_pylist()
    assert {r["run_id"] for r in left if r["source"] == "pseudo"} == {"run-b"}
    assert remove_pseudo_labels(catalog_ws, "run-b") == 8
    assert catalog_ws.read_table(LABELS).num_rows == before
    assert remove_pseudo_labels(catalog_ws, "run-b") == 0


def test_replace_keeps_only_the_latest_round(catalog_ws):
    add_pseudo_labels(catalog_ws, _preds(), CLASSES, "run-a", threshold=0.5)
    add_pseudo_labels(catalog_ws, _preds(), CLASSES, "run-a", threshold=0.5)
    assert len(load_labels(catalog_ws, source="pseudo")) == 4
