"""Whole-graph LUT calibration and the measured-latency outer loops (actors.compression.calibrate)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from actors.compression.calibrate import (calibrate_lut, magnitude_to_measured, node_to_conv, plan_to_measured,
                                          profile_convs, scope_path)
from actors.compression.latency import build_lut, macs_timer


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                                  nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.out = nn.Conv2d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny().eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_var.uniform_(0.5, 2)
            bn.running_mean.uniform_(-1, 1)
    return m


def test_scope_paths_of_onnx_runtime_node_names_map_back_to_convs():
    assert scope_path("/trunk/trunk.0/low/low.1/low.1.0/bn1/act/Clip_output_0_nchwc") == "trunk.0.low.1.0.bn1.act"
    assert scope_path("/head/tower/tower.0/Conv_output_0_nchwc") == "head.tower.0"
    convs = ["trunk.0.low.1.0.conv_pw", "trunk.0.low.1.0.conv_pwl", "head.tower.0"]
    bn = {"trunk.0.low.1.0.bn1": "trunk.0.low.1.0.conv_pw"}
    assert node_to_conv("/trunk/trunk.0/low/low.1/low.1.0/bn1/act/Clip_output_0_nchwc", convs, bn) == convs[0]
    assert node_to_conv("/trunk/trunk.0/low/low.1/low.1.0/conv_pwl/Conv_output_0_nchwc", convs, bn) == convs[1]
    assert node_to_conv("/head/tower/tower.0/Conv", convs, bn) == "head.tower.0"
    assert node_to_conv("cls_nchwc", convs, bn) is None


def test_profile_attributes_every_fused_conv_and_calibration_reproduces_it():
    m = _tiny()
    hw = (32, 48)
    prof = profile_convs(m, hw, runs=3)
    convs = [n for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    assert set(prof["convs"]) <= set(convs) and {"body.0", "body.3", "body.6"} <= set(prof["convs"])
    assert all(v > 0 for v in prof["convs"].values())
    lut = build_lut(m, hw, device="macs", timer=macs_timer)
    cal = calibrate_lut(lut, prof)
    for p, ms in prof["convs"].items():  # full width costs what the whole-graph profile measured
        s = lut.shapes[p]
        assert cal.layer_ms(p, s["cin"], s["cout"]) == pytest.approx(ms)
    assert cal.offset_ms == pytest.approx(prof["other_ms"])
    s = lut.shapes["body.6"]  # the grid's shape is kept: half the output channels, half the (MACs) cost
    assert cal.layer_ms("body.6", s["cin"], s["cout"] // 2) == pytest.approx(prof["convs"]["body.6"] / 2, rel=0.05)
    whole = calibrate_lut(lut, prof, whole_ms=10.0)
    assert whole.total_ms() == pytest.approx(10.0)
    assert lut.scale == {} and lut.offset_ms == 0.0  # the raw LUT is untouched


def test_outer_loop_meets_a_measured_target_the_lut_misjudges():
    # the "measured" ratio is far from the LUT budget (a floor of 0.35 and a slope of 0.5): budget 0.5 measures 0.6
    measure = lambda net: 0.35 + 0.5 * net.budget  # noqa: E731

    def prune(net, b):
        net.budget = b
        return {"budget": b}
    net, plan, hist = plan_to_measured(lambda: nn.Identity(), prune, 0.5, measure, tol=0.01)
    assert hist[0]["budget"] == 0.5 and hist[0]["measured"] == pytest.approx(0.6)
    assert measure(net) <= 0.51 and measure(net) >= 0.49 and plan["budget"] == pytest.approx(0.3, abs=0.03)
    assert len(hist) <= 6
    # an unreachable target returns the closest model, and every step is recorded
    net, _, hist = plan_to_measured(lambda: nn.Identity(), prune, 0.2, measure, iterations=4)
    assert len(hist) == 4 and measure(net) == min(h["measured"] for h in hist)


def test_magnitude_baseline_is_bisected_on_the_measured_ratio():
    base = _tiny()
    full = sum(p.numel() for p in base.parameters())
    measure = lambda net: sum(p.numel() for p in net.parameters()) / full  # noqa: E731  (a stand-in meter)
    net, ratio, hist = magnitude_to_measured(lambda: copy.deepcopy(base), torch.rand(1, 3, 32, 48), 0.6, measure,
                                             ignored=lambda m: [m.out], round_to=1, tol=0.1)
    assert 0 < ratio < 0.9 and len(hist) >= 1
    assert measure(net) <= 0.7 and abs(measure(net) - 0.6) == min(abs(h["measured"] - 0.6) for h in hist
                                                                   if h["measured"] <= 0.7)
    assert net(torch.rand(1, 3, 32, 48)).shape == (1, 5, 16, 24)
