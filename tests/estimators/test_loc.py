"""LOC: the requirement distribution, the schedule's monotone responses to cost and penalty, horizon, sources."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.curves import make_curve
from estimators.loc import (LOCPlanner, RequirementDistribution, Source, learn_distribution, optimize_schedule,
                            plan_collection)
from estimators.requirement import multi_round

# F: log-normal requirement around 10,000 samples, current size 1,000
DIST = RequirementDistribution(log_draws=np.log(10000) + 0.5 * np.random.default_rng(0).standard_normal(400),
                               p_finite=1.0, bandwidth=0.1, n0=1000.0)


def test_distribution_cdf_is_truncated_monotone_and_centered():
    q = np.geomspace(100, 1e6, 50)
    f = DIST.cdf(q)
    assert np.all(np.diff(f) >= 0) and f[0] == 0 and f[-1] == pytest.approx(1, abs=1e-6)
    assert DIST.cdf(10000.0) == pytest.approx(0.5, abs=0.05)
    assert DIST.quantile(0.5) == pytest.approx(10000, rel=0.1)


def test_loc_collects_more_when_penalty_rises():
    finals = [optimize_schedule(DIST, cost=1.0, penalty=p, rounds=3, max_total=1e6).totals[-1]
              for p in (1e3, 1e4, 1e5, 1e6)]
    assert all(a <= b for a, b in zip(finals, finals[1:])) and finals[0] < finals[-1]


def test_loc_collects_less_when_cost_rises():
    finals = [optimize_schedule(DIST, cost=c, penalty=1e5, rounds=3, max_total=1e6).totals[-1]
              for c in (0.5, 2.0, 8.0, 32.0)]
    assert all(a >= b for a, b in zip(finals, finals[1:])) and finals[0] > finals[-1]


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_loc_never_plans_past_the_horizon(rounds):
    plan = optimize_schedule(DIST, cost=1.0, penalty=1e12, rounds=rounds, max_total=20000.0)
    assert len(plan.totals) == rounds
    assert max(plan.totals) <= 20000.0 * (1 + 1e-12)
    assert np.all(np.diff([1000.0] + plan.totals) >= 0)
    np.testing.assert_allclose(np.cumsum(plan.amounts) + 1000.0, plan.totals)


def test_risk_constraint_is_met_or_explained():
    plan = optimize_schedule(DIST, cost=1.0, risk=0.05, rounds=3, max_total=1e6)
    assert plan.risk <= 0.05 and plan.note is None
    plan = optimize_schedule(DIST, cost=1.0, risk=0.05, rounds=3, max_total=5000.0)
    assert plan.totals[-1] == pytest.approx(5000.0) and "not reachable" in plan.note


def test_more_rounds_never_cost_more():
    costs = [optimize_schedule(DIST, cost=1.0, penalty=1e5, rounds=t, max_total=1e6).expected_cost
             for t in (1, 2, 4)]
    assert costs[0] >= costs[1] >= costs[2]


def test_multi_source_buys_cheapest_effective_data_first():
    cheap = Source("unlabeled", cost=0.1, value=0.25, available=8000)   # 0.4 per effective sample, 2000 eff.
    labeled = Source("labeled", cost=1.0)
    plan = optimize_schedule(DIST, penalty=1e5, rounds=2, max_total=1e6, sources=[labeled, cheap])
    first = plan.per_source[0]
    assert first["unlabeled"] == pytest.approx(min(8000, plan.amounts[0] * 4))
    assert sum(s["unlabeled"] for s in plan.per_source) <= 8000 + 1e-6


def test_planner_contract_and_validation():
    n = np.geomspace(100, 1000, 6)
    y = 90 - 300 * n ** -0.4
    p = LOCPlanner(cost=1.0, penalty=1e5, rounds=2, n_boot=20)
    assert p.fit(n, y, 80.0) is p and len(p.plan_.totals) == 2
    with pytest.raises(ValueError, match="exactly one"):
        LOCPlanner(cost=1.0, rounds=2).fit(n, y, 80.0)
    with pytest.raises(ValueError, match="risk must be in"):
        LOCPlanner(risk=2.0).fit(n, y, 80.0)
    with pytest.raises(ValueError, match="rounds"):
        LOCPlanner(penalty=1.0, rounds=0).fit(n, y, 80.0)


def test_learned_distribution_centers_on_the_requirement():
    n = np.geomspace(100, 3000, 8)
    y = 90 - 300 * n ** -0.4 + np.random.default_rng(0).normal(0, 0.2, 8)
    target = 90 - 300 * 20000 ** -0.4
    dist = learn_distribution(n, y, target, n_boot=60)
    assert 8000 < dist.quantile(0.5) < 50000


def test_plan_collection_result_and_errors():
    n = np.geomspace(100, 1000, 6)
    c = make_curve(n, 90 - 300 * n ** -0.4, name="x")
    plan = plan_collection(c, 80.0, cost=1.0, penalty=1e5, rounds=3, n_boot=20, max_total=1e5)
    d = plan.to_dict()
    assert d["curve"] == "x" and len(d["amounts"]) == 3 and 0 <= d["risk"] <= 1 and max(d["totals"]) <= 1e5
    with pytest.raises(ValueError, match="already reaches"):
        plan_collection(c, 50.0, penalty=1.0, n_boot=5)
    with pytest.raises(ValueError, match="below the current size"):
        plan_collection(c, 80.0, penalty=1.0, max_total=10, n_boot=5)


def test_loc_replans_each_round_in_multi_round():
    n = np.geomspace(100, 1000, 6)
    truth = lambda q: float(90 - 300 * q ** -0.4)  # noqa: E731
    res = multi_round(truth, n, [truth(v) for v in n], truth(20000), rounds=3, max_total=1e5,
                      policy=LOCPlanner(cost=1.0, penalty=1e6, rounds=3, n_boot=20))
    assert res.success and all(t <= 1e5 for t in res.totals)
