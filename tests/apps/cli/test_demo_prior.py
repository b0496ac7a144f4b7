"""The demo's estimate step uses the shipped LCDB prior, as `assay estimate` does without --past, and says so."""

from __future__ import annotations

from apps.cli.demo import _estimate_and_plan
from apps.cli.output import console
from estimators.curves import make_curve
from estimators.prior import load_prior
from estimators.requirement import estimate_requirement


def test_demo_estimate_uses_the_shipped_prior() -> None:
    n, v = [20, 35, 50, 65], [3.6, 7.2, 13.0, 13.4]
    with console.capture() as cap:
        out = _estimate_and_plan(n, v)
    text = cap.get()
    assert "shipped prior learned on LCDB" in text
    prior = load_prior()
    want = estimate_requirement(make_curve(n, v), out["target"], selection=prior.selection)
    assert out["estimate"]["law"] == want.law
    assert out["estimate"]["required_n"] == want.required_n
    assert "shipped prior" in out["estimate"]["prior"]
