"""`python bench/active_learning.py --smoke` runs end to end (in the test's process: it starts no Ray) and
writes its JSON + Markdown into a temporary folder, with every strategy's curve, never touching the committed bench
JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import _run_in_process

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = {"random", "entropy", "coreset", "uncertainty_robustness", "uncertainty_robustness+pseudo",
              "mined_first"}


@pytest.mark.slow
def test_active_learning_smoke(tmp_path):
    committed = ROOT / "bench" / "active_learning.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    out = tmp_path / "al.json"
    _run_in_process("active_learning.py", ["--smoke", "--out", str(out), "--work", str(tmp_path / "work")])
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and set(doc["summary"]["mean_map50"]) == STRATEGIES
    for name in STRATEGIES:
        curve = doc["per_seed"]["2"][name]
        assert curve["n_labeled"] == [6, 10] and len(curve["map50"]) == 2
    q = doc["per_seed"]["2"]["mined_query"]  # mined-first mined the class round 0 detected worst
    ap0 = {k: v or 0.0 for k, v in doc["per_seed"]["2"]["random"]["per_class_ap50"][0].items()}
    assert q["top_k"] == doc["settings"]["budget"] * doc["settings"]["rounds"] and q["category"] in ap0
    assert set(doc["summary"]["mined_class_ap50"]) == STRATEGIES
    assert out.with_suffix(".md").exists()
    after = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    assert before == after
