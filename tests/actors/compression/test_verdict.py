"""The accuracy a compression costs is shown beside every speed-up, and a large drop is a one-line warning that
says what to change (#25 item 2)."""

from __future__ import annotations

import copy

import pytest

from actors.compression.verdict import MAX_MAP_DROP, accuracy_warnings, changes, drop_warning


def _model(p50: float, map50: float, n_images: int = 200) -> dict:
    return {"params": 1_000_000, "macs": 2e8, "file_bytes": 4_000_000, "file": "model.onnx",
            "latency_ms": {"p50": p50, "p95": p50 * 1.1}, "accuracy": {"map50": map50, "map": map50 / 2,
                                                                      "n_images": n_images}}


# a report as `assay compress` writes it, trimmed to what the summary reads: the run that went 6.9 -> 0.8 mAP@.5
REPORT = {"run": "r1", "detector": "dense-lite0", "device": "cpu-onnxruntime", "runtime": "onnxruntime",
          "threads": 1, "input_hw": [96, 128], "importance": "taylor",
          "config": {"latency": 0.5, "distill_steps": 1500, "head_epochs": 12, "protect_head": True, "ray": False,
                     "finetune_epochs": 2},
          "models": {"original": _model(30.0, 0.069), "compressed": _model(10.0, 0.008),
                     "compressed_int8": _model(6.0, 0.007)},
          "plan": {"full_ms": 30.0, "predicted_ms": 15.0, "target_ms": 15.0, "kept_importance": 0.8, "layers": {}},
          "fold": {"compressed": {"folded": [], "max_abs_diff": 0.0}}, "decoding": "outside the graph",
          "file_bytes": "each its own ONNX file"}


def test_every_variant_has_its_map_change_beside_its_speed_up():
    ch = changes(REPORT)
    assert ch["compressed"]["speedup"] == pytest.approx(3.0) and ch["compressed"]["points"] == pytest.approx(-6.1)
    assert ch["original"]["points"] == 0 and ch["compressed_int8"]["relative"] == pytest.approx(-0.062 / 0.069)


def test_a_drop_past_the_threshold_is_one_line_naming_what_to_change():
    (line, int8) = accuracy_warnings(REPORT)
    assert "\n" not in line and "6.1 points" in line and "6.9 -> 0.8" in line
    assert "--latency 0.7 (now 0.5)" in line and "--distill-steps (now 1500)" in line and "--head-epochs" in line
    assert "int8" in int8 and "model.onnx" in int8
    assert drop_warning("compressed", 0.50, 0.50 * (1 - MAX_MAP_DROP / 2)) is None  # a small change is no warning
    few = drop_warning("compressed", 0.5, 0.1, n_images=12)
    assert "only 12 val images" in few


def test_the_summary_table_shows_the_change_and_the_warning():
    from actors.compression.report import summary

    text = summary(REPORT).split("\n\nPruning plan")[0]
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("mAP@.5 change") == cols.index("speed-up") + 1
    row = next(line for line in text.splitlines() if line.startswith("| compressed |"))
    assert "| 3.00x | -6.1 |" in row
    assert any(line.startswith("warning: compressed lost 6.1 points") for line in text.splitlines())
    fine = copy.deepcopy(REPORT)
    fine["models"]["compressed"]["accuracy"]["map50"] = fine["models"]["compressed_int8"]["accuracy"]["map50"] = 0.068
    assert "warning" not in summary(fine)
