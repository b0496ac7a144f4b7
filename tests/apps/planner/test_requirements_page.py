"""Data-requirements page: upload or pick a curve, fit every law, change the target; bad uploads show a message."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apps.planner import data
from estimators.laws import list_laws
from tests.apps.planner.helpers import CURVE_CSV, charts, files, metric, number, ok, page, upload_curve


def _curve(csv: bytes):
    (pts,) = data.curves_from_table(pd.read_csv(io.BytesIO(csv)), "uploaded.csv", "higher", "percent")
    return pts


def _expected(csv: bytes, target: float, **kw) -> dict:
    return data.requirement(_curve(csv), target, **kw)


def test_upload_fit_every_law_and_change_the_target(ws_dir):
    at = page("requirements")
    assert ok(at).title[0].value == "Data requirements"
    assert [r.value for r in at.radio] == ["Upload a file"]  # no run in the workspace yet
    ok(upload_curve(at))
    number(at, "Bootstrap resamples").set_value(100)
    number(at, "Target").set_value(70.0)
    ok(at.run())
    want = _expected(CURVE_CSV, 70.0, n_boot=100)
    assert metric(at, "Required n (recommended)") == f"{want['required_n']:,.0f}"
    lo, hi = want["interval"]
    assert metric(at, "80% interval") == f"{lo:,.0f} – {hi:,.0f}"
    table = at.dataframe[0].value
    assert list(table["law"]) == list_laws() and table["fit (before τ)"].str.len().min() > 0
    assert "80% interval" not in table.columns  # per-law intervals are asked for (they cost a bootstrap per law)
    (spec,) = charts(at)
    assert len(spec["layer"]) >= 4  # band, fitted laws, points, target rule (+ the recommended size)

    number(at, "Target").set_value(72.0)
    ok(at.run())
    more_res = _expected(CURVE_CSV, 72.0, n_boot=100)
    more = more_res["required_n"]
    assert more > want["required_n"] and metric(at, "Required n (recommended)") == f"{more:,.0f}"
    at.toggle(key="req_per_law").set_value(True)
    number(at, "Bootstrap resamples").set_value(50)  # per-law intervals use min(this, 100) resamples
    ok(at.run())
    table = at.dataframe[0].value
    power = table[table["law"] == "power"].iloc[0]  # each law: its own τ and bootstrap interval
    alone = data.requirement(_curve(CURVE_CSV), 72.0, n_boot=50, law="power")
    assert power["required n"] == f"{alone['required_n']:,.0f}" and power["τ"] == round(alone["tau"], 3)
    assert power["80% interval"] == f"{alone['interval'][0]:,.0f} – {alone['interval'][1]:,.0f}"
    assert f"τ = {_expected(CURVE_CSV, 72.0, n_boot=50)['tau']:.3g}" in "".join(m.value for m in at.markdown)
    assert files(ws_dir) == []  # planning writes nothing


def test_pick_a_runs_curve_from_the_workspace(ws_dir):
    d = ws_dir / "runs" / "al-entropy"
    d.mkdir(parents=True)
    n = [200, 400, 800, 1600, 3200]
    t = pa.table({"round": [0, 1, 2, 3, 4] * 2, "n_labeled": n * 2, "metric": ["map"] * 5 + ["map50"] * 5,
                  "value": [0.21, 0.27, 0.32, 0.355, 0.38, 0.40, 0.47, 0.52, 0.555, 0.58]})
    pq.write_table(t, d / "curve.parquet")
    at = ok(page("requirements"))
    assert at.radio[0].value == "Workspace run" and at.selectbox(key="req_run").value == "al-entropy"
    at.selectbox(key="req_metric").set_value("map50")
    number(at, "Bootstrap resamples").set_value(50)
    ok(at.run())
    assert [s.value for s in at.selectbox if s.label == "Scale"] == ["fraction"]  # guessed from the values
    assert metric(at, "Required n (recommended)").replace(",", "").isdigit()
    assert "runs/al-entropy" not in "".join(e.value for e in at.error)


@pytest.mark.parametrize("name,payload,message", [
    ("nocol.csv", b"size,value\n1,2\n2,3\n4,5\n", "missing column(s) ['n']"),
    ("neg.csv", b"n,value\n-100,40\n200,50\n400,55\n", "field 'n' is -100"),
    ("nan.csv", b"n,value\n100,abc\n200,50\n400,55\n", "not a number"),
    ("two.csv", b"n,value\n100,40\n200,50\n", "need at least 3"),
    ("bad.parquet", b"this is not parquet", "not a readable PARQUET table"),
    ("empty.csv", b"", "empty"),
])
def test_bad_uploads_show_a_message_and_change_nothing(ws_dir, name, payload, message):
    at = upload_curve(page("requirements"), payload, name)
    ok(at)
    errors = " ".join(e.value for e in at.error)
    assert message in errors, errors
    assert not at.metric and files(ws_dir) == []


def test_a_curve_that_already_meets_the_target_says_so(ws_dir):
    at = ok(upload_curve(page("requirements")))
    number(at, "Target").set_value(50.0)
    number(at, "Bootstrap resamples").set_value(50)
    ok(at.run())
    assert "already reached" in " ".join(w.value for w in at.warning)


def test_only_csv_and_parquet_names_are_accepted_and_the_name_is_never_opened():
    assert data.upload_kind("../../etc/passwd.csv") == "csv" and data.upload_kind("x.PQ") == "parquet"
    with pytest.raises(Exception, match="upload a .csv or .parquet"):
        data.upload_kind("curve.txt")


def test_a_falling_curve_is_explained_not_estimated(ws_dir):
    at = ok(upload_curve(page("requirements"), b"n,value\n250,30\n500,25\n1000,21\n2000,18\n"))
    number(at, "Target").set_value(40.0)
    number(at, "Bootstrap resamples").set_value(50)
    ok(at.run())
    assert metric(at, "Required n (recommended)") == "∞"
    assert "--direction lower" in " ".join(w.value for w in at.warning)


def test_the_chart_is_clipped_to_the_metrics_range_and_labelled_and_the_prior_error_says_whose(ws_dir):
    """#25 item 5: the y axis ran to 1,800 for a percent metric, titled 'value'; 'selection error' (the prior's)
    read as this curve's fit quality."""
    d = ws_dir / "runs" / "learn-1"
    d.mkdir(parents=True)
    n = [20, 40, 60, 80, 100]
    pq.write_table(pa.table({"round": list(range(5)), "n_labeled": n, "metric": ["val_map50_pct"] * 5,
                             "value": [3.6, 7.2, 13.0, 13.4, 15.1]}), d / "curve.parquet")
    at = ok(page("requirements"))
    number(at, "Bootstrap resamples").set_value(50)
    ok(at.run())
    (spec,) = charts(at)
    ys = [lay["encoding"]["y"] for lay in spec["layer"] if "y" in lay["encoding"]]
    assert {y["title"] for y in ys} == {"mAP@.5 (%)"}
    for y in ys:
        lo, hi = y["scale"]["domain"]
        assert 0 <= lo < 3.6 and 15.1 < hi <= 100
    table = at.dataframe[0].value
    assert "prior's selection error" in table.columns and "selection error" not in table.columns
    assert any("not a measure of this curve's fit" in c.value for c in at.caption)


def test_an_uploaded_curve_is_titled_by_the_metric_the_user_names(ws_dir):
    at = ok(upload_curve(page("requirements")))
    assert at.text_input(key="req_metric_name").value == "mAP@.5"
    number(at, "Bootstrap resamples").set_value(50)
    ok(at.run())
    (spec,) = charts(at)
    assert {lay["encoding"]["y"]["title"] for lay in spec["layer"] if "y" in lay["encoding"]} == {"mAP@.5 (%)"}
