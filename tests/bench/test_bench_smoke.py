"""Every benchmark's ``--smoke`` runs end to end (in a subprocess when it starts Ray), writes its JSON into a
temporary folder with the keys the README and the full run rely on, and never touches the committed ``bench/*.json``.

(``bench/estimators.py`` has its own smoke test in ``test_estimators_smoke.py``.)
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _digests(stem: str) -> dict[str, str]:
    """Digests of the committed files this bench writes by default (``bench/<stem>.json`` / ``.md``); other
    benches' files are left out: in a shared working tree another bench may rewrite its own JSON meanwhile."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "bench").glob(f"{stem}.*")) if p.suffix in (".json", ".md")}


# benches that start no Ray instance run in the test's own process (no second interpreter and torch import, about
# 5 s each); their process-wide settings (torch and FAISS threads, environment, argv) are restored afterwards
IN_PROCESS = {"ingest.py", "backbone_quality.py", "targeted_selection.py", "feature_store.py",
              "targeted_selection_backbones.py", "selection_ceiling.py", "detector_ceiling.py"}


def _smoke(script: str, *args: str, timeout: int = 600) -> None:
    stem = Path(script).stem
    before = _digests(stem)
    assert f"{stem}.json" in before, f"bench/{stem}.json is not committed"
    if script in IN_PROCESS:
        _run_in_process(script, ["--smoke", *args])
    else:
        r = subprocess.run([sys.executable, f"bench/{script}", "--smoke", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=timeout, env=None)
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert _digests(stem) == before, "a --smoke run changed a committed bench JSON"


def _run_in_process(script: str, argv: list[str]) -> None:
    import os
    import runpy

    import faiss
    import torch

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    env, old_argv = dict(os.environ), sys.argv
    sys.argv = [str(ROOT / "bench" / script), *argv]
    try:
        runpy.run_path(str(ROOT / "bench" / script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (None, 0), f"bench/{script} exited with {e.code}"
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_detector_ceiling_smoke(tmp_path):
    _smoke("detector_ceiling.py", "--out-dir", str(tmp_path), "--detectors", "dense-lite0", "fcos-head-lite0")
    rep = json.loads((tmp_path / "detector_ceiling.json").read_text())
    assert rep["smoke"] is True and [r["detector"] for r in rep["runs"]] == ["dense-lite0", "fcos-head-lite0"]
    for r in rep["runs"]:
        assert r["n_train_images"] > 0 and r["train_s"] > 0
        for e in r["eval"].values():
            assert 0 <= e["map50"] <= 1 and set(e["by_area"]) == {"<1%", ">=1%"}
            assert sum(b["n_gt"] for b in e["by_area"].values()) == e["n_gt"]
    assert "| fcos-head-lite0 |" in (tmp_path / "detector_ceiling.md").read_text()


@pytest.mark.slow
def test_ingest_smoke(tmp_path):
    out = tmp_path / "ingest.json"
    _smoke("ingest.py", "--out", str(out))
    rep = json.loads(out.read_text())
    assert rep["smoke"] is True
    manifest, world = rep["results"]
    assert manifest["rows"] == 2000 and manifest["rows_per_s"] > 0 and manifest["baseline_rows_per_s"] > 0
    assert world["rows"] == 16 and world["errors"] == 0 and world["world_images"] == 16
    assert world["world_seconds"] > 0 and world["world_images_per_s"] > 0 and world["peak_rss_mib"] > 0


@pytest.mark.slow
def test_index_scale_smoke(tmp_path):
    out = tmp_path / "index_scale.json"
    _smoke("index_scale.py", "--out", str(out))
    rep = json.loads(out.read_text())
    (r,) = rep["results"]
    assert r["n"] == 5000 and r["factory"] == "IVF16,PQ8x4" and r["build_s"] > 0
    assert 0 < r["bytes_per_vector"] < 64 * 4  # compressed below raw fp32
    (p,) = r["by_nprobe"]
    assert p["qps"] > 0 and 0 < p["recall_at_10"] <= 1


@pytest.mark.slow
def test_backbone_quality_smoke(tmp_path):
    out = tmp_path / "bq.json"
    _smoke("backbone_quality.py", "--out", str(out))
    rep = json.loads(out.read_text())["current"]
    assert rep["smoke"] is True and rep["n_objects"] > 0 and rep["n_background"] > 0
    assert 0 <= rep["train"]["val_accuracy"] <= 1 and 0 < rep["train"]["majority"] <= 1
    for method in ("assay-small", "random-init", "mean-rgb", "chance"):
        assert 0 < rep["retrieval"][method]["mAP"] <= 1
    assert _finite(rep["ratio_vs_random_init"])


@pytest.mark.slow
@pytest.mark.long
def test_embed_smoke(tmp_path):
    out = tmp_path / "embed.json"
    _smoke("embed.py", "--out", str(out))
    rep = json.loads(out.read_text())
    assert rep["smoke"] is True and rep["images"] > 0 and len(rep["runs"]) == 1 and (tmp_path / "embed.md").exists()
    s = rep["summary"]
    for side in rep["sides"]:
        st = s[f"{side}_images_per_s"]
        assert _finite(st["median"]) and st["median"] > 0 and st["min"] <= st["median"] <= st["max"]
    run = rep["runs"][0]
    assert run["baseline"] in ("dataloader", "per_core")
    assert s["baseline_images_per_s"]["median"] == max(run["dataloader"]["images_per_s"], run["per_core"]["images_per_s"])
    assert run["ray"]["mode"] == "ray" and run["in_process"]["mode"] == "local" and run["ray"]["ray_init_s"] > 0
    lim = rep["cpu_limit"]
    assert lim["trunk_gflop_per_image"] > 0 and lim["peak_gflop_s"] > 0
    assert math.isclose(lim["limit_images_per_s"], lim["peak_gflop_s"] / lim["trunk_gflop_per_image"])
    assert s["default_path"]["side"] == "in_process"  # 24 images: below the in-process threshold


def test_selection_ceiling_smoke(tmp_path):
    _smoke("selection_ceiling.py", "--out-dir", str(tmp_path))
    rep = json.loads((tmp_path / "selection_ceiling.json").read_text())
    assert rep["smoke"] is True and rep["n_queries"] > 0 and set(rep["features"]) == {"s16", "crop"}
    for f in rep["features"].values():
        for b in f["by_size"].values():
            if b["queries"]:
                assert 0 <= b["nn1"] <= 1 and 0 <= b["p10"] <= 1 and 0 < b["chance_p10"] <= 1
        assert f["by_size"]["all"]["queries"] == rep["n_queries"]
    assert "| crop | all |" in (tmp_path / "selection_ceiling.md").read_text()


@pytest.mark.slow
def test_targeted_selection_smoke(tmp_path):
    _smoke("targeted_selection.py", "--out-dir", str(tmp_path))
    rep = json.loads((tmp_path / "targeted_selection.json").read_text())
    assert rep["smoke"] is True and rep["tune_seed"] != rep["report_seed"]
    assert rep["query_instances_held_out"] is True
    from actors.features.embed import DEFAULT_BACKBONE  # the product default, pretrained: nothing trained
    assert rep["backbone"] == DEFAULT_BACKBONE and rep["trained"] is False and "backbone" not in rep["report_world"]
    assert rep["report"]["store"]["store"].startswith(DEFAULT_BACKBONE + "-s16-")
    tried = rep["tuning"]["tried"]
    assert len(tried) >= 2 and rep["tuning"]["chosen"] in [{k: t[k] for k in rep["start"]} for t in tried]
    r = rep["report"]
    assert set(r["methods"]) == {"template", "dense", "coarse", "global", "patch-proposals"}
    ratios = r["ratios_recall100_small"]
    assert ratios["best_peer"] in ("global", "patch-proposals")
    assert ratios["template_over_best_peer"] == pytest.approx(
        r["methods"]["template"]["bins"]["<1%"]["recall@100"]
        / r["methods"][ratios["best_peer"]]["bins"]["<1%"]["recall@100"])
    n_pool = rep["n_pool"]
    for name, m in list(r["methods"].items()) + [("chance", r["chance"])]:
        b = m["bins"]["all"]
        assert b["n"] == r["n_queries"] > 0
        for k in (10, 50, 100):
            assert 0 <= b[f"precision@{k}"] <= 1 and 0 <= b[f"recall@{k}"] <= 1
            assert (b[f"loc@{k}"] is not None) == (name in ("template", "dense", "patch-proposals"))
    assert r["methods"]["template"]["rerank_ms_p50"] > 0 and r["methods"]["dense"]["rerank_ms_p50"] == 0
    assert r["chance"]["bins"]["all"]["recall@10"] == pytest.approx(min(10, n_pool) / n_pool)
    assert r["store"]["disk_bytes_per_image"] > 0 and r["store"]["index_region"]["n_vectors"] > 0
    assert (tmp_path / "targeted_selection.md").read_text().count("| chance |") == 5
    # the int8-trunk check on the same world and queries, merged into the same JSON
    _smoke("targeted_selection.py", "--out-dir", str(tmp_path), "--int8-trunk")
    i8 = json.loads((tmp_path / "targeted_selection.json").read_text())["int8_trunk"]
    assert i8["fp32"]["store"] != i8["int8"]["store"] and i8["calibration_images"] > 0
    assert i8["n_queries"] == r["n_queries"] and i8["int8"]["bins"]["all"]["n"] == r["n_queries"]
    assert i8["fp32"]["bins"] == r["methods"]["template"]["bins"]  # the same store, config and queries: same figures


@pytest.mark.slow
@pytest.mark.long
def test_demo_smoke(tmp_path):
    """bench/demo.py: a fresh `assay demo` process (60 images, a 2-round curve), timed from outside."""
    out = tmp_path / "demo.json"
    _smoke("demo.py", "--out", str(out))
    rep = json.loads(out.read_text())
    assert rep["smoke"] is True and rep["runs_n"] == len(rep["runs"]) == 1
    run = rep["runs"][0]
    assert run["wall_s"] >= run["demo_seconds"] > 0 and run["peak_rss_mib"] > 100
    assert set(run["step_seconds"]) == {"world", "learning curve", "embed + index", "mining", "compression"}
    assert rep["wall_s"]["median"] == run["wall_s"] and len(run["curve_labels"]) >= 3
    assert 0 <= run["curve_first_map50"] <= 100 and 0 <= run["curve_last_map50"] <= 100  # mAP@.5, %
