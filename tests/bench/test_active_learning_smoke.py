"""`python bench/active_learning.py --smoke` runs end to end in a subprocess and writes its JSON + Markdown into a
temporary folder, with every strategy's curve, never touching the committed bench JSON."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = {"random", "entropy", "coreset", "uncertainty_robustness", "uncertainty_robustness+pseudo"}


@pytest.mark.slow
def test_active_learning_smoke(tmp_path):
    committed = ROOT / "bench" / "active_learning.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    out = tmp_path / "al.json"
    r = subprocess.run([sys.executable, "bench/active_learning.py", "--smoke", "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and set(doc["summary"]["mean_map50"]) == STRATEGIES
    for name in STRATEGIES:
        curve = doc["per_seed"]["2"][name]
        assert curve["n_labeled"] == [6, 10] and len(curve["map50"]) == 2
    assert out.with_suffix(".md").exists()
    after = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    assert before == after
