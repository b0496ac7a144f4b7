"""`assay demo` end to end on a tiny world: every step runs, writes its outputs, and a re-run resumes."""

from __future__ import annotations

import json

import pytest

from apps.cli.main import main


@pytest.mark.long
def test_demo_runs_every_step_and_resumes(tmp_path, capsys, ray_cluster, monkeypatch):
    from apps.cli import demo as demo_mod

    # the curve's plumbing on a 60-image world (18 train images), not the default world's 5/35/65 images at 200
    # steps a round: on so few images that curve can be flat, which the estimate step rightly refuses
    monkeypatch.setattr(demo_mod, "DEMO_LEARN", dict(initial=20, budget=20, rounds=2, min_steps=0, epochs=6))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--images", "60", "--top-k", "5", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["catalog"]["images"] == 60
    assert result["seconds"] > 0  # the demo's total wall time, printed as "demo finished in ...s"
    steps = result["step_seconds"]
    assert set(steps) == {"world", "learning curve", "embed + index", "mining", "compression"}
    assert all(v >= 0 for v in steps.values()) and sum(steps.values()) <= result["seconds"] + 1
    assert len(result["curve"]["n"]) >= 3 and result["curve"]["n"] == sorted(result["curve"]["n"])
    for method in ("template", "global"):
        sel = result["mine"][method]
        assert 1 <= len(sel["hits"]) <= 5
        assert (out / "workspace" / "selections" / f"{sel['query_id']}.parquet").exists()
    template = result["mine"]["template"]
    assert 0 < result["mine"]["chance"] <= 1 and 0 <= template["precision"] <= 1
    assert template["sheet"].endswith(f"{template['query_id']}.png")  # the hits you can look at
    from PIL import Image

    assert Image.open(template["sheet"]).size[0] > 0
    assert len(result["estimate"]["plan"]["totals"]) == 3
    assert result["embed"]["n_embedded"] == result["catalog"]["images_by_split"]["pool"]["ok"]
    cm = result["compress"]["models"]  # the detector compressed at the end, measured before/after
    assert cm["compressed"]["macs"] < cm["original"]["macs"] and cm["compressed"]["params"] < cm["original"]["params"]
    for m in cm.values():
        assert m["latency_ms"]["p50"] > 0 and m["latency_ms"]["p95"] >= m["latency_ms"]["p50"]
        assert 0 <= m["accuracy"]["map50"] <= 1 and 0 <= m["accuracy"]["map"] <= m["accuracy"]["map50"] + 1e-9
    assert (out / "workspace" / "runs" / "demo-learn" / "compressed" / "model.onnx").exists()

    # a second run recomputes nothing: world, backbone, curve and feature shards are reused
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["embed"]["n_embedded"] == 0 and again["embed"]["shards_skipped"] >= 1
    assert again["curve"] == result["curve"]
    assert again["compress"] == result["compress"]
