"""Acquisition strategies in one registry: ``register_strategy`` / ``list_strategies`` / ``get_strategy``.

A strategy picks at most ``budget`` image ids from a :class:`Candidates` set (the unlabeled pool only: labeled
images are never in it), using the saved predictions on each image and on its flip and/or backbone embeddings.

* ``random``: a seeded uniform sample (the baseline every other strategy must beat);
* ``entropy``: the top images by normalised-entropy uncertainty;
* ``coreset``: k-center greedy on the images' backbone embeddings (mean-pooled trunk maps), starting from the
  labeled set (Sener & Savarese 2018);
* ``uncertainty_robustness``: the cascade (top 3×budget by uncertainty, then the budget by flip inconsistency)
  with the class-balance term, so one frequent class does not take the budget;
* ``weighted``: the weighted sum of rank-normalised uncertainty and inconsistency, class-balanced.

:func:`select` puts a priority list (a targeted-selection result) first in line, then lets the strategy fill the
rest of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from actors.active.scores import (Detections, balanced_order, cascade_select, inconsistency_scores,
                                  predicted_classes, uncertainty_scores, weighted_scores)

Strategy = Callable[..., list[str]]
_STRATEGIES: dict[str, Strategy] = {}


@dataclass
class Candidates:
    """The unlabeled pool a strategy chooses from: ``ids`` (fixed order), predictions on each image and on its
    flip (original frame), and optional embeddings (``embeddings`` N×D for ``ids``, ``labeled_embeddings`` L×D)."""

    ids: list[str]
    preds: dict[str, Detections] = field(default_factory=dict)
    flipped: dict[str, Detections] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator: register ``fn(candidates, budget, rng, **cfg) -> list of ids`` under ``name``."""
    def deco(fn: Strategy) -> Strategy:
        _STRATEGIES[name] = fn
        return fn
    return deco


def list_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; ValueError naming the known ones otherwise."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(list_strategies())}")
    return _STRATEGIES[name]


@register_strategy("random")
def random_strategy(c: Candidates, budget: int, rng: np.random.Generator, **_: object) -> list[str]:
    k = min(budget, len(c.ids))
    return [c.ids[i] for i in sorted(rng.choice(len(c.ids), size=k, replace=False))] if k > 0 else []


@register_strategy("entropy")
def entropy_strategy(c: Candidates, budget: int, rng: np.random.Generator, **_: object) -> list[str]:
    u = uncertainty_scores(c.preds, c.ids)
    return [c.ids[i] for i in np.argsort(-u, kind="stable")[:max(0, budget)]]


def k_center_greedy(x: np.ndarray, centers: np.ndarray | None, budget: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``budget`` rows of ``x`` (N×D) chosen greedily to minimise the largest distance to a centre.

    Starts from ``centers`` (L×D, the labeled set); with none, from a random row.
    """
    if budget <= 0 or not len(x):
        return []
    if centers is not None and len(centers):
        d = min_sq_distance(x, centers)  # N
        picks = []
    else:
        first = int(rng.integers(len(x)))
        picks = [first]
        d = ((x - x[first]) ** 2).sum(1)
    while len(picks) < min(budget, len(x)):
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(1))
    return picks


CHUNK = 1 << 22  # elements of one block of pairwise differences in min_sq_distance (32 MiB of float64)


def min_sq_distance(x: np.ndarray, centers: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """Squared Euclidean distance of each row of ``x`` (N×D) to its nearest row of ``centers`` (L×D): shape N.

    Computed in blocks of rows × centres holding at most ``chunk`` differences (never the N×L×D array: 10k pool
    images × 1k labelled × 40 dims would be 3.2 GB); the same arithmetic as the one-shot form, so the same result.
    """
    n, dim = x.shape
    rows = max(1, min(n, chunk // max(1, dim)))  # r rows × c centres × D <= chunk
    cols = max(1, min(len(centers), chunk // max(1, rows * dim)))
    out = np.full(n, np.inf, dtype=np.result_type(x, centers))
    for i in range(0, n, rows):
        xi = x[i:i + rows, None, :]  # r×1×D
        for j in range(0, len(centers), cols):
            block = ((xi - centers[None, j:j + cols]) ** 2).sum(-1)  # r×c
            np.minimum(out[i:i + rows], block.min(axis=1), out=out[i:i + rows])
    return out


@register_strategy("coreset")
def coreset_strategy(c: Candidates, budget: int, rng: np.random.Generator, **_: object) -> list[str]:
    if c.embeddings is None:
        raise ValueError("coreset needs backbone embeddings of the candidates")
    return [c.ids[i] for i in k_center_greedy(np.asarray(c.embeddings, np.float64),
                                              None if c.labeled_embeddings is None
                                              else np.asarray(c.labeled_embeddings, np.float64), budget, rng)]


def _classes(c: Candidates) -> list[set[int]]:
    return [predicted_classes(c.preds[i]) if i in c.preds else set() for i in c.ids]


@register_strategy("uncertainty_robustness")
def uncertainty_robustness_strategy(c: Candidates, budget: int, rng: np.random.Generator, *, factor: float = 3.0,
                                    decay: float = 0.5, **_: object) -> list[str]:
    u = uncertainty_scores(c.preds, c.ids)
    r = inconsistency_scores(c.preds, c.flipped, c.ids)
    short = cascade_select(c.ids, u, r, max(1, int(np.ceil(factor * budget))), factor=1.0) if budget > 0 else []
    pos = {i: k for k, i in enumerate(c.ids)}
    idx = [pos[i] for i in short]
    cls = _classes(c)
    return balanced_order([c.ids[k] for k in idx], r[idx], [cls[k] for k in idx], budget, decay)


@register_strategy("weighted")
def weighted_strategy(c: Candidates, budget: int, rng: np.random.Generator, *, weight: float = 0.5,
                      decay: float = 0.5, **_: object) -> list[str]:
    s = weighted_scores(uncertainty_scores(c.preds, c.ids), inconsistency_scores(c.preds, c.flipped, c.ids), weight)
    return balanced_order(c.ids, s, _classes(c), budget, decay)


def select(name: str, c: Candidates, budget: int, rng: np.random.Generator, *, priority: list[str] | None = None,
           **cfg: object) -> list[str]:
    """At most ``budget`` distinct ids of ``c.ids``: those of ``priority`` first (in order), then the strategy's."""
    fn = get_strategy(name)
    allowed = set(c.ids)
    first = list(dict.fromkeys(i for i in (priority or []) if i in allowed))[:max(0, budget)]
    rest = budget - len(first)
    if rest <= 0:
        return first
    taken = set(first)
    left = [i for i in c.ids if i not in taken]
    keep = np.array([i not in taken for i in c.ids], bool)
    sub = Candidates(left, c.preds, c.flipped, None if c.embeddings is None else c.embeddings[keep],
                     c.labeled_embeddings)
    picked = [i for i in fn(sub, rest, rng, **cfg) if i in allowed and i not in taken]
    return first + list(dict.fromkeys(picked))[:rest]


__all__ = ["Candidates", "register_strategy", "list_strategies", "get_strategy", "select", "k_center_greedy"]
