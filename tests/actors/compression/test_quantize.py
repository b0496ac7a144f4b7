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
