"""compress_run's bookkeeping (#24 item 6): resumable checkpoints keyed by every option that changes the pruned
start, torch's thread count restored, file sizes that compare like with like."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from actors.compression.report import CompressConfig, compress_run, resume_tag
from actors.core.errors import UserError
from tests.apps.cli.test_compress import compressed  # noqa: F401 - the module's real `assay compress` run


@pytest.mark.parametrize("change", [{"lut": "grid"}, {"seed": 1}, {"protect_head": False}, {"measured_steps": 3},
                                    {"importance": "magnitude"}, {"latency": 0.6}])
def test_resume_key_changes_with_every_option_that_changes_the_pruned_start(change):
    base = CompressConfig()
    assert resume_tag(base) == resume_tag(CompressConfig())  # the same options resume
    assert resume_tag(dataclasses.replace(base, **change)) != resume_tag(base)


def test_compress_run_restores_torchs_thread_count(workspace, tmp_path):
    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    torch.set_num_threads(want)
    try:
        with pytest.raises(UserError):  # no checkpoint: fails after setting its own thread count
            compress_run(workspace, "nope", str(tmp_path / "o"), CompressConfig(threads=1))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_file_sizes_compare_onnx_files_and_say_what_they_count(compressed):  # noqa: F811
    root, out = compressed
    rep = json.loads((out / "report.json").read_text())
    m = rep["models"]
    assert m["original"]["file"].endswith(".onnx") and m["compressed"]["file"] == "model.onnx"
    ratio_params = m["original"]["params"] / m["compressed"]["params"]
    ratio_bytes = m["original"]["file_bytes"] / m["compressed"]["file_bytes"]
    assert ratio_params > 1 and ratio_bytes == pytest.approx(ratio_params, rel=0.25)  # fp32 weights dominate
    assert m["original"]["checkpoint_bytes"] > 0 and "like with like" in rep["file_bytes"]
    text = (out / "summary.md").read_text()
    assert "| ONNX MB |" in text and "training checkpoint" in text
