"""Laws: parameter recovery, inversion, and the estimator contract for every registered law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.laws import M4Law, NotFittedError, get_law, law_bracket, list_laws

N = np.geomspace(100, 20000, 20)
TRUE = {
    "power": {"theta1": -300.0, "theta2": -0.4, "theta3": 90.0},
    "arctan": {"theta1": 2e-4, "theta2": 0.3, "theta3": -15.0},
    "log": {"theta1": 5.0, "theta2": 50.0, "theta3": 20.0},
    "root": {"theta1": 1.5, "theta2": 0.3, "theta3": 0.0},
    "m4": {"e_inf": 5.0, "alpha": 0.5, "beta": 27.69896425600957, "c": -0.4},
}


def curve(name, n=N):
    p = TRUE[name]
    if name == "power":
        return p["theta1"] * n ** p["theta2"] + p["theta3"]
    if name == "arctan":
        return 200 / np.pi * np.arctan(p["theta1"] * np.pi / 2 * n + p["theta2"]) + p["theta3"]
    if name == "log":
        return p["theta1"] * np.log(n + p["theta2"]) + p["theta3"]
    if name == "root":
        return 100 * n / (1 + np.abs(p["theta1"] * n) ** p["theta2"]) ** (1 / p["theta2"]) + p["theta3"]
    law = M4Law()
    law.p_, law.scale_ = np.array([5.0, 0.5, -0.64, -0.4]), 20000.0
    return law.predict(n)


@pytest.mark.parametrize("name", list(TRUE))
def test_law_recovers_its_parameters_and_extrapolates_within_one_percent(name):
    y = curve(name)
    law = get_law(name).fit(N[:10], y[:10])  # the first half only
    for k, v in TRUE[name].items():
        assert law.params_[k] == pytest.approx(v, rel=1e-3, abs=1e-6)
    assert np.max(np.abs(law.predict(N) - y) / np.abs(y)) < 0.01


@pytest.mark.parametrize("name", list(TRUE))
def test_required_n_inverts_predict(name):
    law = get_law(name).fit(N, curve(name))
    for target in (curve(name, np.array([3000.0]))[0], curve(name, np.array([15000.0]))[0]):
        n = law.required_n(target)
        assert np.isfinite(n)
        assert law.predict(n) == pytest.approx(target, abs=1e-6)


def test_required_n_is_inf_with_reason_when_curve_levels_off():
    law = get_law("power").fit(N, curve("power"))  # asymptote 90
    n, reason = law.solve_required_n(95.0)
    assert n == math.inf and "never reaches 95" in reason
    n, reason = get_law("m4").fit(N, curve("m4")).solve_required_n(96.0)
    assert n == math.inf and "irreducible" in reason


def test_bracket_orders_laws():
    y = curve("power")
    lo, hi, per = law_bracket(N[:8], y[:8], 85.0)
    assert lo <= hi and set(per) == {"power", "arctan", "log", "root"}
    assert lo == min(per.values()) and hi == max(per.values())


def test_get_law_unknown_name():
    with pytest.raises(ValueError, match="unknown law 'nope'"):
        get_law("nope")


# --- contract tests, parametrized over every registered law ---
NOISY_N = np.geomspace(50, 5000, 8)
NOISY_Y = 85 - 200 * NOISY_N ** -0.35 + np.random.default_rng(0).normal(0, 0.2, 8)


@pytest.mark.parametrize("name", list_laws())
def test_fit_returns_self(name):
    law = get_law(name)
    assert law.fit(NOISY_N, NOISY_Y) is law
    assert set(law.params_) == set(law.param_names)
    assert np.isfinite(law.rmse_)


@pytest.mark.parametrize("name", list_laws())
def test_unfitted_raises(name):
    with pytest.raises(NotFittedError):
        get_law(name).predict([100.0])
    with pytest.raises(NotFittedError):
        get_law(name).required_n(80.0)


@pytest.mark.parametrize("name", list_laws())
def test_refit_overwrites(name):
    law = get_law(name).fit(NOISY_N, NOISY_Y)
    other = get_law(name).fit(NOISY_N, NOISY_Y - 10)
    law.fit(NOISY_N, NOISY_Y - 10)
    assert law.params_ == other.params_
    np.testing.assert_allclose(law.predict(NOISY_N), other.predict(NOISY_N))


@pytest.mark.parametrize("name", list_laws())
def test_point_order_does_not_matter(name):
    perm = np.random.default_rng(1).permutation(len(NOISY_N))
    a = get_law(name).fit(NOISY_N, NOISY_Y)
    b = get_law(name).fit(NOISY_N[perm], NOISY_Y[perm])
    np.testing.assert_allclose(a.predict(NOISY_N), b.predict(NOISY_N))


@pytest.mark.parametrize("name", list_laws())
def test_fit_is_deterministic(name):
    a = get_law(name).fit(NOISY_N, NOISY_Y).params_
    assert get_law(name).fit(NOISY_N, NOISY_Y).params_ == a


@pytest.mark.parametrize("name", list_laws())
@pytest.mark.parametrize("n,y,match", [
    ([1, 2], [50, 60], "at least 3"),
    ([1, 2, 2], [50, 60, 61], "repeat"),
    ([1, 2, 3], [50, np.nan, 61], "finite"),
    ([1, 2, 3], [50, 50, 50], "equal"),
    ([0, 2, 3], [50, 55, 61], "> 0"),
])
def test_degenerate_points_raise(name, n, y, match):
    with pytest.raises(ValueError, match=match):
        get_law(name).fit(n, y)
