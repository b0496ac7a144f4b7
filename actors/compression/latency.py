"""Latency on the target device: one timing harness, and the per-layer lookup table the pruning knapsack reads.

Timing (:func:`measure_latency`): batch 1, ``warmup`` untimed calls, then ``runs`` timed calls with
``time.perf_counter``; p50/p95/mean in milliseconds. Every before/after figure of a report goes through it, in the
same process, so the comparison shares the machine's state (on a shared machine all figures are noisy alike).

The LUT (HALP, Shen et al., NeurIPS'22, implemented from the paper): for every convolution of a model at the
deployment resolution, its latency measured on this device with its input/output channels cut to a grid of
fractions (depthwise convs: one axis, ``in == out == groups``). A layer's latency at any channel counts is the
bilinear interpolation of its grid. Entries are keyed by the layer's signature (kernel, stride, padding, groups kind,
channels, input H×W), so identical layers are timed once, and cached per device in the workspace at
``models/latency/<device key>.json``; a later run (another model with the same layers) only times what is missing.
By default each grid point is timed in PyTorch eager on the model's device; :func:`ort_timer` times it in ONNX
Runtime instead, which is what ``assay compress`` and the benchmark use (HALP's point: the LUT must come from the
runtime that ships — a LUT timed in PyTorch eager over-prices depthwise convs that ONNX Runtime runs cheaply, and
the first benchmark run, committed with that LUT, pruned for latency that never showed up in ONNX Runtime). The
LUT only ranks choices; every reported latency is *measured* on the exported model.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


def measure_latency(fn: Callable[[], Any], *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Milliseconds per call of ``fn`` (p50, p95, mean, min, runs)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    p95 = ts[min(len(ts) - 1, int(round(0.95 * (len(ts) - 1))))]
    return {"p50": statistics.median(ts), "p95": p95, "mean": statistics.fmean(ts), "min": ts[0], "runs": len(ts)}


def torch_latency(model: nn.Module, hw: tuple[int, int], *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Batch-1 latency of ``model`` on a 1×3×H×W input (eval, inference mode, on the model's device)."""
    dev = next(model.parameters()).device
    x = torch.rand(1, 3, *hw, device=dev)
    model.eval()

    def call() -> None:
        with torch.inference_mode():
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return measure_latency(call, warmup=warmup, runs=runs)


def device_key(device: str | torch.device = "cpu") -> str:
    """A file-name-safe name of the device the LUT is valid for (CPU model + threads, or the GPU name)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = cpu_name() + f"-t{torch.get_num_threads()}"
    return f"{dev.type}-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conv_signature(conv: nn.Conv2d, hw: tuple[int, int]) -> str:
    """Key of a conv's LUT entry: what its latency depends on besides channel counts."""
    dw = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    g = "dw" if dw else f"g{conv.groups}"
    return (f"k{conv.kernel_size[0]}x{conv.kernel_size[1]}-s{conv.stride[0]}x{conv.stride[1]}-p{conv.padding[0]}x"
            f"{conv.padding[1]}-{g}-i{conv.in_channels}-o{conv.out_channels}-{hw[0]}x{hw[1]}")


def _grid(n: int, fractions: Sequence[float]) -> list[int]:
    return sorted({max(1, int(round(n * f))) for f in fractions})


@dataclass
class LatencyLUT:
    """Per-signature grids: ``entries[sig] = {"cin": [...], "cout": [...], "ms": [[...]]}`` (ms[i][j] at
    cin[i], cout[j]; depthwise entries have ``cin == cout`` and a 1×n ``ms``); ``layers[path] = sig``."""

    device: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # per-layer calibration (actors.compression.calibrate)
    offset_ms: float = 0.0  # what the whole model costs besides its convs (calibrated LUTs only)

    def layer_ms(self, path: str, cin: int, cout: int) -> float:
        """Interpolated latency of layer ``path`` with ``cin`` input and ``cout`` output channels (times the
        layer's calibration scale, 1 when uncalibrated)."""
        e = self.entries[self.layers[path]]
        k = self.scale.get(path, 1.0)
        if e.get("dw"):
            return k * float(np.interp(cout, e["cout"], e["ms"][0]))
        ms = np.asarray(e["ms"])
        row = np.array([np.interp(cout, e["cout"], ms[i]) for i in range(len(e["cin"]))])
        return k * float(np.interp(cin, e["cin"], row))

    def total_ms(self, widths: dict[str, tuple[int, int]] | None = None) -> float:
        """``offset_ms`` + the sum over layers of their latency at ``widths[path] = (cin, cout)`` (full width
        when absent)."""
        widths = widths or {}
        return self.offset_ms + sum(self.layer_ms(p, *widths.get(p, (s["cin"], s["cout"])))
                                    for p, s in self.shapes.items())

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "entries": self.entries}


def conv_inputs(model: nn.Module, hw: tuple[int, int]) -> dict[str, tuple[nn.Conv2d, tuple[int, int]]]:
    """Every Conv2d of ``model`` with the H×W of its input on a 1×3×H×W forward pass."""
    seen: dict[str, tuple[nn.Conv2d, tuple[int, int]]] = {}
    hooks = []

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, (mod, tuple(inp[0].shape[-2:])))
        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            model.eval()(torch.rand(1, 3, *hw, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.inference_mode()
def _time_conv(conv: nn.Conv2d, cin: int, cout: int, hw: tuple[int, int], dw: bool, runs: int) -> float:
    m = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  groups=cin if dw else 1 if conv.groups == 1 else _groups(conv, cin, cout),
                  bias=conv.bias is not None).to(conv.weight.device).eval()
    x = torch.rand(1, cin, *hw, device=conv.weight.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    return measure_latency(lambda: (m(x), sync()), warmup=1, runs=runs)["min"]  # min: robust to other load


def _groups(conv: nn.Conv2d, cin: int, cout: int) -> int:
    g = conv.groups
    while g > 1 and (cin % g or cout % g):
        g -= 1
    return g


def build_lut(model: nn.Module, hw: tuple[int, int], *, device: str | None = None, cache: dict | None = None,
              fractions: Sequence[float] = FRACTIONS, runs: int = 3,
              progress: Callable[[int, int], None] | None = None,
              timer: Callable[[nn.Conv2d, int, int, tuple[int, int], bool], float] | None = None) -> LatencyLUT:
    """Time every conv of ``model`` at input ``hw`` over the channel grid (reusing ``cache`` entries, a dict as
    written by :meth:`LatencyLUT.to_json`, when its device matches).

    ``timer(conv, cin, cout, hw, depthwise) -> ms`` replaces the measurement (e.g. :func:`macs_timer` for a
    deterministic, device-free LUT in tests); by default each grid point is timed on the model's device."""
    timer = timer or (lambda conv, a, b, chw, dw: _time_conv(conv, a, b, chw, dw, runs))
    dev = device or device_key(next(model.parameters()).device)
    lut = LatencyLUT(dev, dict(cache["entries"]) if cache and cache.get("device") == dev else {})
    convs = conv_inputs(model, hw)
    todo = {}
    for path, (conv, chw) in convs.items():
        sig = conv_signature(conv, chw)
        lut.layers[path] = sig
        lut.shapes[path] = {"cin": conv.in_channels, "cout": conv.out_channels, "hw": list(chw)}
        if sig not in lut.entries:
            todo[sig] = (conv, chw)
    for i, (sig, (conv, chw)) in enumerate(todo.items()):
        dw = sig.split("-")[3] == "dw"
        if dw:
            cs = _grid(conv.out_channels, fractions)
            lut.entries[sig] = {"dw": True, "cin": cs, "cout": cs,
                                "ms": [[timer(conv, c, c, chw, True) for c in cs]]}
        else:
            ci, co = _grid(conv.in_channels, fractions), _grid(conv.out_channels, fractions)
            lut.entries[sig] = {"cin": ci, "cout": co,
                                "ms": [[timer(conv, a, b, chw, False) for b in co] for a in ci]}
        if progress is not None:
            progress(i + 1, len(todo))
    return lut


def macs_timer(conv: nn.Conv2d, cin: int, cout: int, hw: tuple[int, int], dw: bool) -> float:
    """A stand-in 'latency': millions of multiply-accumulates of the conv at these channel counts."""
    h = (hw[0] + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    w = (hw[1] + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    per_out = (1 if dw else cin) * conv.kernel_size[0] * conv.kernel_size[1]
    return h * w * cout * per_out / 1e6


def ort_timer(runs: int = 3, threads: int = 1) -> Callable[[nn.Conv2d, int, int, tuple[int, int], bool], float]:
    """A timer that measures each conv in ONNX Runtime (CPU, ``threads`` threads): the LUT of the runtime the
    compressed model ships in. The one-node model is built with ``onnx.helper`` (no export), batch 1."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1

    def time_conv(conv: nn.Conv2d, cin: int, cout: int, hw: tuple[int, int], dw: bool) -> float:
        groups = cin if dw else 1 if conv.groups == 1 else _groups(conv, cin, cout)
        k = conv.kernel_size
        w = np.random.rand(cout, cin // groups, *k).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(k), strides=list(conv.stride),
                                pads=[conv.padding[0], conv.padding[1]] * 2, dilations=list(conv.dilation),
                                group=groups)
        graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, cin, *hw])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w"),
                                   numpy_helper.from_array(np.zeros(cout, np.float32), "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.rand(1, cin, *hw).astype(np.float32)
        return measure_latency(lambda: sess.run(None, {"x": x}), warmup=1, runs=runs)["min"]
    del onnx
    return time_conv


def lut_path(key: str) -> str:
    """Workspace-relative path of a device's LUT cache."""
    return f"models/latency/{key}.json"


def load_cached(ws: Any, key: str) -> dict | None:
    """The cached LUT json of device ``key`` in workspace ``ws`` (None when absent or unreadable)."""
    rel = lut_path(key)
    if not ws.exists(rel):
        return None
    try:
        return json.loads(ws.read_bytes(rel))
    except ValueError:
        return None


def save_cached(ws: Any, lut: LatencyLUT) -> str:
    """Write ``lut`` atomically to the workspace cache; returns the relative path."""
    rel = lut_path(lut.device)
    ws.write_bytes(rel, json.dumps(lut.to_json()).encode())
    return rel


__all__ = ["FRACTIONS", "measure_latency", "torch_latency", "device_key", "conv_signature", "LatencyLUT",
           "conv_inputs", "build_lut", "macs_timer", "ort_timer", "lut_path", "load_cached", "save_cached"]
