"""``bench/targeted_selection_backbones.py --smoke``: tune on one seed, report on another, every backbone measured
and the peers (whole-image kNN, detector-proposal patch similarity, chance) in the same report."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_bench_smoke import _finite, _smoke


@pytest.mark.slow
def test_targeted_selection_backbones_smoke(tmp_path):
    _smoke("targeted_selection_backbones.py", "--out-dir", str(tmp_path))
    res = json.loads((tmp_path / "targeted_selection_backbones.json").read_text())
    assert res["smoke"] is True and res["tune_seed"] != res["report_seed"]
    tried, chosen = res["tuning"]["tried"], res["tuning"]["chosen"]
    assert chosen["backbone"] in {t["backbone"] for t in tried} and len(tried) >= 2
    rep = res["report"]
    assert set(rep["backbones"]) == {"lite0-s16", "lite0ft-s16"}
    assert set(rep["peers"]) == {"knn-lite0-s16", "patch-proposals"}
    for r in [b["template"] for b in rep["backbones"].values()] + list(rep["peers"].values()) + [rep["chance"]]:
        b = r["bins"]["<1%"]
        assert 0.0 <= b["precision@10"] <= 1.0 and 0.0 <= b["recall@100"] <= 1.0
    s = rep["summary"]
    assert s["default_backbone"] == chosen["backbone"] and _finite(s["chance_precision@10_<1%"])
    ft = res["training"]["report"]["lite0ft-s16"]
    assert ft["steps"] == res["steps"] and ft["train_s"] > 0  # fine-tuned here, its training time recorded
