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


def test_stream_images_keeps_images_whole_across_chunks(monkeypatch):
    """Images straddling the generator's chunks get their vectors in stream order, so a hit's (image, row, col)
    maps back to its global vector number (what recall and the equality check rely on)."""
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import index_scale
    import index_sharded

    monkeypatch.setattr(index_sharded, "CHUNK", 1000)
    c = index_scale.centres()
    imgs = list(index_sharded.stream_images(c, 3500, 48))
    ref = np.concatenate([index_scale.chunk(c, s, min(1000, 3500 - s)) for s in range(0, 3500, 1000)])
    np.testing.assert_array_equal(np.concatenate([i[1] for i in imgs]), ref)
    assert [i[0] for i in imgs] == index_sharded.image_ids(0, 73) and len(set(i[0] for i in imgs)) == 73
    gid = [k * 48 + r * 7 + col for k, im in enumerate(imgs) for r, col in zip(im[2], im[3])]
    assert gid == list(range(3500))
