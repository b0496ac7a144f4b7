"""`python bench/estimators.py --smoke` runs end to end on tiny synthetic curves and writes the report it promises."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "estimators.json"


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


@pytest.mark.slow
def test_estimators_bench_smoke_writes_its_report_to_the_given_place(tmp_path):
    before = _digest(COMMITTED)
    out, md = tmp_path / "est.json", tmp_path / "est.md"
    r = subprocess.run([sys.executable, "bench/estimators.py", "--smoke", "--out", str(out), "--md", str(md)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    est = rep["estimation"]["0.1"]["stats"]
    for k in ("power", "power+tau", "no prior", "default CLI", "--past"):
        assert k in est
    assert est["default CLI"]["curves"] > 0 and 0 <= est["default CLI"]["unreachable_share"] <= 1
    assert set(est["default CLI"]["status_share"]) <= {"estimate", "open", "unreachable", "reached", "worse"}
    sim = rep["simulation"]["by_cap"]
    for cap in ("truth", "team"):
        assert set(sim[cap]) == {"1", "3", "5"}
        assert {"cap", "power+tau", "loc", "loc+past"} <= set(sim[cap]["3"])
    cap_ref = sim["truth"]["3"]["cap"]
    assert cap_ref["failure_rate"] == 0 and cap_ref["at_cap_share"] == 1  # the reference always ends at the cap
    assert sim["team"]["3"]["cap"]["beyond_share"] == 1  # 100x the prefix lies beyond every smoke truth curve
    assert any(t["check"].startswith("default CLI") for t in rep["targets"])
    assert "## Targets" in md.read_text()
    assert _digest(COMMITTED) == before  # the committed bench JSON is never touched


def test_smoke_without_out_writes_into_a_temp_dir_not_the_repo():
    sys.path.insert(0, str(ROOT))
    from bench.estimators import _args

    args = _args(["--smoke"])
    assert not Path(args.out).resolve().is_relative_to(ROOT) and not Path(args.md).resolve().is_relative_to(ROOT)


def test_held_out_evaluations_are_cached_per_curve_and_resumed(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import bench.estimators as be

    calls = []

    def fake(job):
        calls.append(job)
        return {0.1: {"n0": 10.0, "n_star": 40.0, "est": {"power": float("inf")}, "status": {}}}

    monkeypatch.setattr(be, "evaluate_curve", fake)
    args = be._args(["--smoke"])
    cache = tmp_path / "evals.json"
    first = be.cached_evals(["a", "b"], ["ja", "jb"], args, cache, say=lambda m: None)
    assert calls == ["ja", "jb"] and first[0][0.1]["est"]["power"] == float("inf")
    again = be.cached_evals(["a", "b", "c"], ["ja", "jb", "jc"], args, cache, say=lambda m: None)
    assert calls == ["ja", "jb", "jc"]  # only the new curve is evaluated
    assert again[:2] == first and set(again[2]) == {0.1}
