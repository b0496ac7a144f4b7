"""Replay a data-collection campaign against a ground-truth learning curve, for any policy.

The ground truth is a full measured curve, interpolated linearly in log n (:func:`estimators.curves.interpolate_curve`).
A campaign starts from the points up to ``n0``, asks the policy for a cumulative total each round (never above the
team's cap ``max_total``), "trains" (reads the truth at that total), and stops when the target is met or the rounds
are spent. The oracle collects exactly the true requirement ``n*``.

Sizes beyond the truth's largest point cannot be measured. A run whose policy asks for more than that is **not** a
free success: it stops there with ``beyond_truth=True`` and counts as neither success nor failure in
:func:`summarize`, which reports how often it happens. (When the cap handed to the policy is the truth's largest
size, the policy is told where the truth ends, and a run that ends at the cap succeeds whenever the truth reaches
the target there: ``at_cap`` marks those runs.)

Costs: ``cost_ratio = collected / oracle − 1`` (0 is perfect; reported on successful runs, as the NeurIPS'22 paper
does) and ``cost_ratio_all = (collected + penalty on failure) / oracle − 1`` (every measurable run, penalty counted).

Policies are registered by name (:func:`register_policy`, :func:`get_policy`, :func:`list_policies`): the naive
estimate, the estimate + τ, past-curve ``auto``, LOC and calibrated LOC, and the reference ``cap`` that collects up to
the cap in round 1 — the plan any estimator has to beat on cost. A policy is anything with
``next_total(n, y, target, *, rounds_left, max_total) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from estimators.curves import LearningCurve, interpolate_curve, true_required_n
from estimators.errors import EstimatorInputError


# ----------------------------------------------------------------------------------------------- policy registry
_POLICIES: dict[str, Callable] = {}


def register_policy(name: str) -> Callable:
    """Decorator: register a factory ``f(*, rounds, **cfg) -> policy`` under ``name``."""
    def deco(factory: Callable) -> Callable:
        _POLICIES[name] = factory
        return factory
    return deco


def list_policies() -> list[str]:
    """Names of the registered collection policies, in registration order."""
    return list(_POLICIES)


def get_policy(name: str, *, rounds: int = 3, **cfg):
    """A new policy by name, planned for ``rounds`` rounds. Raises :class:`EstimatorInputError` for an unknown name."""
    if name not in _POLICIES:
        raise EstimatorInputError(f"unknown policy {name!r}; choose from {', '.join(list_policies())}")
    return _POLICIES[name](rounds=rounds, **cfg)


@dataclass
class CollectToCap:
    """The reference policy: collect up to the cap in round 1 (it fails only when the cap itself is short)."""

    def next_total(self, n, y, target: float, *, rounds_left: int, max_total: float) -> float:
        return float(max_total)


@register_policy("cap")
def _cap(*, rounds: int, **cfg) -> CollectToCap:
    return CollectToCap()


@register_policy("power")
def _power(*, rounds: int, **cfg):
    from estimators.requirement import EstimatePolicy

    return EstimatePolicy(law="power")


@register_policy("power+tau")
def _power_tau(*, rounds: int, correction=None, **cfg):
    from estimators.requirement import EstimatePolicy

    return EstimatePolicy(law="power", correction=correction)


@register_policy("auto+tau")
def _auto(*, rounds: int, selection=None, **cfg):
    from estimators.requirement import EstimatePolicy

    return EstimatePolicy(law="auto", selection=selection)


@register_policy("loc")
def _loc(*, rounds: int, risk: float = 0.05, n_boot: int = 200, seed: int = 0, **cfg):
    from estimators.loc import LOCPlanner

    return LOCPlanner(rounds=rounds, risk=risk, n_boot=n_boot, seed=seed)


@register_policy("loc+past")
def _loc_past(*, rounds: int, correction=None, risk: float = 0.05, n_boot: int = 200, seed: int = 0, **cfg):
    from estimators.loc import LOCPlanner

    return LOCPlanner(rounds=rounds, risk=risk, n_boot=n_boot, seed=seed, correction=correction, calibrate="past")


# ----------------------------------------------------------------------------------------------- one campaign
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
    requested: list[float] = field(default_factory=list)
    at_cap: bool = False
    beyond_truth: bool = False
    cost_ratio_all: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


class _Recorder:
    """Wraps a policy: records what it asked for before the cap clamps it."""

    def __init__(self, policy):
        self.policy, self.requested = policy, []

    def next_total(self, n, y, target, *, rounds_left, max_total):
        q = float(self.policy.next_total(n, y, target, rounds_left=rounds_left, max_total=max_total))
        self.requested.append(q)
        return q


class _Beyond(Exception):
    pass


def simulate(truth: LearningCurve, policy, *, target: float, n0: float, rounds: int, cost: float = 1.0,
             penalty: float = 0.0, max_total: float | None = None) -> SimResult:
    """Replay one campaign.

    Parameters
    ----------
    truth : LearningCurve
        The full curve; it can be measured only up to its largest size.
    policy : object with ``next_total``
        See the module docstring (or :func:`get_policy`).
    target : float
        Score percent (see :meth:`LearningCurve.score_target`).
    n0 : float
        The campaign starts with the truth's points at sizes <= n0 (at least 3 needed).
    penalty : float
        Cost of missing the target after the last round; in ``total_cost`` and ``cost_ratio_all`` on failure.
    max_total : float, optional
        The team's cap on the total (default: the truth's largest size). Requests above the truth's largest size
        end the run with ``beyond_truth=True``.

    Returns
    -------
    SimResult

    Raises
    ------
    EstimatorInputError
        Fewer than 3 starting points, or a target the truth never reaches.
    """
    from estimators.requirement import multi_round

    keep = truth.n <= n0
    if keep.sum() < 3:
        raise EstimatorInputError(f"simulate: need >= 3 truth points at n <= {n0:g}, got {int(keep.sum())}")
    n_star = true_required_n(truth, target)
    if not math.isfinite(n_star):
        raise EstimatorInputError(f"simulate: the truth curve {truth.name!r} never reaches target {target:g}")
    start, n_max = float(truth.n[keep][-1]), float(truth.n[-1])
    cap = float(max_total) if max_total is not None else n_max

    def measure(q: float) -> float:
        if q > n_max * (1 + 1e-9):
            raise _Beyond
        return float(interpolate_curve(truth, q))

    rec = _Recorder(policy)
    beyond = False
    try:
        res = multi_round(measure, truth.n[keep], truth.score()[keep], target, rounds=rounds, policy=rec,
                          max_total=cap)
        success, totals = res.success, list(res.totals)
    except _Beyond:
        beyond, success = True, False
        totals = [min(max(q, start), cap) for q in rec.requested]
    collected = (totals[-1] - start) if totals else 0.0
    oracle = cost * max(n_star - start, 0.0)
    failed = not success and not beyond
    total = cost * collected + (penalty if failed else 0.0)
    ratio = cost * collected / oracle - 1.0 if oracle > 0 else math.nan
    ratio_all = total / oracle - 1.0 if oracle > 0 and not beyond else math.nan
    return SimResult(success=success, rounds_used=len(totals), total_cost=total, oracle_cost=oracle,
                     cost_ratio=float(ratio), n_star=float(n_star), totals=totals, requested=rec.requested,
                     at_cap=bool(totals) and totals[-1] >= cap * (1 - 1e-9), beyond_truth=beyond,
                     cost_ratio_all=float(ratio_all))


def summarize(results: list[SimResult]) -> dict[str, float]:
    """Rates and costs over replayed campaigns.

    ``failure_rate`` is over measurable runs (those that never asked beyond the truth); ``beyond_share`` is the
    share of all runs that asked beyond it (not counted as successes); ``at_cap_share`` the share that ended at
    the cap.
    ``cost_ratio_*`` are over successful runs; ``cost_all_*`` over measurable runs with the penalty counted.
    """
    meas = [r for r in results if not r.beyond_truth]
    ok = [r for r in meas if r.success]
    ratios = np.array([r.cost_ratio for r in ok]) if ok else np.array([math.nan])
    alls = np.array([r.cost_ratio_all for r in meas]) if meas else np.array([math.nan])
    k = max(len(results), 1)
    return {"runs": len(results), "failure_rate": 1.0 - len(ok) / len(meas) if meas else math.nan,
            "beyond_share": 1.0 - len(meas) / k,
            "at_cap_share": sum(r.at_cap for r in results) / k,
            "cost_ratio_median": float(np.median(ratios)), "cost_ratio_mean": float(np.mean(ratios)),
            "cost_all_median": float(np.median(alls)), "cost_all_mean": float(np.mean(alls)),
            "rounds_mean": float(np.mean([r.rounds_used for r in results])) if results else math.nan}
