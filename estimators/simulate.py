"""Replay a data-collection campaign against a ground-truth learning curve, for any policy.

The ground truth is a full measured curve, interpolated linearly in log n (:func:`estimators.curves.interpolate_curve`).
A campaign starts from the points up to ``n0``, asks the policy for a cumulative total each round, "trains" (reads
the truth at that total), and stops when the target is met or the rounds are spent. The oracle collects exactly the
true requirement ``n*``; ``cost_ratio = collected cost / oracle cost − 1`` (0 is perfect, meaningful on successes).

Policies: :class:`estimators.requirement.EstimatePolicy` (naive estimator, or estimator + τ) and
:class:`estimators.loc.LOCPlanner` (LOC) — anything with ``next_total(n, y, target, *, rounds_left, max_total)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from estimators.curves import LearningCurve, interpolate_curve, true_required_n
from estimators.requirement import multi_round


@dataclass
class SimResult:
    """One replayed campaign. Costs are in the policy's currency (cost per sample × samples)."""

    success: bool
    rounds_used: int
    total_cost: float
    oracle_cost: float
    cost_ratio: float
    n_star: float
    totals: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def simulate(truth: LearningCurve, policy, *, target: float, n0: float, rounds: int, cost: float = 1.0,
             penalty: float = 0.0, max_total: float | None = None) -> SimResult:
    """Replay one campaign.

    Parameters
    ----------
    truth : LearningCurve
        The full curve; sizes beyond its largest cannot be measured, so ``max_total`` defaults to (and is capped at)
        its largest size.
    target : float
        Score percent (see :meth:`LearningCurve.score_target`).
    n0 : float
        The campaign starts with the truth's points at sizes <= n0 (at least 3 needed).
    penalty : float
        Added to ``total_cost`` on failure (``cost_ratio`` ignores it).

    Returns
    -------
    SimResult

    Raises
    ------
    ValueError
        Fewer than 3 starting points, or a target the truth never reaches.
    """
    keep = truth.n <= n0
    if keep.sum() < 3:
        raise ValueError(f"simulate: need >= 3 truth points at n <= {n0:g}, got {int(keep.sum())}")
    n_star = true_required_n(truth, target)
    if not math.isfinite(n_star):
        raise ValueError(f"simulate: the truth curve {truth.name!r} never reaches target {target:g}")
    start = float(truth.n[keep][-1])
    cap = min(max_total or truth.n[-1], truth.n[-1])
    res = multi_round(lambda q: float(interpolate_curve(truth, q)), truth.n[keep], truth.score()[keep], target,
                      rounds=rounds, policy=policy, max_total=cap)
    collected = (res.totals[-1] - start) if res.totals else 0.0
    oracle = cost * max(n_star - start, 0.0)
    total = cost * collected + (0.0 if res.success else penalty)
    ratio = cost * collected / oracle - 1.0 if oracle > 0 else math.nan
    return SimResult(success=res.success, rounds_used=res.rounds_used, total_cost=total, oracle_cost=oracle,
                     cost_ratio=float(ratio), n_star=float(n_star), totals=list(res.totals))


def summarize(results: list[SimResult]) -> dict[str, float]:
    """Failure rate, median and mean cost ratio on successful runs, mean rounds used."""
    ok = [r for r in results if r.success]
    ratios = np.array([r.cost_ratio for r in ok]) if ok else np.array([math.nan])
    return {"runs": len(results), "failure_rate": 1.0 - len(ok) / max(len(results), 1),
            "cost_ratio_median": float(np.median(ratios)), "cost_ratio_mean": float(np.mean(ratios)),
            "rounds_mean": float(np.mean([r.rounds_used for r in results])) if results else math.nan}
