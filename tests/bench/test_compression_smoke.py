"""`python bench/compression.py --smoke` runs end to end on a tiny world into a temporary folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import _run_in_process

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "compression.json"


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


@pytest.mark.slow
def test_compression_bench_smoke_writes_every_point_to_the_given_place(tmp_path):
    before = _digest(COMMITTED)
    _run_in_process("compression.py", ["--smoke", "--out", str(tmp_path)])  # no Ray: in this process
    rep = json.loads((tmp_path / "compression.json").read_text())
    names = {x["model"] for x in rep["rows"]}
    assert {"original", "original+int8", "bn-folded", "latency-aware-0.5", "latency-aware-0.5+int8",
            "magnitude-0.5", "magnitude-0.5+int8"} <= names
    for x in rep["rows"]:
        assert x["latency_ms"]["p50"] > 0 and 0 <= x["map50"] <= 1 and x["macs"] > 0
    folded = next(x for x in rep["rows"] if x["model"] == "bn-folded")
    assert folded["fold_max_abs_diff"] < 1e-3
    la = next(x for x in rep["rows"] if x["model"] == "latency-aware-0.5")
    orig = next(x for x in rep["rows"] if x["model"] == "original")
    assert la["lut_ms"] <= 0.5 * orig["lut_ms"] + 1e-6 and la["macs"] < orig["macs"]
    assert "original" in rep["spiq_data_free"]
    assert (tmp_path / "compression.md").read_text().startswith("# Compression benchmark")
    assert _digest(COMMITTED) == before  # the committed figures are never overwritten by a smoke run
