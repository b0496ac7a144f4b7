"""``bench/feature_store.py --smoke`` and ``bench/embed_scale.py --smoke`` end to end (tiny worlds, seconds of work;
Ray start-up dominates on a loaded machine)."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_bench_smoke import _finite, _smoke


@pytest.mark.slow
def test_feature_store_smoke(tmp_path):
    out = tmp_path / "feature_store.json"
    _smoke("feature_store.py", "--out", str(out))
    rep = json.loads(out.read_text())
    acc = rep["accuracy"]
    assert rep["smoke"] is True and acc["chosen"] in acc["report"]["variants"]
    v = acc["report"]["variants"]
    assert v["fp16-8px"]["recall_kept"] == 1.0 and v["fp16-8px"]["top100_overlap_with_fp16"] == 1.0
    assert v["int8-8px"]["fmap_bytes_per_image"] < 0.6 * v["fp16-8px"]["fmap_bytes_per_image"]
    assert v["pq-d2-16px"]["fmap_bytes_per_image"] < v["int8-8px"]["fmap_bytes_per_image"]
    for t in rep["timing"]["results"].values():
        assert all(_finite(t[k]["median"]) for k in ("fine_s", "fine_cpu_s", "parquet_read_s", "lance_read_s",
                                                     "decode_match_s"))


@pytest.mark.slow
@pytest.mark.long
def test_embed_scale_smoke(tmp_path):
    out = tmp_path / "embed_scale.json"
    _smoke("embed_scale.py", "--out", str(out))
    rep = json.loads(out.read_text())
    (run,) = rep["runs"]
    assert rep["smoke"] is True and run["n_embedded"] == run["n_images"] == 40
    assert run["driver_peak_rss_mib"] > 0 and run["worker_peak_rss_mib_max"] > 0 and run["images_per_s"] > 0
