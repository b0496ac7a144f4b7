"""Data-free (SPIQ-style) input ranges from normalisation statistics, and simulated int8 that stays close."""

from __future__ import annotations

import torch
import torch.nn as nn

from actors.compression.fold import fold_batchnorm
from actors.compression.quantize import fake_quantize, spiq_ranges


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x * 2.0 - 1.0)))
        b = nn.functional.relu6(self.b2(self.c2(a)))
        return self.c3(torch.cat([a, b + a], 1))


def test_ranges_follow_the_bn_statistics_through_activations_adds_and_concat():
    torch.manual_seed(0)
    net = Net().eval()
    for bn in (net.b1, net.b2):
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-1.0, 1.0)
    r = spiq_ranges(net, k=3.0)
    lo, hi = r["c1"]
    assert torch.allclose(lo, torch.full((3,), -1.0)) and torch.allclose(hi, torch.full((3,), 1.0))  # [0,1]*2-1
    b1 = (net.b1.bias - 3 * net.b1.weight.abs()).clamp(min=0), (net.b1.bias + 3 * net.b1.weight.abs()).clamp(min=0)
    assert torch.allclose(r["c2"][0], b1[0].detach()) and torch.allclose(r["c2"][1], b1[1].detach())
    b2hi = (net.b2.bias + 3 * net.b2.weight.abs()).clamp(0, 6).detach()
    assert r["c3"][0].shape == (16,) and torch.allclose(r["c3"][1][8:], b2hi + b1[1].detach())


def test_simulated_int8_with_data_free_ranges_stays_close_on_inputs_matching_the_statistics():
    torch.manual_seed(1)
    net = Net().eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():  # make the BN statistics those of this input distribution (what training leaves)
        a = net.c1(x * 2 - 1)
        net.b1.running_mean.copy_(a.mean((0, 2, 3)))
        net.b1.running_var.copy_(a.var((0, 2, 3)))
        b = net.c2(torch.relu(net.b1(a)))
        net.b2.running_mean.copy_(b.mean((0, 2, 3)))
        net.b2.running_var.copy_(b.var((0, 2, 3)))
    ranges = spiq_ranges(net)
    fold_batchnorm(net)
    fq, counts = fake_quantize(net, ranges)
    assert counts == {"static_inputs": 3, "dynamic_inputs": 0}
    with torch.no_grad():
        ref, got = net(x), fq(x)
    err = float((ref - got).abs().max() / ref.abs().max())
    assert 0 < err < 0.1  # quantised (not identical), yet close


class DepthwiseNet(nn.Module):
    """stem -> depthwise 3×3 -> pointwise: the inverted-residual pattern of the shipped trunk, BN already folded."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw, self.pw = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16), \
            nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))


def test_static_int8_formats_run_in_onnx_runtime_close_to_fp32_and_keep_depthwise_in_float(tmp_path):
    import numpy as np
    import onnx
    import pytest

    from actors.compression.export import export_onnx, onnx_session
    from actors.compression.quantize import depthwise_convs, quantize_static

    torch.manual_seed(0)
    src = export_onnx(DepthwiseNet(), str(tmp_path / "f.onnx"), (24, 32))
    assert len(depthwise_convs(src)) == 1
    rng = np.random.default_rng(0)
    calib = [rng.random((1, 3, 24, 32), dtype=np.float32) for _ in range(8)]
    x = calib[0]
    ref = onnx_session(src).run(None, {"images": x})[0]
    ops = {}
    for fmt, keep in (("qdq", False), ("qoperator", False), ("qdq", True), ("qoperator", True)):
        path = quantize_static(src, str(tmp_path / f"{fmt}-{keep}.onnx"), calib, fmt=fmt, keep_depthwise_float=keep)
        out = onnx_session(path).run(None, {"images": x})[0]
        rel = np.abs(out - ref).mean() / np.abs(ref).mean()
        assert 0 < rel < 0.05, (fmt, keep, rel)  # quantized (not bit-identical) and close (measured 0.019)
        g = onnx.load(path).graph
        ops[fmt, keep] = [n.op_type for n in g.node]
        dw = [n for n in g.node if n.op_type in ("Conv", "QLinearConv")
              and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        assert len(dw) == 1
        # the depthwise weight is an fp32 initializer exactly when it is kept in float (QDQ: a DequantizeLinear
        # output; QOperator: an int8 initializer of QLinearConv)
        w = {i.name: i.data_type for i in g.initializer}.get(dw[0].input[1 if dw[0].op_type == "Conv" else 3])
        assert (w == onnx.TensorProto.FLOAT) == keep, (fmt, keep, w)
    assert "QLinearConv" in ops["qoperator", False] and "QLinearConv" not in ops["qdq", False]
    assert "DequantizeLinear" in ops["qdq", False]
    with pytest.raises(ValueError, match="format"):
        quantize_static(src, str(tmp_path / "x.onnx"), calib, fmt="int4")
    with pytest.raises(ValueError, match="calibration"):
        quantize_static(src, str(tmp_path / "y.onnx"), [])
