"""`python bench/rare_class.py --smoke` runs end to end (in the test's process: it starts no Ray): every
arm labels K images, the mined arm's images are the mine result's, chance is reported, and the committed bench JSON
is never touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import _run_in_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rare_class_smoke(tmp_path):
    committed = ROOT / "bench" / "rare_class.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    out = tmp_path / "rare.json"
    _run_in_process("rare_class.py", ["--smoke", "--out", str(out), "--work", str(tmp_path / "work")])
    doc = json.loads(out.read_text())
    seed = doc["per_seed"]["2"]
    k = doc["settings"]["k"]
    assert doc["smoke"] is True and {"mined", "random", "active"} <= set(seed)
    for arm in ("mined", "random", "active"):
        assert all(len(d["selected"]) == k for d in seed[arm]["draws"])
    sel = json.loads(json.dumps(seed["mined"]["draws"][0]["selected"]))
    assert len(set(sel)) == k and seed["chance_rare_images"] >= 0
    assert {"ap50", "ap"} <= set(seed["before"]) and out.with_suffix(".md").exists()
    after = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    assert before == after
