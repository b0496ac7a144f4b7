"""pycocotools mAP: perfect predictions score 1.0, shifted boxes score lower, per-class and size breakdowns."""

from __future__ import annotations

import numpy as np
import pytest

from actors.detection.evaluate import evaluate_detections

CLASSES = ["circle", "star", "face"]


def _gt():
    rng = np.random.default_rng(0)
    gt = {}
    for i in range(6):
        xy = rng.uniform(0, 300, size=(3, 2))
        wh = rng.uniform(12, 120, size=(3, 2))
        gt[f"im{i}"] = (np.concatenate([xy, xy + wh], 1), np.array([0, 1, i % 2]))
    return gt


def test_perfect_predictions_score_one():
    gt = _gt()
    dets = {k: (b, np.ones(len(b)), lab) for k, (b, lab) in gt.items()}
    r = evaluate_detections(gt, dets, CLASSES)
    assert r.map == pytest.approx(1.0) and r.map50 == pytest.approx(1.0)
    assert r.per_class_ap["circle"] == pytest.approx(1.0) and r.per_class_ap["face"] is None  # no face in gt
    assert r.n_gt == 18 and r.n_det == 18


def test_shifted_boxes_score_lower_and_wrong_class_zero():
    gt = _gt()
    shifted = {k: (b + np.array([6, 6, 6, 6]), np.ones(len(b)), lab) for k, (b, lab) in gt.items()}
    perfect = evaluate_detections(gt, {k: (b, np.ones(len(b)), lab) for k, (b, lab) in gt.items()}, CLASSES)
    moved = evaluate_detections(gt, shifted, CLASSES)
    assert moved.map < perfect.map
    assert moved.map50 <= perfect.map50
    wrong = evaluate_detections(gt, {k: (b, np.ones(len(b)), (lab + 1) % 3) for k, (b, lab) in gt.items()}, CLASSES)
    assert wrong.map < 0.5
    none = evaluate_detections(gt, {}, CLASSES)
    assert none.map == 0.0 and none.n_det == 0


def test_ap_by_size():
    gt = {"a": (np.array([[0, 0, 10, 10], [100, 100, 200, 200]], float), np.array([0, 0]))}
    # finds the large object only
    r = evaluate_detections(gt, {"a": (np.array([[100, 100, 200, 200]], float), np.ones(1), np.zeros(1, int))},
                            CLASSES)
    assert r.ap_large == pytest.approx(1.0) and r.ap_small == pytest.approx(0.0)


def test_ap_by_named_area_range_ignores_objects_outside_it():
    gt = {"a": (np.array([[0, 0, 10, 10], [100, 100, 200, 200]], float), np.array([0, 0]))}
    found_large = {"a": (np.array([[100, 100, 200, 200]], float), np.ones(1), np.zeros(1, int))}
    r = evaluate_detections(gt, found_large, CLASSES, area_ranges={"tiny": (0, 500), "big": (500, 1e9)})
    assert r.by_area["big"]["map50"] == pytest.approx(1.0) and r.by_area["big"]["n_gt"] == 1
    assert r.by_area["tiny"]["map50"] == pytest.approx(0.0) and r.by_area["tiny"]["n_gt"] == 1
    assert r.map50 == pytest.approx(0.5, abs=0.01)  # over both objects: one of two found


def test_bad_label_is_an_error():
    with pytest.raises(ValueError, match="label outside"):
        evaluate_detections({"a": (np.zeros((1, 4)) + [0, 0, 5, 5], np.array([7]))}, {}, CLASSES)
