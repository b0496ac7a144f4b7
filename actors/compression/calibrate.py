"""Latency budgets met in *measured* whole-model latency of the shipped runtime (ONNX Runtime, CPU).

The per-layer LUT (:mod:`~actors.compression.latency`) times every conv alone, in a one-node ONNX graph. Summed,
those times are far from the whole model's (on the benchmark's EfficientNet-Lite0 detector: 111 ms summed vs
39 ms measured) and, worse, not uniformly so: inside the whole graph ONNX Runtime fuses conv + BN + activation and
keeps the blocked (NCHWc) layout between convs, so high-resolution depthwise convs cost 3-4× less than alone while
the stem costs more. A knapsack on such a LUT cuts the layers it over-prices and misses its budget (a plan
predicted at 0.43 of the full LUT measured 0.79 of the full model). Two fixes, used together:

1. **Calibration in whole-graph context** (:func:`profile_convs`, :func:`calibrate_lut`): the unpruned model is
   exported and run with ONNX Runtime's profiler; each conv node's kernel time is mapped back to its PyTorch layer
   (node names carry the module scope; a fused ``conv -> BN(+act)`` node is named after the BN, mapped to its conv
   through the BN-folding pairs), and each LUT layer gets a scale = in-graph time / one-node time at full width
   (the shape of its channel grid stays the LUT's). What the profile does not attribute to convs (resize, concat,
   layout reorders, normalisation) becomes the LUT's constant ``offset_ms``; the total is scaled to the measured
   whole-model p50, so a budget of 0.5 means half of the measured model.
2. **An outer loop on measured latency** (:func:`plan_to_measured`): plan at a LUT budget, prune a fresh copy,
   export it, time it against the original in alternating rounds (:func:`ratio_meter`), move the budget by the
   measured/target ratio inside a bisection bracket, a few iterations; the plan returned is the best one whose
   measured ratio meets the target (within ``tol``), with every iteration recorded.

The magnitude baseline is matched the same way (:func:`magnitude_to_measured`): Torch-Pruning's MagnitudePruner,
its uniform ratio bisected on the measured latency ratio, not the LUT's.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from actors.compression.latency import LatencyLUT

Meter = Callable[[nn.Module], float]  # network -> measured latency ratio vs the reference model


def scope_path(node_name: str) -> str:
    """PyTorch module path of an ONNX (or ONNX Runtime) node name from ``torch.onnx.export``'s scopes:
    ``/trunk/trunk.0/low/low.1/low.1.0/bn1/act/Clip_output_0_nchwc`` -> ``trunk.0.low.1.0.bn1.act``."""
    parts = [p for p in node_name.split("/") if p][:-1]  # the last part is the op
    path: list[str] = []
    for p in parts:
        if path and p.startswith(path[-1] + "."):
            path[-1] = p
        else:
            path.append(p)
    return ".".join(path)


def node_to_conv(node_name: str, convs: Sequence[str], bn_to_conv: dict[str, str],
                 order: Sequence[str] = ()) -> str | None:
    """The conv layer an ONNX Runtime Conv node computes (None when the name does not say): the node's scope is a
    conv, a BN folded into one (``bn_to_conv``), or a module fused after them (an activation): then the nearest
    conv before it in module order ``order`` (``named_modules`` names)."""
    path = scope_path(node_name)
    while path:
        if path in convs:
            return path
        if path in bn_to_conv:
            return bn_to_conv[path]
        if path in order:
            conv_set = set(convs)
            for name in reversed(order[:list(order).index(path)]):
                if name in conv_set:
                    return name
            return None
        path = path.rpartition(".")[0]
    return None


def profile_convs(net: nn.Module, hw: tuple[int, int], *, threads: int = 1, runs: int = 10,
                  workdir: str | None = None) -> dict[str, Any]:
    """Whole-graph ONNX Runtime profile of ``net`` (unfolded: ONNX Runtime folds BN itself): median kernel ms per
    conv layer (``convs``), the rest (``other_ms``), unattributed Conv nodes (``unmapped``)."""
    from actors.compression.export import export_onnx, onnx_session
    from actors.compression.fold import fold_batchnorm

    probe = copy.deepcopy(net).eval()
    pairs = fold_batchnorm(probe).folded
    bn_to_conv = {bn: conv for conv, bn, _ in pairs}
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    order = [n for n, _ in net.named_modules()]
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = export_onnx(net, os.path.join(d, "model.onnx"), hw)
        sess = onnx_session(path, threads, profile_prefix=os.path.join(d, "prof"))
        x = np.random.rand(1, 3, *hw).astype(np.float32)
        for _ in range(runs + 2):
            sess.run(None, {"images": x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per: dict[str, list[list[float]]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], [[], e["args"].get("op_name", "")])[0].append(
                e["dur"] / 1000)
    out: dict[str, float] = {}
    other, unmapped = 0.0, []
    for name, (ts, op) in per.items():
        ms = float(np.median(ts[2:] if len(ts) > 4 else ts))
        conv = node_to_conv(name, convs, bn_to_conv, order) if op in ("Conv", "FusedConv") else None
        if conv is None:
            other += ms
            if op in ("Conv", "FusedConv"):
                unmapped.append(name)
        else:
            out[conv] = out.get(conv, 0.0) + ms
    return {"convs": out, "other_ms": other, "unmapped": unmapped}


def calibrate_lut(lut: LatencyLUT, profile: dict[str, Any], whole_ms: float | None = None) -> LatencyLUT:
    """A copy of ``lut`` whose layers cost what :func:`profile_convs` measured in the whole graph at full width
    (per-layer scales), plus ``offset_ms`` for the rest; with ``whole_ms`` (the measured whole-model p50) all of it
    is rescaled so the full model's LUT latency equals ``whole_ms``. Layers the profile misses keep the median
    scale."""
    raw = LatencyLUT(lut.device, lut.entries, dict(lut.layers), dict(lut.shapes))
    scale = {}
    for p, s in lut.shapes.items():
        if p in profile["convs"]:
            scale[p] = profile["convs"][p] / max(1e-9, raw.layer_ms(p, s["cin"], s["cout"]))
    med = float(np.median(list(scale.values()))) if scale else 1.0
    scale = {p: scale.get(p, med) for p in lut.shapes}
    out = LatencyLUT(lut.device, lut.entries, dict(lut.layers), dict(lut.shapes), scale, float(profile["other_ms"]))
    if whole_ms is not None:
        k = whole_ms / out.total_ms()
        out.scale = {p: v * k for p, v in scale.items()}
        out.offset_ms *= k
    return out


def profile_lut(net: nn.Module, hw: tuple[int, int], *, threads: int = 1, workdir: str | None = None,
                device: str = "profile-macs") -> LatencyLUT:
    """The ``profile`` LUT: each conv's cost as measured inside the whole graph (:func:`profile_convs` of ``net``
    in ONNX Runtime on this device), scaled with its channel counts by multiply-accumulates, plus the rest of the
    graph as ``offset_ms``. Isolated-conv timings carry a per-call overhead the whole graph does not have, so at
    small widths a grid of them overstates the cost; this table does not."""
    from actors.compression.latency import build_lut, macs_timer

    return calibrate_lut(build_lut(net, hw, device=device, timer=macs_timer),
                         profile_convs(net, hw, threads=threads, workdir=workdir))


def ratio_meter(reference: nn.Module, hw: tuple[int, int], *, threads: int = 1, runs: int = 10, rounds: int = 3,
                stat: str = "p50", workdir: str | None = None) -> Meter:
    """``measure(net)``: latency of ``net`` / latency of ``reference``, both exported to ONNX and timed in ONNX
    Runtime (CPU, batch 1, ``threads`` threads) in alternating rounds of ``runs`` calls, so a machine whose load
    drifts slows both alike. ``stat``: the per-round statistic whose median over rounds is compared, ``"p50"`` or
    ``"min"``; ``"paired"``: reference and candidate called alternately, ``runs × rounds`` pairs, the
    median of the per-pair ratios (the steadiest when other processes share the cores). ``measure.last`` holds the last timings."""
    from actors.compression.export import export_onnx, onnx_session
    from actors.compression.latency import measure_latency

    if stat not in ("p50", "min", "paired"):
        raise ValueError(f"stat must be p50, min or paired, got {stat!r}")
    d = tempfile.mkdtemp(dir=workdir)
    ref = onnx_session(export_onnx(reference, os.path.join(d, "reference.onnx"), hw), threads)
    x = np.random.rand(1, 3, *hw).astype(np.float32)

    def call(s: Any) -> float:
        t0 = time.perf_counter()
        s.run(None, {"images": x})
        return (time.perf_counter() - t0) * 1000

    def measure(net: nn.Module) -> float:
        sess = onnx_session(export_onnx(net, os.path.join(d, "candidate.onnx"), hw), threads)
        if stat == "paired":  # reference and candidate call by call: adjacent calls see the same load
            for _ in range(2):
                call(ref), call(sess)
            pairs = [(call(ref), call(sess)) for _ in range(runs * rounds)]
            measure.last = {"reference": float(np.median([a for a, _ in pairs])),  # type: ignore[attr-defined]
                            "candidate": float(np.median([b for _, b in pairs]))}
            return float(np.median([b / a for a, b in pairs]))
        per: dict[str, list[float]] = {"reference": [], "candidate": []}
        for _ in range(rounds):
            for k, s in (("reference", ref), ("candidate", sess)):
                per[k].append(measure_latency(lambda s=s: s.run(None, {"images": x}), warmup=2, runs=runs)[stat])
        measure.last = {k: float(np.median(v)) for k, v in per.items()}  # type: ignore[attr-defined]
        return measure.last["candidate"] / measure.last["reference"]  # type: ignore[attr-defined]
    measure.workdir = d  # type: ignore[attr-defined]  # the exported models (the caller may delete it)
    return measure


def plan_to_measured(make: Callable[[], nn.Module], prune: Callable[[nn.Module, float], Any], target: float,
                     measure: Meter, *, iterations: int = 6, tol: float = 0.02, start: float | None = None,
                     log: Callable[[str], None] = lambda s: None) -> tuple[nn.Module, Any, list[dict]]:
    """Search the LUT budget ``b`` whose pruned model measures ``target`` × the reference latency.

    ``make()`` -> a fresh unpruned copy; ``prune(net, b)`` prunes it in place at LUT budget ``b`` and returns its
    plan; ``measure(net)`` -> measured ratio. Each step moves ``b`` along the secant through the last two
    measurements (by ``target / measured`` at first or when the slope is not positive) inside the bracket of budgets seen to be too slow / fast enough, bisecting when the step leaves it;
    stops once a model measures within ``[target - tol, target + tol]``. Returns (model, plan, history) of the
    largest-budget model measuring at most ``target + tol`` (the closest one when none does); ``history`` has
    ``{"budget", "measured", "plan_ms"}`` per step."""
    b = start if start is not None else target
    lo, hi = 0.0, None  # budgets known fast enough / too slow
    hist: list[dict] = []
    best: tuple[float, nn.Module, Any] | None = None
    closest: tuple[float, nn.Module, Any] | None = None
    for _ in range(iterations):
        net = make()
        plan = prune(net, b)
        r = measure(net)
        hist.append({"budget": b, "measured": r, "plan_ms": getattr(plan, "predicted_ms", None)})
        log(f"budget {b:.3f}: measured {r:.3f} of the reference (target {target})")
        if closest is None or abs(r - target) < closest[0]:
            closest = (abs(r - target), net, plan)
        if r <= target + tol:
            if best is None or b > best[0]:
                best = (b, net, plan)
            lo = max(lo, b)
            if r >= target - tol:
                break
        else:
            hi = b if hi is None else min(hi, b)
        aim = target - tol / 2  # land inside the band, not on its edge
        nb = b * aim / max(r, 1e-6)
        if len(hist) >= 2 and hist[-1]["measured"] != hist[-2]["measured"]:  # secant through the last two
            b1, r1 = hist[-2]["budget"], hist[-2]["measured"]
            slope = (r - r1) / (b - b1) if b != b1 else 0.0
            if slope > 0:
                nb = b + (aim - r) / slope
        if nb <= lo or (hi is not None and nb >= hi):
            nb = (lo + (hi if hi is not None else 2 * b)) / 2
        b = nb
    chosen = best if best is not None else (None, closest[1], closest[2])  # type: ignore[index]
    return chosen[1], chosen[2], hist


def magnitude_to_measured(make: Callable[[], nn.Module], example: torch.Tensor, target: float, measure: Meter, *,
                          ignored: Callable[[nn.Module], Sequence[nn.Module]], round_to: int = 8, steps: int = 6,
                          tol: float = 0.02, log: Callable[[str], None] = lambda s: None
                          ) -> tuple[nn.Module, float, list[dict]]:
    """Torch-Pruning's MagnitudePruner with its uniform ratio bisected on the *measured* latency ratio (the
    baseline at equal measured latency): (model, ratio, history). Returns the trial closest to ``target`` among
    those measuring at most ``target + tol`` (the closest overall when none does)."""
    from actors.compression.prune import magnitude_prune

    lo, hi = 0.0, 0.9
    hist: list[dict] = []
    cands: list[tuple[float, float, nn.Module]] = []
    for _ in range(steps):
        ratio = (lo + hi) / 2
        m = make()
        magnitude_prune(m, example, ratio, ignored=ignored(m), round_to=round_to)
        r = measure(m)
        hist.append({"ratio": ratio, "measured": r})
        log(f"magnitude ratio {ratio:.3f}: measured {r:.3f} (target {target})")
        cands.append((r, ratio, m))
        if abs(r - target) <= tol / 2:
            break
        lo, hi = (ratio, hi) if r > target else (lo, ratio)
    ok = [c for c in cands if c[0] <= target + tol]
    r, ratio, m = min(ok or cands, key=lambda c: abs(c[0] - target))
    return m, ratio, hist


__all__ = ["scope_path", "node_to_conv", "profile_convs", "calibrate_lut", "profile_lut", "ratio_meter", "plan_to_measured",
           "magnitude_to_measured"]
