"""Latency-aware structured pruning (HALP-style, implemented from the paper) on Torch-Pruning's dependency graph.

1. **Groups.** Torch-Pruning's ``DependencyGraph`` gives every set of coupled channels (a conv's outputs plus the
   BN/GN, depthwise conv, concat slice, residual partners and next convs' inputs that must shrink with them). The
   final prediction convs are ignored (their outputs are the model's outputs). A group holding a ``GroupNorm``
   keeps or drops whole normalisation groups (``unit`` channels), and the GN's ``num_groups`` is set to what is
   left, so the statistics of every kept group are unchanged.
2. **Importance** per channel, from Torch-Pruning's importance functions: ``"taylor"`` (|w·∂L/∂w| summed over the
   group; needs a loss) or ``"magnitude"`` (L2 of the group's weights, normalised by the group mean).
3. **Knapsack.** Each group chooses how many channels to keep (multiples of ``round_to``, at least ``min_keep``);
   value = summed importance of the channels kept (top-k), cost = latency of the layers the group touches, read
   from the device LUT (:mod:`~actors.compression.latency`) at the neighbours' current widths. A multiple-choice
   knapsack (:func:`solve_knapsack`, DP over latency discretised with *rounding up*, so the budget holds exactly
   for the discretised costs) maximises kept importance under the budget. As in HALP the costs depend on the
   neighbours' widths, so the solve is repeated around the last solution; a plan whose exact LUT latency exceeds
   the budget tightens it and is never returned.
4. **Removal.** The chosen channels are physically removed (``group.prune``): only removed channels change latency.

The baseline is Torch-Pruning's own ``MagnitudePruner`` (uniform ratio, same ignored layers) with its ratio found
by bisection so that its LUT latency equals the latency-aware plan's (:func:`magnitude_prune`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from actors.compression.latency import LatencyLUT

_IMPORTANCES = ("taylor", "magnitude")


def list_importances() -> list[str]:
    """Names accepted by ``importance=``."""
    return list(_IMPORTANCES)


# ------------------------------------------------------------------------------------------ knapsack
def solve_knapsack(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
                   bins: int = 2000) -> list[int]:
    """Multiple-choice knapsack: one option per group, maximise summed value with summed cost <= ``budget``.

    Costs are discretised into ``bins`` steps of ``budget / bins`` rounding up, so the returned choice's true
    cost never exceeds the budget (the optimum may be missed by at most one step per group). Raises ValueError
    when even the cheapest options exceed the budget.
    """
    if budget < 0 or any(min(c) > budget for c in costs if len(c)):
        raise ValueError(f"no choice fits the latency budget {budget:.4g}")
    step = budget / bins if budget > 0 else 1.0
    neg = -np.inf
    dp = np.full(bins + 1, neg)
    dp[0] = 0.0
    back = np.zeros((len(values), bins + 1), np.int64)
    for g, (vs, cs) in enumerate(zip(values, costs)):
        new = np.full(bins + 1, neg)
        arg = np.zeros(bins + 1, np.int64)
        for k, (v, c) in enumerate(zip(vs, cs)):
            w = int(math.ceil(c / step - 1e-9)) if c > 0 else 0
            if w > bins:
                continue
            cand = np.full(bins + 1, neg)
            cand[w:] = dp[:bins + 1 - w] + v
            better = cand > new
            new[better], arg[better] = cand[better], k
        dp, back[g] = new, arg
    b = int(np.argmax(dp))
    if not np.isfinite(dp[b]):
        raise ValueError(f"no choice fits the latency budget {budget:.4g}")
    choice = [0] * len(values)
    for g in range(len(values) - 1, -1, -1):
        k = int(back[g, b])
        choice[g] = k
        c = costs[g][k]
        b -= int(math.ceil(c / step - 1e-9)) if c > 0 else 0
    return choice


# ------------------------------------------------------------------------------------------ groups
@dataclass
class Group:
    """One set of coupled channels: root conv, channel count, GN unit, the convs it shrinks (path -> channels)."""

    root: str
    channels: int
    unit: int
    out_layers: dict[str, int]
    in_layers: dict[str, int]
    gns: list[str]
    importance: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    segments: list[list[int]] = field(default_factory=list)  # channel ranges of concatenated producers

    def keep_idxs(self, k: int) -> list[int]:
        """The ``k`` most important channels (whole GN units when ``unit > 1``), sorted. A group that spans a
        concatenation keeps channels in every producer in proportion to its size (never empties a branch)."""
        imp = self.importance
        if self.segments:
            out: list[int] = []
            for seg in self.segments:
                n = max(1, min(len(seg), int(round(k * len(seg) / self.channels))))
                top = np.argsort(-imp[seg], kind="stable")[:n]
                out += [seg[int(i)] for i in top]
            return sorted(out)
        if self.unit > 1:
            units = imp.reshape(-1, self.unit).sum(1)
            top = np.argsort(-units, kind="stable")[: k // self.unit]
            return sorted(int(u * self.unit + j) for u in top for j in range(self.unit))
        return sorted(int(i) for i in np.argsort(-imp, kind="stable")[:k])

    def value(self, k: int) -> float:
        return float(self.importance[self.keep_idxs(k)].sum())


def _names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def dependency_groups(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module]
                      ) -> tuple[Any, list[tuple[Any, Group]]]:
    """Torch-Pruning's graph and its prunable groups (conv roots), each with our :class:`Group` summary."""
    import torch_pruning as tp

    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(True)  # the graph is traced through autograd
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    names = _names(model)
    out = []
    for grp in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=[nn.Conv2d]):
        root = grp[0].dep.target.module
        n = len(grp[0].idxs)
        outs, ins, gns, unit, segments = {}, {}, [], 1, []
        for item in grp:
            m, fn = item.dep.target.module, item.dep.handler
            if isinstance(m, nn.Conv2d):
                (outs if dg.is_out_channel_pruning_fn(fn) else ins)[names[m]] = len(item.idxs)
                if dg.is_out_channel_pruning_fn(fn) and len(item.idxs) < n:
                    seg = sorted(int(i) for i in item.root_idxs)
                    if seg not in segments:
                        segments.append(seg)
            elif isinstance(m, nn.GroupNorm) and m.num_groups > 1:
                gns.append(names[m])
                unit = max(unit, m.num_channels // m.num_groups)
        covered = sorted(i for seg in segments for i in seg)
        if covered != list(range(n)):  # producers that do not tile the group: no per-branch constraint
            segments = []
        out.append((grp, Group(names[root], n, unit, outs, ins, gns, segments=segments)))
    return dg, out


def score_groups(groups: list[tuple[Any, Group]], importance: str, model: nn.Module,
                 loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> None:
    """Fill each group's per-channel importance (``taylor`` runs ``loss_fn(model).backward()`` first)."""
    import torch_pruning as tp

    if importance not in _IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; known: {', '.join(_IMPORTANCES)}")
    if importance == "taylor":
        if loss_fn is None:
            raise ValueError("taylor importance needs a loss (calibration images with labels)")
        flags = {p: p.requires_grad for p in model.parameters()}
        model.requires_grad_(True).zero_grad()
        loss_fn(model).backward()
        imp = tp.importance.GroupTaylorImportance(normalizer=None)
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer="mean")
    for grp, g in groups:
        g.importance = imp(grp).detach().double().cpu().numpy()
    if importance == "taylor":
        model.zero_grad(set_to_none=True)
        for p, f in flags.items():
            p.requires_grad_(f)


# ------------------------------------------------------------------------------------------ plan
@dataclass
class PrunePlan:
    """Channels kept per group (root conv path), with what the knapsack saw and the LUT's latency prediction."""

    keep: dict[str, int]
    channels: dict[str, int]
    importance: str
    target_ms: float
    full_ms: float
    predicted_ms: float
    kept_importance: float
    feasible: bool = True
    layers: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_widths(groups: Sequence[Group], keep: dict[str, int], lut: LatencyLUT) -> dict[str, tuple[int, int]]:
    """(cin, cout) per conv of the LUT when each group keeps ``keep[root]`` channels (fractional slices for
    layers that see part of a group, e.g. a concat)."""
    cut_in: dict[str, float] = {}
    cut_out: dict[str, float] = {}
    for g in groups:
        frac = 1.0 - keep.get(g.root, g.channels) / g.channels
        for p, n in g.in_layers.items():
            cut_in[p] = cut_in.get(p, 0.0) + n * frac
        for p, n in g.out_layers.items():
            cut_out[p] = cut_out.get(p, 0.0) + n * frac
    out = {}
    for p, s in lut.shapes.items():
        dw = lut.entries[lut.layers[p]].get("dw", False)
        cout = s["cout"] - cut_out.get(p, 0.0)
        cin = cout if dw else s["cin"] - cut_in.get(p, 0.0)
        out[p] = (max(1, int(round(cin))), max(1, int(round(cout))))
    return out


def _choices(g: Group, round_to: int, min_keep: float) -> list[int]:
    step = g.unit if g.unit > 1 else max(1, min(round_to, g.channels))
    lo = max(step, int(math.ceil(min_keep * g.channels / step)) * step)
    ks = list(range(lo, g.channels + 1, step))
    return ks if ks and ks[-1] == g.channels else ks + [g.channels]


def plan_pruning(groups: Sequence[Group], lut: LatencyLUT, latency: float, *, round_to: int = 8,
                 min_keep: float = 0.125, iterations: int = 6, importance: str = "magnitude") -> PrunePlan:
    """The knapsack plan keeping ``latency`` × the full model's LUT latency (see the module docstring)."""
    full_ms = lut.total_ms()
    target = latency * full_ms
    options = [_choices(g, round_to, min_keep) for g in groups]
    values = [[g.value(k) for k in ks] for g, ks in zip(groups, options)]
    touched = [set(g.in_layers) | set(g.out_layers) for g in groups]
    cur = {g.root: g.channels for g in groups}
    best: tuple[float, dict[str, int]] | None = None
    budget = target
    for _ in range(iterations):
        base = lut.total_ms(layer_widths(groups, cur, lut))
        costs, offset = [], 0.0
        for g, ks, lay in zip(groups, options, touched):
            cs = []
            for k in ks:
                w = layer_widths(groups, {**cur, g.root: k}, lut)
                cs.append(sum(lut.layer_ms(p, *w[p]) for p in lay if p in w))
            now = sum(lut.layer_ms(p, *layer_widths(groups, cur, lut)[p]) for p in lay if p in lut.shapes)
            lo = min(cs)
            offset += now - lo
            costs.append([c - lo for c in cs])
        room = budget - (base - offset)  # linearised: total ~ base + sum_g (c_g(k) - c_g(cur))
        try:
            pick = solve_knapsack(values, costs, max(room, 0.0))
        except ValueError:
            pick = [0] * len(groups)
        keep = {g.root: ks[i] for g, ks, i in zip(groups, options, pick)}
        exact = lut.total_ms(layer_widths(groups, keep, lut))
        value = sum(v[i] for v, i in zip(values, pick))
        if exact <= target and (best is None or value > best[0]):
            best = (value, keep)
        elif exact > target:
            budget -= exact - target
        cur = keep
    if best is None:  # the narrowest plan; feasible only if it meets the target (reported either way)
        best = (sum(v[0] for v in values), {g.root: ks[0] for g, ks in zip(groups, options)})
    keep = best[1]
    predicted = lut.total_ms(layer_widths(groups, keep, lut))
    feasible = predicted <= target + 1e-9
    return PrunePlan(keep=keep, channels={g.root: g.channels for g in groups}, importance=importance,
                     target_ms=target, full_ms=full_ms, predicted_ms=predicted,
                     kept_importance=best[0] / max(1e-12, sum(v[-1] for v in values)), feasible=feasible)


def apply_plan(model: nn.Module, groups: list[tuple[Any, Group]], plan: PrunePlan) -> dict[str, dict[str, int]]:
    """Physically remove the channels ``plan`` drops; returns per-layer (conv) in/out channels before -> after."""
    names = dict(model.named_modules())
    before = {p: (m.in_channels, m.out_channels) for p, m in names.items() if isinstance(m, nn.Conv2d)}
    for grp, g in groups:
        k = plan.keep.get(g.root, g.channels)
        if k >= g.channels:
            continue
        keep = set(g.keep_idxs(k))
        drop = [i for i in range(g.channels) if i not in keep]
        grp.prune(idxs=drop)
        for p in g.gns:
            gn = names[p]
            gn.num_groups = gn.num_channels // g.unit
    layers = {}
    for p, m in names.items():
        if isinstance(m, nn.Conv2d) and (m.in_channels, m.out_channels) != before[p]:
            layers[p] = {"in": before[p][0], "out": before[p][1], "in_kept": m.in_channels, "out_kept": m.out_channels}
    plan.layers = layers
    return layers


def latency_aware_prune(model: nn.Module, example: torch.Tensor, lut: LatencyLUT, latency: float, *,
                        ignored: Sequence[nn.Module] = (), importance: str = "magnitude",
                        loss_fn: Callable[[nn.Module], torch.Tensor] | None = None, round_to: int = 8,
                        min_keep: float = 0.125, scores: dict[str, np.ndarray] | None = None) -> PrunePlan:
    """Score, plan and prune ``model`` in place to ``latency`` × its LUT latency; returns the plan.

    ``scores`` (root path -> per-channel importance, e.g. :func:`group_scores` of an identical model) skips the
    scoring, so several budgets share one Taylor pass."""
    _, groups = dependency_groups(model, example, ignored)
    if scores is not None:
        for _, g in groups:
            g.importance = np.asarray(scores[g.root], np.float64)
    else:
        score_groups(groups, importance, model, loss_fn)
    plan = plan_pruning([g for _, g in groups], lut, latency, round_to=round_to, min_keep=min_keep,
                        importance=importance)
    apply_plan(model, groups, plan)
    return plan


def group_scores(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module], importance: str,
                 loss_fn: Callable[[nn.Module], torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Per-channel importance of every group of ``model`` (root path -> array), without pruning."""
    _, groups = dependency_groups(model, example, ignored)
    score_groups(groups, importance, model, loss_fn)
    return {g.root: g.importance for _, g in groups}


def normalize_scores(scores: dict[str, np.ndarray], how: str = "mean") -> dict[str, np.ndarray]:
    """Per-group normalised importance, so that groups compare in the knapsack: raw Taylor scores scale with a
    layer's weight and gradient magnitudes, which differ by orders of magnitude across depth. ``"mean"``: each
    group divided by its mean (a group's total value = its channel count, Torch-Pruning's default normaliser);
    ``"sum"``: each group sums to 1; ``"none"``: unchanged."""
    if how == "none":
        return dict(scores)
    if how not in ("mean", "sum"):
        raise ValueError(f"unknown normalisation {how!r}; known: none, mean, sum")
    out = {}
    for k, v in scores.items():
        v = np.asarray(v, np.float64)
        d = float(v.mean() if how == "mean" else v.sum())
        out[k] = v / d if d > 0 else np.ones_like(v)
    return out


def lut_ms_of(model: nn.Module, lut: LatencyLUT) -> float:
    """LUT latency of ``model`` at its current conv widths (paths as when the LUT was built)."""
    names = dict(model.named_modules())
    return lut.total_ms({p: (names[p].in_channels, names[p].out_channels) for p in lut.shapes if p in names})


def magnitude_prune(model: nn.Module, example: torch.Tensor, ratio: float, *, ignored: Sequence[nn.Module] = (),
                    round_to: int = 8) -> nn.Module:
    """Torch-Pruning's ``MagnitudePruner`` (L2 group magnitude, uniform ``ratio`` per layer), in place."""
    import torch_pruning as tp

    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(True)
    try:
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=list(ignored), round_to=round_to)
        pruner.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def magnitude_prune_to(make: Callable[[], nn.Module], example: torch.Tensor, lut: LatencyLUT, target_ms: float, *,
                       ignored: Callable[[nn.Module], Sequence[nn.Module]], round_to: int = 8, steps: int = 5
                       ) -> tuple[nn.Module, float]:
    """The magnitude baseline at ``target_ms`` LUT latency: bisection on the uniform ratio; (model, ratio).

    ``make()`` returns a fresh copy to prune; ``ignored(model)`` its final layers. The returned model is the
    fastest-not-above-target trial (or the closest one when none fits).
    """
    lo, hi, best = 0.0, 0.7, None  # LUT latency stops falling past ~0.7 (floors of unprunable layers)
    for _ in range(steps):
        r = (lo + hi) / 2
        m = make()
        magnitude_prune(m, example, r, ignored=ignored(m), round_to=round_to)
        ms = lut_ms_of(m, lut)
        if ms <= target_ms:
            best, hi = (m, r, ms), r
        else:
            lo = r
    if best is None:
        m = make()
        magnitude_prune(m, example, hi, ignored=ignored(m), round_to=round_to)
        best = (m, hi, lut_ms_of(m, lut))
    return best[0], best[1]


__all__ = ["list_importances", "solve_knapsack", "Group", "dependency_groups", "score_groups", "PrunePlan",
           "layer_widths", "plan_pruning", "apply_plan", "latency_aware_prune", "group_scores", "normalize_scores",
           "lut_ms_of",
           "magnitude_prune",
           "magnitude_prune_to"]
