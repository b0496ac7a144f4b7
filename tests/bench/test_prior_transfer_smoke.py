"""`python bench/prior_transfer.py --smoke` runs end to end (synthetic curves, no training) and writes its report."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "prior_transfer.json"


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def test_prior_transfer_smoke_writes_its_report_to_the_given_place(tmp_path):
    before = _digest(COMMITTED)
    out = tmp_path / "pt.json"
    r = subprocess.run([sys.executable, "bench/prior_transfer.py", "--smoke", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["smoke"] and rep["seeds"] == [2, 3, 4]
    tasks = rep["tasks"]
    assert {t["seed"] for t in tasks} == {2, 3, 4} and {t["fraction"] for t in tasks} == {0.1, 0.2}
    for t in tasks:
        curve = rep["curves"][str(t["seed"])]
        assert t["n0"] < t["n_star"] <= curve["n"][-1]  # the truth lies beyond the fit, within the measured curve
        assert t["past_curves"] == 2  # leave one seed out
        assert {"power", "power+tau", "default CLI", "--past"} <= set(t["est"])
    st = rep["summary"]["all"]
    for k in ("power", "power+tau", "default CLI", "--past"):
        assert st[k]["curves"] == len(tasks)
        assert 0 <= st[k]["under_share"] <= 1 and 0 <= st[k]["unreachable_share"] <= 1
        assert math.isfinite(st[k]["median_abs_log"])
    assert "| default CLI |" in out.with_suffix(".md").read_text()
    assert _digest(COMMITTED) == before  # the committed bench JSON is never touched
