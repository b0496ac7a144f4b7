"""BN folding: outputs equal within 1e-4 on the chains a naive fold misses, and the unsafe chains left alone."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from actors.compression.fold import fold_batchnorm


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


class Chains(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8)  # conv with bias
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), FrozenBatchNorm2d(8)  # depthwise
        self.g, self.b3 = nn.Conv2d(8, 12, 1, groups=4), nn.BatchNorm2d(12)  # grouped, BN after interpolate
        self.t, self.b4 = nn.ConvTranspose2d(12, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6)  # transposed, grouped

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.dw(x)))
        x = self.b3(F.interpolate(self.g(x), scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.b4(self.t(F.relu(x)))


def test_folding_leaves_outputs_equal_on_the_chains_a_naive_fold_misses():
    m = _randomize(Chains())
    x = torch.randn(2, 3, 11, 13)
    ref = m(x)
    rep = fold_batchnorm(m, x)
    assert {b for _, b, _ in rep.folded} == {"b1", "b2", "b3", "b4"}
    assert not any(isinstance(mod, (nn.BatchNorm2d, FrozenBatchNorm2d)) for mod in m.modules())
    assert ("g", "b3", ["interpolate"]) in rep.folded
    assert rep.max_abs_diff is not None and rep.max_abs_diff < 1e-4
    assert (m(x) - ref).abs().max() < 1e-4


class Unsafe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)  # a ReLU in between: cannot fold
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # conv output also used by a skip: cannot fold
        self.c3, self.b3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # zero padding in between: cannot fold

    def forward(self, x):
        x = self.b1(F.relu(self.c1(x)))
        y = self.c2(x)
        x = self.b2(y) + y
        return self.b3(F.pad(self.c3(x), (1, 1, 1, 1)))


def test_unsafe_chains_are_skipped_and_outputs_still_match():
    m = _randomize(Unsafe(), seed=1)
    x = torch.randn(1, 3, 9, 9)
    ref = m(x)
    rep = fold_batchnorm(m, x)
    assert rep.folded == []
    assert sorted(b for b, _ in rep.skipped) == ["b1", "b2", "b3"]
    assert (m(x) - ref).abs().max() < 1e-5


def test_maxpool_passes_only_when_every_scale_is_positive():
    for sign, folds in ((1.0, True), (-1.0, False)):
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4)).eval()
        _randomize(m)
        m[2].weight.data = sign * m[2].weight.data.abs() + sign * 0.1
        x = torch.randn(1, 3, 10, 10)
        ref = m(x)
        rep = fold_batchnorm(m, x)
        assert bool(rep.folded) is folds
        assert (m(x) - ref).abs().max() < 1e-4


def test_timm_bn_act_keeps_its_activation_and_lite0_detector_folds_exactly():
    from actors.compression.net import tensor_module
    from actors.detection.models import get_detector

    net = tensor_module(get_detector("dense-lite0", ["a", "b"], random_init=True))
    _randomize(net, seed=2)
    x = torch.rand(1, 3, 64, 96)
    ref = net(x)
    rep = fold_batchnorm(net, x)
    assert len(rep.folded) >= 30 and not rep.skipped
    assert any(isinstance(mod, nn.ReLU6) for mod in net.modules())  # BatchNormAct2d -> its ReLU6, not Identity
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in net.modules())
    assert max(float((a - b).abs().max() / (b.abs().max() + 1)) for a, b in zip(net(x), ref)) < 1e-4
