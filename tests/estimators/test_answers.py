"""What kind of answer an estimate is: estimate, open-ended, unreachable, reached, or a curve that gets worse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.curves import make_curve
from estimators.errors import EstimatorInputError
from estimators.laws import get_law
from estimators.loc import plan_collection
from estimators.prior import load_prior
from estimators.profile import log_profile, log_required_n
from estimators.requirement import bootstrap_required_n, estimate_requirement

N = np.array([100, 200, 400, 800, 1600, 3200.0])
# levels off at 80: a power law fitted to it puts its plateau near 80
PLATEAU = make_curve(N, 80 - 200 * N ** -0.5 + np.random.default_rng(0).normal(0, 0.3, len(N)), name="plateau")


def test_plateau_just_under_target_is_open_ended_not_unreachable():
    r = estimate_requirement(PLATEAU, 80.3, law="power", n_boot=200)
    assert r.status == "open"
    assert math.isfinite(r.required_n) and r.required_n > N[-1]
    assert r.interval[1] == math.inf and math.isfinite(r.interval[0])
    assert "bootstrap" in r.reason and "unreachable" not in r.reason
    d = r.to_dict()
    assert d["status"] == "open" and d["interval"][1] is None and d["required_n"] is not None


def test_unreachable_only_when_the_interval_excludes_the_target():
    r = estimate_requirement(PLATEAU, 85.0, law="power", n_boot=200)
    assert r.status == "unreachable" and r.required_n == math.inf
    assert r.interval == (math.inf, math.inf) and "interval excludes the target" in r.reason


def test_a_curve_that_falls_gets_a_direction_hint_not_n_1():
    c = make_curve([10, 20, 40, 80], [80, 70, 60, 50], name="falls")
    r = estimate_requirement(c, 90, n_boot=20)
    assert r.status == "worse" and r.required_n == math.inf
    assert "gets worse with more data" in r.reason and "--direction lower" in r.reason
    lower = make_curve([10, 20, 40, 80], [80, 70, 60, 50], direction="lower")
    r = estimate_requirement(lower, 45, n_boot=20)  # as an error the same numbers improve
    assert r.status == "estimate" and r.required_n > 80


def test_rising_error_curve_suggests_direction_higher():
    c = make_curve([10, 20, 40, 80], [50, 60, 70, 80], direction="lower")
    r = estimate_requirement(c, 10, n_boot=20)
    assert r.status == "worse" and "--direction higher" in r.reason


def test_target_met_within_the_data_is_reached_never_below_the_smallest_size():
    c = make_curve([100, 200, 400, 800], [60, 70, 75, 78])
    r = estimate_requirement(c, 50, n_boot=20)
    assert r.status == "reached" and r.required_n == 100 and r.additional_n == 0
    r = estimate_requirement(c, 72, n_boot=20)
    assert r.status == "reached" and 200 < r.required_n < 400


def test_no_answer_is_below_the_smallest_measured_size():
    rng = np.random.default_rng(3)
    prior = load_prior().selection
    for _ in range(8):
        y = np.sort(rng.uniform(40, 80, 5))
        c = make_curve([10, 20, 40, 80, 160], y)
        r = estimate_requirement(c, float(y[-1]) + rng.uniform(0.1, 5), n_boot=20, selection=prior)
        assert r.status in ("estimate", "open", "unreachable")
        assert not r.required_n < 160 and not r.interval[0] < 160


def test_target_outside_the_range_is_a_user_error():
    with pytest.raises(EstimatorInputError, match="outside the percent range"):
        estimate_requirement(PLATEAU, 120, n_boot=10)


def test_loc_plans_for_open_and_unreachable_curves():
    open_plan = plan_collection(PLATEAU, 80.3, risk=0.1, rounds=3, n_boot=100, max_total=1e6)
    assert len(open_plan.totals) == 3 and open_plan.totals[-1] <= 1e6
    assert open_plan.status == "open" and "open upper bound" in open_plan.note
    assert plan_collection(PLATEAU, 79.0, risk=0.1, n_boot=100).status == "plan"
    far = plan_collection(PLATEAU, 99.0, risk=0.1, rounds=3, n_boot=100)
    assert far.status == "unreachable" and "unreachable" in far.note
    falls = plan_collection(make_curve([10, 20, 40, 80], [80, 70, 60, 50]), 90, risk=0.1, n_boot=20)
    assert falls.status == "worse" and "--direction lower" in falls.note and falls.amounts == [0.0, 0.0, 0.0]


def test_log_profile_recovers_an_exact_log_law_and_its_bootstrap_collapses():
    n = np.geomspace(100, 3000, 8)
    y = 5 * np.log(n + 50) + 20
    x = n / n[-1]
    a, b, c = log_profile(x, y[None, :], np.ones(len(n)))
    fit = a[0] * np.log(x + b[0]) + c[0]
    np.testing.assert_allclose(fit, y, atol=1e-3)
    target = float(5 * np.log(20000 + 50) + 20)
    assert log_required_n(a, b, c, n[-1], target)[0] == pytest.approx(20000, rel=1e-2)
    draws = bootstrap_required_n(n, y, target, law="log", n_boot=20)
    np.testing.assert_allclose(draws, get_law("log").fit(n, y).required_n(target), rtol=2e-2)
