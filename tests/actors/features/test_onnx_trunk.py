"""The backbone trunk under ONNX Runtime: the same features as PyTorch, picked for Lite0 on CPU, overridable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.features.backbones import get_backbone
from actors.features.encoder import RegionEncoder
from actors.features.onnx_trunk import ENV, OnnxTrunk, quantize_int8, trunk_runtime


def test_runtime_choice_and_override(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert trunk_runtime("efficientnet-lite0", "cpu") == "onnxruntime"
    assert trunk_runtime("efficientnet-lite0-ft", "cpu") == "onnxruntime"
    assert trunk_runtime("efficientnet-lite0", "cuda") == "torch"
    assert trunk_runtime("assay-small", "cpu") == "torch"
    monkeypatch.setenv(ENV, "torch")
    assert trunk_runtime("efficientnet-lite0", "cpu") == "torch"
    monkeypatch.setenv(ENV, "onnxruntime")
    assert trunk_runtime("assay-small", "cpu") == "onnxruntime" and trunk_runtime("assay-small", "cuda") == "torch"
    monkeypatch.setenv(ENV, "tensorrt")
    with pytest.raises(ValueError, match=ENV):
        trunk_runtime("assay-small", "cpu")


@pytest.mark.parametrize("hw", [(96, 128), (37, 61)])
def test_onnx_trunk_matches_the_torch_module_at_any_size(hw):
    ext = get_backbone("efficientnet-lite0", stride=16).eval()
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ext(x)
    got = OnnxTrunk(ext, threads=1)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert float((got - want).abs().max()) < 1e-3 * max(1.0, float(want.abs().max()))


def test_region_encoder_gives_the_same_cells_under_either_runtime():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)] + \
             [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)]
    ext = get_backbone("efficientnet-lite0", stride=16)
    onnx = RegionEncoder(ext, pool=1, device="cpu")
    ref = RegionEncoder(get_backbone("efficientnet-lite0", stride=16), pool=1, device="cpu", runtime="torch")
    assert (onnx.runtime, ref.runtime) == ("onnxruntime", "torch")
    for a, b in zip(onnx.encode_batch(images), ref.encode_batch(images)):
        assert a.fmap.shape == b.fmap.shape and (a.stride_y, a.stride_x) == (b.stride_y, b.stride_x)
        np.testing.assert_allclose(a.fmap, b.fmap, atol=1e-3 * max(1.0, float(np.abs(b.fmap).max())))
    with pytest.raises(ValueError, match="onnxruntime on cpu"):
        RegionEncoder(ext, device="cuda", runtime="onnxruntime")


def test_int8_quantized_trunk_stays_close_to_fp32_and_needs_calibration():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, 2, 1)).eval()
    fp32 = OnnxTrunk(net, threads=1)
    calib = [torch.rand(1, 3, 32, 48).numpy() for _ in range(4)]
    int8 = OnnxTrunk(None, 1, model=quantize_int8(fp32.model, calib))
    x = torch.rand(2, 3, 32, 48)
    a, b = fp32(x).flatten(1), int8(x).flatten(1)
    assert a.shape == b.shape and int8.model != fp32.model
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.98  # int8 rounding, not a different function
    assert quantize_int8(fp32.model, calib) == quantize_int8(fp32.model, calib)  # deterministic
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(fp32.model, [])
