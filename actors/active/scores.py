"""Active-learning scores computed from saved detector predictions (no live model, no Ray).

A prediction set is a mapping ``image_id -> Detections`` (boxes in pixels, x0 y0 x1 y1; a confidence per box; the
class distribution of each box over the K foreground classes, rows summing to 1). Predictions on the horizontally
flipped image are mapped back to the original frame before they are compared (:func:`unflip`).

Scores (after "Not All Labels Are Equal", CVPR'22, implemented from the formulas):

* **uncertainty** (:func:`uncertainty_scores`): entropy of each detection's class distribution divided by log K
  (so 0..1), reduced per image by the max over detections with confidence >= ``MIN_SCORE`` (0.5). An image with no
  confident detection falls back to its detections of any confidence, and scores 0 when it has none at all.
* **inconsistency** (:func:`inconsistency_scores`): boxes of the image and of its flip are matched greedily by IoU
  (>= ``MATCH_IOU``); a matched pair scores the symmetric KL divergence of their class distributions plus
  ``box_weight`` × (1 − IoU); a confident box without a partner scores ``UNMATCHED``. Reduced per image by the max.
  When neither view has a confident detection, all detections take part (a weak early detector has few confident
  boxes; without this fallback most images tie at 0 and the cascade degenerates to entropy alone).
* **cascade** (:func:`cascade_select`): the top ``factor`` × budget images by uncertainty, then the budget by
  inconsistency among them; **weighted** (:func:`weighted_scores`): a weighted sum of the two rank-normalised scores.
* **class balance** (:func:`balanced_order`): a greedy pick that discounts an image whose predicted classes the
  pick already holds, so one frequent class does not take the whole budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

MIN_SCORE = 0.5  # detections at or above this confidence are the ones an image's score is reduced over
MATCH_IOU = 0.5  # an original and a flipped box are the same object at or above this IoU
UNMATCHED = 1.0  # inconsistency of a confident box that has no partner in the other view
EPS = 1e-8


@dataclass
class Detections:
    """One image's detections: ``boxes`` N×4 (x0, y0, x1, y1 pixels), ``scores`` N, ``probs`` N×K (rows sum to 1)."""

    boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.probs = np.asarray(self.probs, np.float64)
        if self.probs.ndim != 2 or len(self.probs) != len(self.boxes) or len(self.scores) != len(self.boxes):
            raise ValueError(f"expected boxes [N, 4], scores [N], probs [N, K]; got {list(self.boxes.shape)}, "
                             f"{list(self.scores.shape)}, {list(self.probs.shape)}")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self) else np.zeros(0, int)


def unflip(d: Detections, width: float) -> Detections:
    """Detections made on the horizontally flipped image, mapped back to the original frame."""
    b = d.boxes.copy()
    b[:, 0], b[:, 2] = width - d.boxes[:, 2], width - d.boxes[:, 0]
    return Detections(b, d.scores, d.probs)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of A×4 and B×4 boxes (x0, y0, x1, y1) -> A×B."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)  # A×B
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, EPS)


# --------------------------------------------------------------------------- uncertainty
def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of N×K class distributions divided by log K (0 = certain, 1 = uniform)."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1.0)
    p = p / p.sum(1, keepdims=True)
    k = p.shape[1]
    return -(p * np.log(p)).sum(1) / math.log(k) if k > 1 else np.zeros(len(p))


def _reduce(values: np.ndarray, how: str) -> float:
    if not len(values):
        return 0.0
    if how == "max":
        return float(values.max())
    if how == "mean":
        return float(values.mean())
    if how == "sum":
        return float(values.sum())
    raise ValueError(f"unknown reduction {how!r}; use max, mean or sum")


def _confident(d: Detections, min_score: float) -> np.ndarray:
    keep = d.scores >= min_score
    return keep if keep.any() else np.ones(len(d), bool)


def image_uncertainty(d: Detections, *, min_score: float = MIN_SCORE, reduce: str = "max") -> float:
    """Normalised entropy of one image's detections, reduced over those with score >= ``min_score``."""
    if not len(d):
        return 0.0
    return _reduce(normalized_entropy(d.probs[_confident(d, min_score)]), reduce)


def uncertainty_scores(preds: Mapping[str, Detections], ids: Sequence[str] | None = None, *,
                       min_score: float = MIN_SCORE, reduce: str = "max") -> np.ndarray:
    """Per-image uncertainty in 0..1 for ``ids`` (default: every image of ``preds``; a missing image scores 0)."""
    ids = list(preds) if ids is None else ids
    return np.array([image_uncertainty(preds[i], min_score=min_score, reduce=reduce) if i in preds else 0.0
                     for i in ids])


# --------------------------------------------------------------------------- robustness
def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p||q) + KL(q||p) row-wise for N×K distributions."""
    p = np.clip(p, EPS, 1.0)
    q = np.clip(q, EPS, 1.0)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    return ((p - q) * (np.log(p) - np.log(q))).sum(-1)


def match_boxes(a: np.ndarray, b: np.ndarray, order: np.ndarray, iou: float = MATCH_IOU
                ) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of A×4 to B×4 boxes, A visited in ``order``: (i, j, IoU) pairs with IoU >= ``iou``."""
    if not len(a) or not len(b):
        return []
    m = box_iou(a, b)
    taken, pairs = np.zeros(len(b), bool), []
    for i in order:
        row = np.where(taken, -1.0, m[i])
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


def image_inconsistency(d: Detections, f: Detections, *, min_score: float = MIN_SCORE, iou: float = MATCH_IOU,
                        box_weight: float = 1.0, unmatched: float = UNMATCHED, reduce: str = "max") -> float:
    """Disagreement between an image's detections ``d`` and its flip's ``f`` (already in the original frame).

    Only detections with score >= ``min_score`` take part (all of them when neither view has one). Each matched pair scores symmetric KL of the class
    distributions + ``box_weight`` × (1 − IoU); each unmatched confident box, in either view, scores ``unmatched``.
    """
    if not ((d.scores >= min_score).any() or (f.scores >= min_score).any()):
        min_score = -np.inf  # neither view is confident: compare all detections (as uncertainty falls back)
    d = Detections(d.boxes[d.scores >= min_score], d.scores[d.scores >= min_score], d.probs[d.scores >= min_score])
    f = Detections(f.boxes[f.scores >= min_score], f.scores[f.scores >= min_score], f.probs[f.scores >= min_score])
    pairs = match_boxes(d.boxes, f.boxes, np.argsort(-d.scores), iou)
    vals = [float(symmetric_kl(d.probs[i], f.probs[j])) + box_weight * (1.0 - o) for i, j, o in pairs]
    vals += [unmatched] * (len(d) - len(pairs) + len(f) - len(pairs))
    return _reduce(np.array(vals), reduce)


def inconsistency_scores(preds: Mapping[str, Detections], flipped: Mapping[str, Detections],
                         ids: Sequence[str] | None = None, **kw: float | str) -> np.ndarray:
    """Per-image flip inconsistency for ``ids`` (default: every image of ``preds``); see :func:`image_inconsistency`."""
    ids = list(preds) if ids is None else ids
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 1)))
    return np.array([image_inconsistency(preds.get(i, empty), flipped.get(i, empty), **kw) for i in ids])


# --------------------------------------------------------------------------- combinations
def cascade_select(ids: Sequence[str], uncertainty: np.ndarray, inconsistency: np.ndarray, budget: int,
                   factor: float = 3.0) -> list[str]:
    """The top ``factor``×budget of ``ids`` by uncertainty, then the ``budget`` most inconsistent of those.

    Ties break by position in ``ids`` (stable sort), so the result is deterministic.
    """
    ids = list(ids)
    if budget <= 0 or not ids:
        return []
    first = np.argsort(-np.asarray(uncertainty), kind="stable")[: max(budget, int(math.ceil(factor * budget)))]
    second = first[np.argsort(-np.asarray(inconsistency)[first], kind="stable")][:budget]
    return [ids[i] for i in second]


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to 0..1 (ties share their mean rank); a constant vector maps to 0.5."""
    from scipy.stats import rankdata

    x = np.asarray(x, np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return np.full(len(x), 0.5)
    return (rankdata(x) - 1) / (len(x) - 1)


def weighted_scores(uncertainty: np.ndarray, inconsistency: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """(1 − weight) × rank(uncertainty) + weight × rank(inconsistency), each rank-normalised to 0..1."""
    return (1 - weight) * rank_normalize(uncertainty) + weight * rank_normalize(inconsistency)


def predicted_classes(d: Detections, min_score: float = MIN_SCORE) -> set[int]:
    """Class indices an image's confident detections predict (all detections when none is confident)."""
    return set(d.labels[_confident(d, min_score)].tolist()) if len(d) else set()


def balanced_order(ids: Sequence[str], scores: np.ndarray, classes: Sequence[Iterable[int]], budget: int,
                   decay: float = 0.5) -> list[str]:
    """Greedy pick of ``budget`` ids by score, discounting classes already picked (diversity term).

    An image's effective score is ``score × decay ** m`` with ``m`` the mean number of times its predicted classes
    were already picked (``m = 0`` for an image with no predicted class). ``decay = 1`` is a plain top-``budget``.
    """
    ids, s = list(ids), np.asarray(scores, np.float64)
    cls = [set(c) for c in classes]
    counts: dict[int, int] = {}
    left, out = list(range(len(ids))), []
    while left and len(out) < budget:
        eff = [s[i] * decay ** (np.mean([counts.get(c, 0) for c in cls[i]]) if cls[i] else 0.0) for i in left]
        k = left.pop(int(np.argmax(eff)))
        out.append(ids[k])
        for c in cls[k]:
            counts[c] = counts.get(c, 0) + 1
    return out


__all__ = ["Detections", "MIN_SCORE", "MATCH_IOU", "UNMATCHED", "unflip", "box_iou", "normalized_entropy",
           "image_uncertainty", "uncertainty_scores", "symmetric_kl", "match_boxes", "image_inconsistency",
           "inconsistency_scores", "cascade_select", "rank_normalize", "weighted_scores", "predicted_classes",
           "balanced_order"]
