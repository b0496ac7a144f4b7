"""Past-curve law selection, the vectorized power-law bootstrap, and LOC's calibration by past curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.curves import make_curve
from estimators.laws import get_law
from estimators.profile import power_profile, power_required_n
from estimators.loc import LOCPlanner, calibrate_draws, learn_distribution
from estimators.requirement import (
    Correction,
    EstimatePolicy,
    Selection,
    bootstrap_required_n,
    estimate_requirement,
    learn_selection,
    make_task,
    point_estimate,
    selection_from_estimates,
)

SIZES = np.geomspace(50, 50_000, 22)


def _power_tasks(k=20, seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for _ in range(k):
        a, b, c = -rng.uniform(50, 150), -rng.uniform(0.25, 0.45), rng.uniform(85, 95)
        y = a * SIZES ** b + c + rng.normal(0, 0.05, len(SIZES))
        tasks.append(make_task(make_curve(SIZES, y), fraction=0.1, margin=0.5))
    return [t for t in tasks if t is not None]


def test_past_curve_selection_chooses_the_generating_law():
    tasks = _power_tasks()
    assert len(tasks) >= 8
    sel = learn_selection(tasks, laws=["log", "power", "arctan"])
    assert sel.law == "power"
    assert sel.errors["power"] < sel.errors["log"]
    assert set(sel.corrections) == {"log", "power", "arctan"}
    assert abs(math.log(sel.corrections["power"].tau)) < 0.3  # the generating law needs little correction


def test_selection_falls_back_when_the_best_law_is_unreachable():
    sel = Selection(ranking=("power", "log"), errors={"power": 0.1, "log": 0.2},
                    corrections={"power": Correction(tau=1.0), "log": Correction(tau=2.0, law="log")})
    n, law, note = sel.combine({"power": math.inf, "log": 300.0}, 100.0)
    assert (n, law) == (500.0, "log") and "fell back to log" in note
    n, law, note = sel.combine({"power": 50.0, "log": math.inf}, 100.0)  # <= n0 is not usable either
    assert law == "power" and n == 50.0 and note
    med = Selection(ranking=("power", "log"), errors={}, how="median",
                    corrections={"power": Correction(tau=1.0), "log": Correction(tau=1.0, law="log")})
    assert med.combine({"power": 200.0, "log": 400.0}, 100.0)[0] == pytest.approx(300.0)


def test_selection_from_estimates_ranks_by_corrected_error_and_counts_unreachable():
    n0 = np.full(6, 100.0)
    n_star = np.full(6, 1000.0)
    est = {"scaled": np.full(6, 550.0),                       # always half the extra data: τ = 2 fixes it
           "noisy": np.array([900, 1100, 500, 2000, 1000, 1000.0]),
           "never": np.array([np.inf] * 4 + [1000.0, 1000.0])}
    sel = selection_from_estimates(est, n0, n_star)
    assert sel.ranking[0] == "scaled" and sel.ranking[-1] == "never"
    assert sel.corrections["scaled"].tau == pytest.approx(2.0)
    assert sel.errors["never"] == math.inf


def test_auto_with_a_selection_uses_the_ranked_law_and_its_tau():
    tasks = _power_tasks()
    sel = learn_selection(tasks, laws=["power", "log"])
    t = tasks[0]
    n_hat = get_law(sel.law).fit(t.n, t.y).required_n(t.target)
    want = sel.corrections[sel.law].apply(n_hat, t.n[-1])
    assert point_estimate(t.n, t.y, t.target, law="auto", selection=sel) == pytest.approx(want)
    assert EstimatePolicy(law="auto", selection=sel).next_total(t.n, t.y, t.target, rounds_left=1,
                                                                max_total=1e9) == pytest.approx(want)
    c = make_curve(t.n, t.y)
    r = estimate_requirement(c, t.target, law="auto", selection=sel, n_boot=10)
    assert r.law == sel.law and r.tau == sel.corrections[sel.law].tau and r.required_n == pytest.approx(want)
    assert set(r.selection_error) == {"power", "log"}


def test_power_profile_matches_the_least_squares_fit():
    rng = np.random.default_rng(3)
    n = np.geomspace(16, 2000, 14)
    y = 90 - 40 * n ** -0.5 + rng.normal(0, 0.3, len(n))
    law = get_law("power").fit(n, y)
    a, b, c = power_profile(n / n[-1], y[None, :], np.arange(1, 15) / 14)
    assert np.allclose([a[0], b[0], c[0]], law.p_, rtol=1e-2, atol=1e-2)
    assert power_required_n(a, b, c, n[-1], 88.0)[0] == pytest.approx(law.required_n(88.0), rel=1e-2)
    assert power_required_n(a, b, c, n[-1], 95.0)[0] == math.inf  # above the asymptote


def test_vectorized_power_bootstrap_centers_on_the_point_estimate():
    rng = np.random.default_rng(4)
    n = np.geomspace(16, 2000, 14)
    y = 90 - 40 * n ** -0.5 + rng.normal(0, 0.1, len(n))
    point = get_law("power").fit(n, y).required_n(89.5)
    draws = bootstrap_required_n(n, y, 89.5, n_boot=200, seed=0)
    assert draws.shape == (200,)
    assert np.median(draws) == pytest.approx(point, rel=0.2)


def test_tau_calibration_shifts_the_requirement_distribution():
    n = np.geomspace(16, 2000, 14)
    y = 90 - 40 * n ** -0.5
    plain = learn_distribution(n, y, 89.5, n_boot=50)
    shifted = learn_distribution(n, y, 89.5, n_boot=50, correction=Correction(tau=3.0), calibrate="tau")
    n0 = 2000.0
    m0, m1 = plain.quantile(0.5), shifted.quantile(0.5)
    assert m1 > m0
    assert (m1 - n0) == pytest.approx(3.0 * (m0 - n0), rel=0.1)


def test_past_ratio_calibration_widens_the_distribution():
    draws = np.array([3000.0, 3100.0, 2900.0, math.inf])
    corr = Correction(tau=1.0, log_ratios=(-1.0, 0.0, 1.0))
    out = calibrate_draws(draws, 2000.0, corr, mode="past")
    fin = out[np.isfinite(out)]
    assert fin.min() < 2500 and fin.max() > 4000
    assert np.mean(~np.isfinite(out)) == pytest.approx(0.25, abs=0.05)  # the unreachable share is kept
    with pytest.raises(ValueError, match="calibrate mode"):
        calibrate_draws(draws, 2000.0, corr, mode="nope")


def test_calibrated_loc_collects_more_when_past_curves_were_underestimated():
    n = np.geomspace(16, 2000, 14)
    y = 90 - 40 * n ** -0.5
    kw = {"risk": 0.2, "rounds": 1, "n_boot": 50, "max_total": 1e6}
    plain = LOCPlanner(**kw).fit(n, y, 89.5).plan_.totals[0]
    under = LOCPlanner(correction=Correction(tau=2.0, log_ratios=(0.5, 0.7, 0.9)), **kw).fit(n, y, 89.5)
    assert under.plan_.totals[0] > plain


def test_loc_policy_skips_an_empty_first_round(monkeypatch):
    """Regression: a plan whose first round collects nothing used to end the campaign (a failure)."""
    planner = LOCPlanner(risk=0.1, rounds=3)

    def fake_fit(self, n, y, target, *, spread=None, rounds=None):
        self.plan_ = type("P", (), {"totals": [2000.0, 2000.0, 5000.0]})()
        return self

    monkeypatch.setattr(LOCPlanner, "fit", fake_fit)
    n = np.geomspace(16, 2000, 14)
    assert planner.next_total(n, 90 - 40 * n ** -0.5, 89.5, rounds_left=3, max_total=1e5) == 5000.0
