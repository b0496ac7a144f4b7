"""`python bench/compression_distilled.py --smoke` runs search, recovery and measurement on a tiny world into a
temporary folder, leaving the committed figures alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import _run_in_process

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "compression_distilled.json"


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


@pytest.mark.slow
def test_compression_distilled_smoke_prunes_both_to_one_measured_latency_and_recovers_both(tmp_path):
    before = _digest(COMMITTED)
    _run_in_process("compression_distilled.py", ["--smoke", "--out", str(tmp_path / "o"), "--cache",
                                                 str(tmp_path / "c")])  # no Ray: in this process
    rep = json.loads((tmp_path / "o" / "compression_distilled.json").read_text())
    assert rep["complete"] and _digest(COMMITTED) == before
    la, mag = rep["pruned"]["latency-aware-0.6"], rep["pruned"]["magnitude-0.6"]
    assert la["search"] and mag["search"] and 0 < la["measured_ratio"] < 1.5 and 0 < mag["measured_ratio"] < 1.5
    assert not any(name.startswith("head.") for name in la["plan"]["layers"])  # the head's input kept
    for key in ("latency-aware-0.6", "magnitude-0.6"):
        rec = rep["recover"][key]
        assert rec["distill"]["steps"] == 3 and rec["head_ft"]["epochs"] == 1
        assert all(0 <= rec[k] <= 1 for k in ("map50_pruned", "map50_bn", "map50_distilled", "map50_head_ft"))
    names = {x["model"] for x in rep["rows"]}
    assert names == {"original", "original+int8", "latency-aware-0.6", "latency-aware-0.6+int8", "magnitude-0.6",
                     "magnitude-0.6+int8"}
    assert all(x["latency_ms"]["p50"] > 0 for x in rep["rows"])
    assert "| latency-aware-0.6 |" in (tmp_path / "o" / "compression_distilled.md").read_text()

    # the int8 layouts bench reads the finished cache: every model in fp32 and four int8 layouts, timed and evaluated
    # (in this process: no second interpreter start; the original only, the pruned models take the same path)
    _run_in_process("int8_formats.py", ["--smoke", "--cache", str(tmp_path / "c" / "cache"),
                                        "--out", str(tmp_path / "o"), "--models", "original"])
    q = json.loads((tmp_path / "o" / "int8_formats.json").read_text())
    assert {(x["model"], x["variant"]) for x in q["rows"]} == {
        ("original", v) for v in ("fp32", "qdq", "qdq-dwfloat", "qoperator", "qoperator-dwfloat")}
    for x in q["rows"]:
        assert x["latency_ms"]["p50"] > 0 and 0 <= x["map50"] <= 1 and x["speedup_vs_fp32"] > 0
    for m, v in q["source"]["map50"].items():  # the same fp32 files as the source bench, its mAP@.5 on 4 images
        assert 0 <= v <= 1 and q["by_key"][f"{m}+fp32"]["file_bytes"] > 0
