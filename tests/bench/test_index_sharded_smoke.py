"""`python bench/index_sharded.py --smoke` runs end to end in a subprocess (Ray shard actors, single index, exact
ground truth) and writes its JSON + Markdown into a temporary folder, never touching the committed bench files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_index_sharded_smoke(tmp_path):
    committed = ROOT / "bench" / "index_sharded.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    out = tmp_path / "sharded.json"
    r = subprocess.run([sys.executable, "bench/index_sharded.py", "--smoke", "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    doc = json.loads(out.read_text())
    res, sh = doc["result"], doc["result"]["sharded"]
    assert doc["smoke"] is True and res["n"] == 20_000 and res["shards"] == 2
    assert sum(sh["shard_vectors"]) == res["n"] and min(sh["shard_vectors"]) > 0
    assert sh["queries_with_same_hits"] == 1.0 and sh["max_abs_score_diff"] < 1e-4  # sharded == single
    assert sh["recall_at_10"] == pytest.approx(res["single"]["recall_at_10"])
    assert len(sh["rss_mib"]) == 2 and all(m > 0 for m in sh["rss_mib"])
    assert [z["vectors_per_image"] for z in doc["sizing"]] == [768, 192, 768, 192] and doc["sizing"][-1]["nodes"] >= 1
    assert "Sizing" in out.with_suffix(".md").read_text()
    after = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    assert before == after
