"""Uncertainty, flip inconsistency, cascade and class balance on hand-built detections with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actors.active.scores import (Detections, balanced_order, cascade_select, image_inconsistency,
                                  image_uncertainty, inconsistency_scores, normalized_entropy, symmetric_kl,
                                  uncertainty_scores, unflip, weighted_scores)


def D(boxes, scores, probs):
    return Detections(np.array(boxes, float), np.array(scores, float), np.array(probs, float))


def test_normalized_entropy_known_values():
    h = normalized_entropy(np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]]))
    assert h == pytest.approx([0.0, 1.0, math.log(2) / math.log(4)], abs=1e-6)


def test_uncertainty_is_max_over_confident_detections():
    d = D([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.6, 0.3],
          [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    # the uniform detection has score 0.3 < 0.5: it does not count
    assert image_uncertainty(d) == pytest.approx(0.5, abs=1e-6)
    assert image_uncertainty(d, min_score=0.0) == pytest.approx(1.0, abs=1e-6)
    assert image_uncertainty(d, reduce="mean") == pytest.approx(0.25, abs=1e-6)
    # no confident detection: falls back to all of them; none at all: 0
    assert image_uncertainty(D([[0, 0, 1, 1]], [0.1], [[0.5, 0.5]])) == pytest.approx(1.0)
    assert uncertainty_scores({"a": D(np.zeros((0, 4)), [], np.zeros((0, 3)))}, ["a", "missing"]).tolist() == [0, 0]


def test_symmetric_kl_known_value():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    want = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)) + (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert float(symmetric_kl(p, q)) == pytest.approx(want, rel=1e-6)
    assert float(symmetric_kl(p, p)) == pytest.approx(0.0, abs=1e-9)


def test_flip_consistency_identical_views_score_zero_and_mapping_back_works():
    w = 100.0
    d = D([[10, 10, 30, 30]], [0.9], [[0.8, 0.2]])
    mirrored = D([[w - 30, 10, w - 10, 30]], [0.9], [[0.8, 0.2]])  # as predicted on the flipped image
    assert image_inconsistency(d, unflip(mirrored, w)) == pytest.approx(0.0, abs=1e-9)


def test_flip_inconsistency_known_answer():
    d = D([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [[0.5, 0.5], [1.0, 0.0]])
    f = D([[0, 0, 10, 12]], [0.9], [[0.9, 0.1]])  # first box shifted (IoU 100/120), class changed; second missing
    iou = 100 / 120
    pair = float(symmetric_kl(np.array([0.5, 0.5]), np.array([0.9, 0.1]))) + (1 - iou)
    assert image_inconsistency(d, f, unmatched=0.0) == pytest.approx(pair, rel=1e-6)
    assert image_inconsistency(d, f, unmatched=5.0) == pytest.approx(5.0)  # the unmatched box dominates the max
    assert image_inconsistency(d, f, reduce="sum", unmatched=1.0) == pytest.approx(pair + 1.0, rel=1e-6)
    # box shift alone: same class distribution, boxes overlapping at IoU 0.5 exactly
    a, b = D([[0, 0, 10, 10]], [0.9], [[1, 0]]), D([[0, 0, 10, 20]], [0.9], [[1, 0]])
    assert image_inconsistency(a, b, box_weight=2.0) == pytest.approx(2 * 0.5, abs=1e-6)


def test_cascade_picks_the_planted_image():
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(30)]
    preds, flipped = {}, {}
    for i in ids:
        p = rng.dirichlet([5, 1, 1])
        preds[i] = D([[10, 10, 40, 40]], [0.9], [p])
        flipped[i] = D([[10, 10, 40, 40]], [0.9], [p])  # perfectly consistent
    # planted: uncertain AND inconsistent (the flip sees another class and a shifted box)
    preds["img17"] = D([[10, 10, 40, 40]], [0.9], [[0.4, 0.35, 0.25]])
    flipped["img17"] = D([[14, 10, 44, 40]], [0.9], [[0.05, 0.05, 0.9]])
    # decoy: the most uncertain image, but consistent
    preds["img3"] = flipped["img3"] = D([[10, 10, 40, 40]], [0.9], [[0.34, 0.33, 0.33]])
    u = uncertainty_scores(preds, ids)
    r = inconsistency_scores(preds, flipped, ids)
    assert ids[int(np.argmax(u))] == "img3"
    assert cascade_select(ids, u, r, budget=1) == ["img17"]
    assert weighted_scores(u, r).argmax() == ids.index("img17")


def test_cascade_respects_budget_and_shortlist():
    ids = list("abcdef")
    u = np.array([0.9, 0.8, 0.7, 0.1, 0.05, 0.0])
    r = np.array([0.0, 0.1, 0.2, 9.0, 9.0, 9.0])  # very inconsistent but certain: outside the 3x shortlist
    assert cascade_select(ids, u, r, budget=1) == ["c"]
    assert cascade_select(ids, u, r, budget=1, factor=4) == ["d"]
    assert len(cascade_select(ids, u, r, budget=2)) == 2
    assert cascade_select(ids, u, r, budget=0) == []


def test_balanced_order_spreads_classes():
    ids = ["a1", "a2", "a3", "b1"]
    s = np.array([1.0, 0.95, 0.9, 0.6])
    cls = [{0}, {0}, {0}, {1}]
    assert balanced_order(ids, s, cls, 2, decay=1.0) == ["a1", "a2"]  # no diversity term: plain top-k
    assert balanced_order(ids, s, cls, 2, decay=0.5) == ["a1", "b1"]  # 0.95 * 0.5 < 0.6


def test_detections_shape_check():
    with pytest.raises(ValueError, match="expected boxes"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((3, 5)))


def test_inconsistency_falls_back_to_all_detections_when_none_is_confident():
    d = D([[0, 0, 10, 10]], [0.2], [[0.9, 0.1]])
    f = D([[0, 0, 10, 10]], [0.3], [[0.1, 0.9]])
    assert image_inconsistency(d, f) == pytest.approx(float(symmetric_kl(np.array([0.9, 0.1]), np.array([0.1, 0.9]))))
    # one confident view: the threshold holds (the weak box on the other side does not count)
    g = D([[0, 0, 10, 10]], [0.9], [[0.1, 0.9]])
    assert image_inconsistency(d, g) == pytest.approx(1.0)  # g's box is unmatched
