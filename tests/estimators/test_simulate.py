"""The simulator's policy registry, the collect-to-cap reference, penalties, and sizes beyond the truth curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.curves import make_curve
from estimators.errors import EstimatorInputError
from estimators.requirement import Correction, learn_selection, make_task
from estimators.simulate import CollectToCap, get_policy, list_policies, simulate, summarize

SIZES = np.geomspace(100, 100_000, 16)
TRUTH = make_curve(SIZES, 90 - 300 * SIZES ** -0.4, name="truth")
TASK = make_task(TRUTH, fraction=0.1, margin=1.0)
N0 = float(TASK.n[-1])


class Fixed:
    """Asks for a fixed total every round."""

    def __init__(self, q):
        self.q = q

    def next_total(self, n, y, target, *, rounds_left, max_total):
        return self.q


def test_collect_to_cap_is_a_registered_reference():
    assert {"cap", "power", "power+tau", "auto+tau", "loc", "loc+past"} <= set(list_policies())
    assert isinstance(get_policy("cap"), CollectToCap)
    r = simulate(TRUTH, get_policy("cap", rounds=3), target=TASK.target, n0=N0, rounds=3)
    assert r.success and r.at_cap and r.rounds_used == 1 and r.totals == [SIZES[-1]]
    assert r.cost_ratio == pytest.approx((SIZES[-1] - N0) / (TASK.n_star - N0) - 1)
    with pytest.raises(EstimatorInputError, match="unknown policy"):
        get_policy("nope")


@pytest.mark.parametrize("name", list_policies())
def test_every_registered_policy_runs_a_campaign(name):
    sel = learn_selection([TASK])
    cfg = {"correction": Correction(tau=2.0, log_ratios=(0.0, 0.7)), "selection": sel, "n_boot": 40}
    r = simulate(TRUTH, get_policy(name, rounds=3, **cfg), target=TASK.target, n0=N0, rounds=3)
    assert 1 <= r.rounds_used <= 3 and all(N0 < t <= SIZES[-1] for t in r.totals)
    assert r.success == (float(np.interp(np.log(r.totals[-1]), np.log(SIZES), TRUTH.score())) >= TASK.target)


def test_asking_beyond_the_truth_is_not_a_free_success():
    r = simulate(TRUTH, Fixed(10 * SIZES[-1]), target=TASK.target, n0=N0, rounds=3, max_total=1e9)
    assert r.beyond_truth and not r.success and math.isnan(r.cost_ratio_all)
    ok = simulate(TRUTH, Fixed(TASK.n_star * 1.01), target=TASK.target, n0=N0, rounds=3, max_total=1e9)
    assert ok.success and not ok.beyond_truth
    s = summarize([r, ok])
    assert s["beyond_share"] == 0.5 and s["failure_rate"] == 0.0  # the beyond run is left out, not a success


def test_penalty_counts_in_the_all_runs_cost_only_on_failure():
    short = simulate(TRUTH, Fixed(N0 * 1.1), target=TASK.target, n0=N0, rounds=1, penalty=1000.0)
    assert not short.success
    oracle = TASK.n_star - N0
    assert short.total_cost == pytest.approx(0.1 * N0 + 1000.0)
    assert short.cost_ratio_all == pytest.approx((0.1 * N0 + 1000.0) / oracle - 1)
    ok = simulate(TRUTH, Fixed(TASK.n_star * 1.01), target=TASK.target, n0=N0, rounds=1, penalty=1000.0)
    assert ok.cost_ratio_all == pytest.approx(ok.cost_ratio)
    s = summarize([short, ok])
    assert s["failure_rate"] == 0.5 and s["cost_ratio_median"] == pytest.approx(ok.cost_ratio)
    assert s["cost_all_median"] == pytest.approx((short.cost_ratio_all + ok.cost_ratio_all) / 2)
