"""`assay estimate` and `assay plan` through CliRunner and through apps.cli.main.main (exit codes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from apps.cli.main import app, main

runner = CliRunner()


@pytest.fixture
def curve_file(tmp_path):
    lines = ["n,value,seed,curve"]
    for n in (100, 200, 400, 800, 1600):
        for seed in (0, 1):
            lines.append(f"{n},{90 - 300 * n ** -0.4 + 0.1 * seed:.4f},{seed},cls_a")
        lines.append(f"{n},{40 + 0.01 * np.log(n):.4f},0,cls_flat")
    p = tmp_path / "curve.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_estimate_json_lists_every_curve(curve_file):
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--n-boot", "20", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [o["curve"] for o in out] == ["cls_a", "cls_flat"]
    assert {"curve", "required_n", "interval", "law"} <= set(out[0])
    assert out[0]["required_n"] > 1600
    assert out[1]["required_n"] is None and out[1]["reason"]


def test_estimate_table_names_laws(curve_file):
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--law", "power", "--n-boot", "10"])
    assert r.exit_code == 0, r.output
    assert "cls_a" in r.stdout and "arctan" in r.stdout and "m4" in r.stdout
    assert "prior's" in r.stdout  # the selection error is the prior's, not this curve's fit (#25 item 5)


def test_plan_json_and_table(curve_file):
    args = ["plan", str(curve_file), "--target", "82", "--cost", "1", "--rounds", "3", "--n-boot", "20"]
    r = runner.invoke(app, args + ["--penalty", "1e6", "--max-total", "50000", "--json"])
    assert r.exit_code == 0, r.output
    plans = json.loads(r.stdout)
    assert len(plans[0]["amounts"]) == 3 and max(plans[0]["totals"]) <= 50000
    r = runner.invoke(app, args + ["--risk", "0.1"])
    assert r.exit_code == 0, r.output and "round" in r.stdout


@pytest.mark.parametrize("args,match", [
    (["estimate", "{f}", "--target", "82", "--law", "nope"], "unknown law"),
    (["plan", "{f}", "--target", "82", "--penalty", "1", "--risk", "0.1"], "exactly one"),
    (["plan", "{f}", "--target", "82"], "exactly one"),
    (["estimate", "{bad}", "--target", "82"], "row 3: field 'value'"),
    (["estimate", "{missing}", "--target", "82"], "no such curve file"),
])
def test_user_errors_exit_2_with_one_line(curve_file, tmp_path, capsys, args, match):
    bad = tmp_path / "bad.csv"
    bad.write_text("n,value\n100,50\n200,nan\n400,60\n")
    argv = [a.format(f=curve_file, bad=bad, missing=tmp_path / "none.csv") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err


def test_main_exit_0(curve_file):
    assert main(["estimate", str(curve_file), "--target", "82", "--n-boot", "5", "--json"]) == 0


@pytest.fixture
def past_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["n,value,curve"]
    for k in range(6):
        a, b = rng.uniform(150, 300), -rng.uniform(0.3, 0.45)
        for n in np.geomspace(50, 50_000, 20):
            lines.append(f"{n:.0f},{90 - a * n ** b:.4f},past_{k}")
    p = tmp_path / "past.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_estimate_auto_uses_laws_ranked_on_past_curves(curve_file, past_file):
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--n-boot", "10", "--past",
                            str(past_file), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)[0]
    assert set(out["selection_error"]) == {"power", "arctan", "log", "root", "m4"}
    assert out["law"] in out["selection_error"] and out["tau"] > 0


def test_plan_calibrated_by_past_curves(curve_file, past_file):
    args = ["plan", str(curve_file), "--target", "82", "--risk", "0.1", "--n-boot", "20", "--json"]
    r = runner.invoke(app, args + ["--past", str(past_file)])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)[0]["totals"]) == 3
    r = runner.invoke(app, args + ["--past", str(past_file), "--past-fraction", "0.0001"])
    assert r.exit_code != 0


# ------------------------------------------------------------------ the shipped prior, --past workspace, answer kinds
def test_estimate_uses_the_shipped_prior_by_default_and_says_so(curve_file):
    from estimators.prior import load_prior

    prior = load_prior()
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--n-boot", "10"])
    assert r.exit_code == 0, r.output
    assert "using default: the shipped prior learned on LCDB 0.1.0" in " ".join(r.stdout.split())
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--n-boot", "10", "--json"])
    out = json.loads(r.stdout)[0]
    assert out["prior"].startswith("default: the shipped prior learned on LCDB 0.1.0")
    finite = {k: v for k, v in prior.selection.errors.items() if np.isfinite(v)}
    assert {k: v for k, v in out["selection_error"].items() if v is not None} == pytest.approx(finite)
    assert out["law"] == prior.selection.ranking[0] and out["tau"] == pytest.approx(prior.correction(out["law"]).tau)


def test_past_file_replaces_the_prior(curve_file, past_file):
    r = runner.invoke(app, ["estimate", str(curve_file), "--target", "82", "--n-boot", "10", "--json",
                            "--past", str(past_file)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)[0]
    assert out["prior"].startswith(f"--past: laws ranked and τ learned on 6 past curve(s) from {past_file}")
    assert "LCDB" not in out["prior"]


def _write_runs(ws, k=4, seed=0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    for i in range(k):
        a, b = rng.uniform(150, 300), -rng.uniform(0.3, 0.45)
        n = np.geomspace(50, 50_000, 16).round()
        d = ws / "runs" / f"run{i}"
        d.mkdir(parents=True)
        pq.write_table(pa.table({"round": np.arange(16, dtype=np.int32), "n_labeled": n.astype(np.int64),
                                 "metric": ["val_acc"] * 16, "value": 90 - a * n ** b}), d / "curve.parquet")


def test_past_workspace_reads_every_run_curve(curve_file, tmp_path):
    ws = tmp_path / "ws"
    _write_runs(ws)
    r = runner.invoke(app, ["plan", str(curve_file), "--target", "82", "--risk", "0.1", "--n-boot", "20", "--json",
                            "--past", "workspace", "--workspace", str(ws)])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)[0]
    assert p["prior"] == f"--past: laws ranked and τ learned on 4 past curve(s) from workspace {ws} " \
                         "(runs/*/curve.parquet)"
    assert len(p["totals"]) == 3


def test_past_workspace_without_runs_is_a_one_line_error(curve_file, tmp_path, capsys):
    assert main(["estimate", str(curve_file), "--target", "82", "--past", "workspace", "-w",
                 str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no run in" in err and "curve.parquet" in err


def test_plateau_just_under_the_target_is_open_ended_in_the_output(tmp_path):
    n = np.array([100, 200, 400, 800, 1600, 3200.0])
    y = 80 - 200 * n ** -0.5 + np.random.default_rng(0).normal(0, 0.3, len(n))
    f = tmp_path / "plateau.csv"
    f.write_text("n,value\n" + "".join(f"{a:g},{b:.4f}\n" for a, b in zip(n, y)))
    args = ["estimate", str(f), "--target", "80.3", "--law", "power"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "open: no upper bound" in text and "unreachable" not in text
    out = json.loads(runner.invoke(app, args + ["--json"]).stdout)[0]
    assert out["status"] == "open" and out["required_n"] > 3200 and out["interval"][1] is None
    far = json.loads(runner.invoke(app, ["estimate", str(f), "--target", "85", "--law", "power", "--json"]).stdout)
    assert far[0]["status"] == "unreachable" and far[0]["required_n"] is None


def test_a_falling_curve_suggests_direction_lower(tmp_path, capsys):
    f = tmp_path / "falls.csv"
    f.write_text("n,value\n10,80\n20,70\n40,60\n80,50\n")
    r = runner.invoke(app, ["estimate", str(f), "--target", "90"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "no estimate (the curve gets worse with more data)" in text and "--direction lower" in text
    assert "n = 1 " not in text and "already reached" not in text
    r = runner.invoke(app, ["plan", str(f), "--target", "90", "--risk", "0.1"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "nothing planned: the curve gets worse with more data" in text and "--direction lower" in text
