"""Bootstrap intervals, selection, the correction factor τ, the multi-round protocol, the simulator."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from estimators.curves import make_curve
from estimators.requirement import (Correction, EstimatePolicy, bootstrap_required_n, estimate_requirement,
                                    interval, learn_correction, make_task, multi_round, select_law)
from estimators.simulate import simulate, summarize


def power(n, a=-300.0, b=-0.4, c=90.0):
    return a * np.asarray(n, float) ** b + c


def test_bootstrap_interval_covers_truth_at_roughly_nominal_rate():
    n = np.geomspace(100, 3000, 8)
    target = float(power(20000))
    rng = np.random.default_rng(0)
    hits = []
    for i in range(25):
        y = power(n) + rng.normal(0, 0.3, len(n))
        draws = bootstrap_required_n(n, y, target, law="power", n_boot=60, seed=i)
        _, lo, hi = interval(draws, 0.8)
        hits.append(lo <= 20000 <= hi)
    assert 0.55 <= np.mean(hits) <= 1.0


def test_bootstrap_without_noise_collapses_on_truth():
    n = np.geomspace(100, 3000, 8)
    draws = bootstrap_required_n(n, power(n), float(power(20000)), n_boot=20, method="pairs")
    np.testing.assert_allclose(draws, 20000, rtol=1e-3)


def test_select_law_prefers_the_generating_law():
    n = np.geomspace(100, 20000, 12)
    y = 5 * np.log(n + 50) + 20
    name, errs = select_law(n, y, laws=["power", "log", "arctan"])
    assert name == "log" and errs["log"] < 1e-6
    assert select_law(n[:3], y[:3])[0] == "power"  # too few points: default


def test_correction_learns_the_underestimate_factor():
    # curves whose true requirement is always 3x further than a power-law fit of the prefix says
    rng = np.random.default_rng(0)
    tasks = []
    for _ in range(10):
        a = rng.uniform(-400, -200)
        full_n = np.geomspace(100, 1e5, 25)
        c = make_curve(full_n, power(full_n, a=a))
        t = make_task(c, fraction=0.1, margin=1.0)
        exact = ((t.target - 90.0) / a) ** (1 / -0.4)
        tasks.append(dataclasses.replace(t, n_star=t.n[-1] + 3 * (exact - t.n[-1])))
    corr = learn_correction(tasks, law="power")
    assert corr.tau == pytest.approx(3.0, rel=1e-3) and corr.n_curves == 10
    assert corr.apply(2000.0, 1000.0) == pytest.approx(1000 + 3 * 1000)
    assert corr.apply(math.inf, 1000.0) == math.inf


def test_estimate_requirement_result_and_unreachable_reason():
    n = np.geomspace(100, 3000, 8)
    c = make_curve(n, power(n), name="cls")
    r = estimate_requirement(c, float(power(20000)), law="power", n_boot=20)
    assert r.required_n == pytest.approx(20000, rel=1e-3)
    assert r.interval[0] <= r.required_n <= r.interval[1]
    d = r.to_dict()
    assert {"curve", "required_n", "interval", "law"} <= set(d) and d["curve"] == "cls"
    r = estimate_requirement(c, 95.0, law="power", n_boot=10)
    assert r.required_n == math.inf and r.to_dict()["required_n"] is None and "never reaches" in r.reason
    r = estimate_requirement(c, float(power(20000)), law="power", n_boot=10, correction=Correction(tau=2.0))
    assert r.required_n == pytest.approx(3000 + 2 * 17000, rel=1e-3)


def test_estimate_requirement_on_error_curves_and_bad_target():
    n = np.geomspace(100, 3000, 8)
    c = make_curve(n, (100 - power(n)) / 100, direction="lower", scale="fraction")
    r = estimate_requirement(c, (100 - float(power(20000))) / 100, law="power", n_boot=10)
    assert r.required_n == pytest.approx(20000, rel=1e-3)
    with pytest.raises(ValueError, match="outside the fraction range"):
        estimate_requirement(c, 5.0, n_boot=10)


def test_multi_round_stops_when_target_met():
    n = np.geomspace(100, 1000, 5)
    res = multi_round(lambda q: float(power(q)) + 1e-9, n, power(n), float(power(20000)), rounds=3)
    assert res.success and res.rounds_used == 1 and res.totals[0] == pytest.approx(20000, rel=1e-3)


def test_simulator_reports_oracle_ratio_and_failures():
    full = np.geomspace(100, 1e5, 30)
    truth = make_curve(full, power(full))
    target = float(power(20000))
    ok = simulate(truth, EstimatePolicy(correction=Correction(tau=1.05)), target=target, n0=1000, rounds=1)
    assert ok.success and 0 <= ok.cost_ratio < 0.06

    class Timid:
        def next_total(self, n, y, target, *, rounds_left, max_total):
            return float(n[-1]) * 1.5

    bad = simulate(truth, Timid(), target=target, n0=1000, rounds=2, penalty=1e6)
    assert not bad.success and bad.rounds_used == 2 and bad.total_cost > 1e6
    s = summarize([ok, bad])
    assert s["failure_rate"] == 0.5 and s["runs"] == 2


def test_a_law_that_cannot_fit_the_curve_is_skipped_not_fatal():
    """Regression (demo with a 6-second backbone): a 0%-accuracy point is outside m4's domain (error < e0 = 100);
    the other laws still estimate, m4's row says why, and asking for m4 itself is a clear error."""
    n = np.geomspace(50, 1600, 6)
    y = np.array([0.0, 21.0, 36.0, 46.0, 52.0, 56.0])
    c = make_curve(n, y, name="collapsed")
    r = estimate_requirement(c, 60.0, law="auto", n_boot=10)
    assert r.law != "m4" and math.isfinite(r.required_n) and r.required_n > 1600
    m4 = next(row for row in r.per_law if row["law"] == "m4")
    assert m4["required_n"] == math.inf and "cannot fit" in m4["reason"]
    with pytest.raises(ValueError, match="'collapsed': m4 cannot fit this curve"):
        estimate_requirement(c, 60.0, law="m4", n_boot=10)


def test_bootstrap_curves_band_around_the_fit():
    """The display band: exact data gives identical resampled curves; noisy data spreads them around the fit."""
    from estimators.laws import get_law
    from estimators.requirement import bootstrap_curves

    n = np.array([10, 20, 40, 80, 160, 320.0])
    exact = 90 - 60 * n ** -0.5
    grid = np.array([50.0, 500.0, 5000.0])
    rows = bootstrap_curves(n, exact, grid, law="power", n_boot=8, seed=1)
    assert rows.shape == (8, 3) and np.ptp(rows, axis=0).max() < 1e-3
    noisy = exact + np.array([1.5, -1.2, 0.8, -1.6, 1.1, -0.7])
    rows = bootstrap_curves(n, noisy, grid, law="power", n_boot=40, seed=1)
    fit = get_law("power").fit(n, noisy).predict(grid)
    lo, hi = np.quantile(rows, [0.05, 0.95], axis=0)
    assert np.all(np.ptp(rows, axis=0) > 0.05) and np.all((lo <= fit) & (fit <= hi))
    assert np.array_equal(rows, bootstrap_curves(n, noisy, grid, law="power", n_boot=40, seed=1))
