"""Collection-plan page: LOC schedule (as `assay plan`) beside the naive plan; downloads; bad settings."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from actors.core.errors import UserError
from apps.planner import data
from estimators.loc import plan_collection
from tests.apps.planner.helpers import CURVE_CSV, charts, files, metric, number, ok, page, upload_curve


def _schedule(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "round" in d.value.columns)


def _curve():
    (pts,) = data.curves_from_table(pd.read_csv(io.BytesIO(CURVE_CSV)), "uploaded.csv", "higher", "percent")
    return pts


def test_plan_matches_the_cli_planner_and_follows_the_rounds(ws_dir):
    at = ok(upload_curve(page("plan")))
    number(at, "Target").set_value(70.0)
    number(at, "Penalty (cost of missing the target)").set_value(50_000.0)
    ok(at.run())
    # the same call `assay plan --cost 1 --penalty 50000 --rounds 3` makes (with the shipped prior's correction)
    pts = _curve()
    selection, _ = data.default_selection()
    corr = selection.corrections.get("power") if selection is not None else None
    want = plan_collection(pts.curve(), 70.0, 1.0, 50_000.0, 3, max_total=100 * 8000.0, law="power",
                           correction=corr)
    table = _schedule(at)
    assert list(table["round"]) == [1, 2, 3]
    assert list(table["cumulative total"]) == [round(t) for t in want.totals]
    assert metric(at, "LOC: risk of missing") == f"{want.risk:.1%}"
    naive = float(metric(at, "Naive: collect to").replace(",", ""))
    assert naive > 8000
    (spec,) = charts(at)
    assert "hconcat" in spec  # cumulative data and risk per round
    downloads = {b.label for b in at.get("download_button")}
    assert downloads == {"Download plan (JSON)", "Download schedule (CSV)"}

    number(at, "Rounds").set_value(2)
    ok(at.run())
    assert list(_schedule(at)["round"]) == [1, 2]
    assert files(ws_dir) == []


def test_risk_mode_plans_to_the_acceptable_risk(ws_dir):
    at = ok(upload_curve(page("plan")))
    number(at, "Target").set_value(70.0)
    at.radio(key="plan_mode").set_value("an acceptable risk")
    ok(at.run())
    number(at, "Acceptable risk of missing").set_value(0.1)
    ok(at.run())
    risk = float(metric(at, "LOC: risk of missing").rstrip("%")) / 100
    assert risk <= 0.1 + 1e-3


def test_target_already_met_is_a_message_not_a_traceback(ws_dir):
    at = ok(upload_curve(page("plan")))
    number(at, "Target").set_value(50.0)
    ok(at.run())
    assert "already reaches target 50" in " ".join(e.value for e in at.error)
    assert not at.metric and files(ws_dir) == []


def test_sources_are_validated_row_by_row():
    from apps.planner.views import plan as plan_page  # noqa: F401  (importing runs nothing outside Streamlit)

    good = pd.DataFrame([{"source": "labeled", "cost per sample": 2.0, "value": 1.0, "available": None},
                         {"source": "pseudo", "cost per sample": 0.1, "value": 0.3, "available": 1000.0}])
    assert plan_page._sources(good) == (("labeled", 2.0, 1.0, math.inf), ("pseudo", 0.1, 0.3, 1000.0))
    for bad, msg in (({"cost per sample": -1.0}, "'cost per sample' must be > 0"),
                     ({"value": 0.0}, "'value' must be > 0"), ({"available": -5.0}, "'available' must be > 0"),
                     ({"cost per sample": "x"}, "must be numbers")):
        row = {"source": "labeled", "cost per sample": 1.0, "value": 1.0, "available": None} | bad
        with pytest.raises(UserError, match="sources row 1"):
            plan_page._sources(pd.DataFrame([row]))
        with pytest.raises(UserError, match=msg.replace("(", r"\(")):
            plan_page._sources(pd.DataFrame([row]))


def test_plan_json_is_strict_json():
    from apps.planner.views.plan import _finite

    assert json.dumps(_finite({"a": [math.inf, 1.0], "b": {"c": math.nan}}), allow_nan=False) == \
        '{"a": [null, 1.0], "b": {"c": null}}'


def test_a_falling_curve_plans_nothing_and_says_why(ws_dir):
    falling = b"n,value\n250,30\n500,25\n1000,21\n2000,18\n"
    at = ok(upload_curve(page("plan"), falling))
    number(at, "Target").set_value(40.0)
    ok(at.run())
    assert "Nothing to plan" in " ".join(w.value for w in at.warning) and "--direction" in at.warning[0].value
    assert not at.metric and files(ws_dir) == []


def test_the_cap_is_the_clis_default_and_numbers_read_as_numbers(ws_dir):
    """#25 item 5: the app capped at 100x while the demo used 50x; costs printed as 6.481e+04; a note named
    the internal max_total."""
    from estimators.loc import DEFAULT_CAP_FACTOR

    at = ok(upload_curve(page("plan")))
    assert number(at, "Cap on the total (samples)").value == DEFAULT_CAP_FACTOR * 8000
    number(at, "Target").set_value(70.0)
    number(at, "Penalty (cost of missing the target)").set_value(50_000.0)
    ok(at.run())
    cost = metric(at, "LOC: expected cost")
    assert "e+" not in cost and cost.replace(",", "").isdigit()
    number(at, "Cap on the total (samples)").set_value(9000.0)
    at.radio(key="plan_mode").set_value("an acceptable risk")
    ok(at.run())
    number(at, "Acceptable risk of missing").set_value(0.001)
    ok(at.run())
    text = " ".join(w.value for w in at.warning)
    assert "not reachable within the cap of 9,000 samples" in text and "max_total" not in text
