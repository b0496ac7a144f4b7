"""The LOC dynamic program checked against brute-force enumeration of every schedule on a small grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from estimators.loc import RequirementDistribution, optimize_schedule


def _grid(n0: float, max_total: float, grid_size: int) -> np.ndarray:
    """The totals the DP may choose (the same grid :func:`optimize_schedule` builds)."""
    grid = np.concatenate([[n0], np.geomspace(n0 * 1.001, max(max_total, n0 * 1.002), grid_size - 1)])
    return grid[grid <= max(max_total, n0)]


def _objective(dist, totals, cost, penalty):
    prev = [dist.n0, *totals[:-1]]
    paid = sum(cost * (q - p) * (1 - float(dist.cdf(p))) for q, p in zip(totals, prev))
    return paid + (penalty or 0.0) * (1 - float(dist.cdf(totals[-1])))


def _dist(seed: int, p_finite: float = 0.9) -> RequirementDistribution:
    rng = np.random.default_rng(seed)
    return RequirementDistribution(log_draws=np.log(rng.uniform(150, 2000, size=40)), p_finite=p_finite,
                                   bandwidth=0.3, n0=100.0)


@pytest.mark.parametrize("seed,rounds,penalty", [(0, 1, 5_000.0), (1, 2, 5_000.0), (2, 3, 20_000.0),
                                                 (3, 3, 300.0)])
def test_dp_with_a_penalty_equals_brute_force_enumeration(seed, rounds, penalty):
    dist, cost, cap, size = _dist(seed), 1.0, 3000.0, 9
    plan = optimize_schedule(dist, cost=cost, penalty=penalty, rounds=rounds, max_total=cap, grid_size=size)
    grid = _grid(dist.n0, cap, size)
    best = min(_objective(dist, s, cost, penalty)
               for s in itertools.combinations_with_replacement(grid.tolist(), rounds))
    assert plan.expected_cost == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert _objective(dist, plan.totals, cost, penalty) == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert plan.totals == sorted(plan.totals) and all(t in grid for t in plan.totals)


@pytest.mark.parametrize("seed,rounds,risk", [(4, 2, 0.3), (5, 3, 0.15), (6, 1, 0.5)])
def test_dp_with_a_risk_constraint_equals_brute_force_enumeration(seed, rounds, risk):
    dist, cost, cap, size = _dist(seed, p_finite=1.0), 2.0, 3000.0, 9
    plan = optimize_schedule(dist, cost=cost, risk=risk, rounds=rounds, max_total=cap, grid_size=size)
    grid = _grid(dist.n0, cap, size)
    feasible = [s for s in itertools.combinations_with_replacement(grid.tolist(), rounds)
                if 1 - float(dist.cdf(s[-1])) <= risk]
    assert feasible, "the test grid must allow the risk"
    best = min(_objective(dist, s, cost, None) for s in feasible)
    assert plan.expected_cost == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert plan.risk <= risk + 1e-12
