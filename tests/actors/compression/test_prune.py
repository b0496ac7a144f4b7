"""Knapsack optimality and budget, the LUT-driven plan, and pruned models that run and export."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from actors.compression.latency import LatencyLUT, build_lut, macs_timer
from actors.compression.prune import (Group, apply_plan, dependency_groups, latency_aware_prune, lut_ms_of,
                                      magnitude_prune, plan_pruning, score_groups, solve_knapsack)


def _brute(values, costs, budget):
    best, arg = -np.inf, None
    for pick in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[g][k] for g, k in enumerate(pick))
        v = sum(values[g][k] for g, k in enumerate(pick))
        if c <= budget + 1e-9 and v > best:
            best, arg = v, list(pick)
    return best, arg


def test_knapsack_picks_the_brute_force_optimum_on_small_cases():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_groups, n_opt = int(rng.integers(2, 5)), int(rng.integers(2, 5))
        costs = [sorted(rng.integers(0, 10, n_opt).tolist()) for _ in range(n_groups)]  # integer costs: exact bins
        values = [sorted(rng.random(n_opt).tolist()) for _ in range(n_groups)]
        budget = float(rng.integers(sum(c[0] for c in costs), sum(c[-1] for c in costs) + 1))
        best, _ = _brute(values, costs, budget)
        pick = solve_knapsack(values, costs, budget, bins=int(budget) if budget > 0 else 1)
        assert sum(costs[g][k] for g, k in enumerate(pick)) <= budget
        assert sum(values[g][k] for g, k in enumerate(pick)) == pytest.approx(best)


def test_knapsack_never_exceeds_the_budget_with_fractional_costs_and_refuses_an_impossible_one():
    rng = np.random.default_rng(1)
    for _ in range(30):
        costs = [rng.random(5).tolist() for _ in range(6)]
        values = [rng.random(5).tolist() for _ in range(6)]
        budget = float(rng.uniform(sum(min(c) for c in costs), sum(max(c) for c in costs)))
        pick = solve_knapsack(values, costs, budget, bins=500)
        assert sum(costs[g][k] for g, k in enumerate(pick)) <= budget + 1e-9
        best, _ = _brute(values, costs, budget)
        assert sum(values[g][k] for g, k in enumerate(pick)) >= best - 1.0  # at most one bin per group lost
    with pytest.raises(ValueError, match="budget"):
        solve_knapsack([[1.0, 2.0]], [[3.0, 4.0]], 2.0)


def _hand_lut() -> tuple[LatencyLUT, list[Group]]:
    """Two convs a -> b: latency linear in channels (a: 1 ms per out channel, b: 4 ms per in channel)."""
    lut = LatencyLUT("hand")
    grid = [1, 8, 16]
    lut.entries = {"A": {"cin": [3], "cout": grid, "ms": [[float(c) for c in grid]]},
                   "B": {"cin": grid, "cout": [4], "ms": [[4.0 * c] for c in grid]},
                   "C": {"cin": grid, "cout": [2], "ms": [[0.5 * c] for c in grid]}}
    lut.layers = {"a": "A", "b": "B", "c": "C"}
    lut.shapes = {"a": {"cin": 3, "cout": 16}, "b": {"cin": 16, "cout": 4}, "c": {"cin": 16, "cout": 2}}
    g1 = Group("a", 16, 1, {"a": 16}, {"b": 16}, [], np.linspace(1, 2, 16))  # a's outputs feed b
    g2 = Group("x", 16, 1, {}, {"c": 16}, [], np.full(16, 5.0))  # a cheap group with important channels
    return lut, [g1, g2]


def test_plan_respects_the_budget_on_a_hand_made_lut_and_prunes_where_latency_is():
    lut, groups = _hand_lut()
    full = lut.total_ms()
    assert full == pytest.approx(16 + 64 + 8)
    plan = plan_pruning(groups, lut, 0.5, round_to=4, min_keep=0.25)
    assert plan.predicted_ms <= 0.5 * full + 1e-9
    assert plan.keep["a"] < 16  # the expensive group is cut ...
    assert plan.keep["x"] == 16  # ... the cheap, important one is kept


class Tiny(nn.Module):
    """conv-BN-ReLU x2 (residual), a GN tower, three final convs: the shapes of the dense detector, small."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.exp = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.ReLU6(),
                                 nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), nn.ReLU6(),
                                 nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
        self.tower = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU())
        self.cls, self.box = nn.Conv2d(32, 3, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.exp(x)
        t = self.tower(x)
        return self.cls(t), self.box(t)


def test_pruned_model_runs_on_odd_sizes_keeps_gn_groups_whole_and_exports_to_matching_onnx(tmp_path):
    from actors.compression.export import export_onnx, onnx_session

    torch.manual_seed(0)
    net = Tiny().eval()
    x = torch.rand(1, 3, 32, 48)
    lut = build_lut(net, (32, 48), fractions=(0.25, 0.5, 1.0), timer=macs_timer)  # deterministic
    pruned = copy.deepcopy(net)
    plan = latency_aware_prune(pruned, x, lut, 0.5, ignored=[pruned.cls, pruned.box], round_to=4)
    assert plan.feasible and plan.predicted_ms <= plan.target_ms + 1e-9
    assert lut_ms_of(pruned, lut) == pytest.approx(plan.predicted_ms, rel=0.05)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in net.parameters())
    gn = pruned.tower[1]
    assert gn.num_channels % 8 == 0 and gn.num_channels // gn.num_groups == 8  # whole groups of 8 removed
    assert plan.layers  # per-layer plan: in/out before -> after
    for hw in ((31, 45), (17, 23), (64, 97)):
        cls, box = pruned(torch.rand(1, 3, *hw))
        assert cls.shape[1] == 3 and box.shape[1] == 4
    path = export_onnx(pruned, str(tmp_path / "p.onnx"), (32, 48))
    sess = onnx_session(path)
    for hw in ((31, 45), (40, 56)):
        xi = torch.rand(1, 3, *hw)
        with torch.no_grad():
            ref = pruned(xi)
        got = sess.run(None, {"images": xi.numpy()})
        assert all(np.abs(g - r.numpy()).max() < 1e-4 for g, r in zip(got, ref))


def test_taylor_importance_needs_a_loss_and_magnitude_baseline_prunes_uniformly():
    net = Tiny().eval()
    x = torch.rand(1, 3, 32, 48)
    _, groups = dependency_groups(net, x, [net.cls, net.box])
    with pytest.raises(ValueError, match="loss"):
        score_groups(groups, "taylor", net)
    score_groups(groups, "taylor", net, lambda m: sum(o.square().mean() for o in m(x)))
    assert all(np.isfinite(g.importance).all() and len(g.importance) == g.channels for _, g in groups)
    m = magnitude_prune(copy.deepcopy(net), x, 0.5, ignored=[net.cls, net.box])
    assert m.exp[0].out_channels < 48 and m.cls.out_channels == 3
