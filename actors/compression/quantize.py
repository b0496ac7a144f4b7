"""int8 post-training quantization: calibrated (ONNX Runtime, the shipped path) and data-free (SPIQ-style).

**Calibrated, what ships** (:func:`quantize_static`): ONNX Runtime static quantization in QDQ format — weights
int8 *per output channel*, activations uint8 per tensor (the U8S8 layout ORT's x86 kernels run fastest: on AVX2
``QLinearConv``/``MatMulInteger`` via ``vpmaddubsw``), ranges from MinMax calibration on workspace images at the
deployment size. The float model is first pre-processed (shape inference + graph optimisation,
``quant_pre_process``) so BN-free conv chains fuse before the Q/DQ pairs are placed. The backend is ONNX Runtime's
CPU execution provider; done wrong (no pre-processing, per-tensor weights, S8S8) int8 is slower than fp32 on x86 —
the report therefore always *measures* both in the same harness and never assumes a speed-up.

**Data-free** (:func:`spiq_ranges` + :func:`fake_quantize`), after SPIQ (Yvinec et al., WACV'23, "data-free
per-channel static input quantization"): no image is used. Every conv's *input* gets a static range per channel,
propagated through the float graph from the normalisation statistics that precede it: a BN/GN output channel is
modelled as ``beta ± k·|gamma|`` (its learned mean and spread), clipped by the activation that follows (ReLU6 ->
[0, 6]); residual adds add ranges, concatenation concatenates them, resampling and pooling keep them; the image
input is [0, 1]. Weights are int8 symmetric per output channel. Per-channel *input* scales have no integer kernel
in ONNX Runtime (``QLinearConv`` needs one input scale), so this path is evaluated as simulated quantization in
PyTorch: its accuracy is measured and reported, its latency is not claimed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import operator
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

Range = tuple[torch.Tensor, torch.Tensor]  # per-channel (lo C, hi C)


# ------------------------------------------------------------------------------------------ ONNX Runtime static
class _Reader:
    """ORT CalibrationDataReader over a list of 1×3×H×W float32 arrays."""

    def __init__(self, images: Sequence[np.ndarray], name: str) -> None:
        self.it = iter([{name: np.ascontiguousarray(x, np.float32)} for x in images])

    def get_next(self) -> dict | None:
        return next(self.it, None)


def quantize_static(onnx_in: str, onnx_out: str, calibration: Sequence[np.ndarray], *, per_channel: bool = True,
                    method: str = "minmax", fmt: str = "qdq", keep_depthwise_float: bool = False) -> str:
    """Write the int8 model of ``onnx_in`` to ``onnx_out`` (atomic) calibrated on ``calibration`` images.

    ``fmt``: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs that ORT fuses into integer kernels; the default) or
    ``"qoperator"`` (``QLinearConv`` nodes written directly). ``keep_depthwise_float`` leaves grouped (depthwise)
    convolutions in fp32. Both alternatives are measured in ``bench/int8_formats.py``.
    Raises ValueError when ``calibration`` is empty (use the data-free path instead) or ``fmt`` is unknown.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration):
        raise ValueError("static int8 quantization needs calibration images")
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if fmt not in formats:
        raise ValueError(f"int8 format must be one of {sorted(formats)}, got {fmt!r}")
    pre = onnx_out + ".pre.onnx"
    quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)
    exclude = depthwise_convs(pre) if keep_depthwise_float else []
    tmp = onnx_out + ".tmp"
    meth = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    extra = {"CalibPercentile": 99.99} if method == "percentile" else {}
    with _quiet_root_logger():  # ORT logs "Axis 1 is out-of-range ..." on the root logger for 1-D constants
        ort_quantize(pre, tmp, _Reader(calibration, "images"), quant_format=formats[fmt], per_channel=per_channel,
                     activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=meth,
                     extra_options=extra, nodes_to_exclude=exclude)
    os.replace(tmp, onnx_out)
    os.remove(pre)
    return onnx_out


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Root-logger records below ERROR dropped while the block runs (ONNX Runtime's quantizer logs its per-tensor
    notes there, which would reach the user's terminal through logging's last-resort handler)."""
    root = logging.getLogger()
    level, guard = root.level, logging.NullHandler()  # a handler there keeps logging.warning() from basicConfig()
    root.addHandler(guard)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(guard)


def depthwise_convs(onnx_path: str) -> list[str]:
    """Names of the ``Conv`` nodes of ``onnx_path`` with ``group > 1``."""
    import onnx

    return [n.name for n in onnx.load(onnx_path).graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


# ------------------------------------------------------------------------------------------ SPIQ-style data-free
def _is_norm(m: nn.Module) -> bool:
    from torchvision.ops.misc import FrozenBatchNorm2d

    return isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d, nn.GroupNorm))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_norm(m) or isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def _clip(r: Range | None, lo: float | None, hi: float | None) -> Range | None:
    if r is None:
        return None
    a, b = r
    if lo is not None:
        a, b = a.clamp(min=lo), b.clamp(min=lo)
    if hi is not None:
        a, b = a.clamp(max=hi), b.clamp(max=hi)
    return a, b


def _act_bounds(m: Any) -> tuple[float | None, float | None] | None:
    if isinstance(m, nn.ReLU6) or m is F.relu6:
        return 0.0, 6.0
    if isinstance(m, nn.ReLU) or m in (F.relu, torch.relu):
        return 0.0, None
    if isinstance(m, nn.Hardtanh):
        return m.min_val, m.max_val
    return None


def _norm_range(m: nn.Module, k: float) -> Range:
    w = m.weight.detach().float() if getattr(m, "weight", None) is not None else torch.ones(_channels(m))
    b = m.bias.detach().float() if getattr(m, "bias", None) is not None else torch.zeros_like(w)
    r = (b - k * w.abs(), b + k * w.abs())
    act = getattr(m, "act", None)  # timm BatchNormAct2d
    bounds = _act_bounds(act) if act is not None else None
    return _clip(r, *bounds) if bounds else r


def _channels(m: nn.Module) -> int:
    return int(getattr(m, "num_features", getattr(m, "num_channels", 0)))


_PASS = (nn.Identity, nn.Dropout, nn.Upsample, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_PASS_FN = {F.interpolate, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout}


def _propagate(node: fx.Node, env: dict[fx.Node, Range | None], modules: dict[str, nn.Module], k: float,
               input_range: tuple[float, float]) -> Range | None:
    args = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
    if node.op == "placeholder":
        return torch.full((3,), float(input_range[0])), torch.full((3,), float(input_range[1]))
    if node.op == "call_module":
        m = modules[node.target]
        if _is_norm(m):
            return _norm_range(m, k)
        if (b := _act_bounds(m)) is not None:
            return _clip(args[0], *b)
        if isinstance(m, _PASS) or isinstance(m, nn.Sequential) and len(m) == 0:
            return args[0]
        return None
    if node.op == "call_function":
        f = node.target
        if (b := _act_bounds(f)) is not None:
            return _clip(args[0], *b)
        if f in _PASS_FN:
            return args[0]
        if f is torch.cat and (node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1):
            parts = args[0] if isinstance(args[0], (list, tuple)) else []
            parts = [env.get(p) for p in node.args[0]]
            if parts and all(p is not None for p in parts):
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            return None
        if f in (operator.add, torch.add, operator.sub, operator.mul, operator.truediv):
            return _arith(f, args)
    if node.op == "call_method" and node.target == "float":
        return args[0]
    return None


def _arith(f: Any, args: list) -> Range | None:
    a, b = args[0], args[1]
    an, bn = isinstance(a, tuple), isinstance(b, tuple)
    if an and bn and f in (operator.add, torch.add):
        return a[0] + b[0], a[1] + b[1]
    if an and isinstance(b, (int, float)):
        if f in (operator.add, torch.add):
            return a[0] + b, a[1] + b
        if f is operator.sub:
            return a[0] - b, a[1] - b
        if f in (operator.mul, operator.truediv):
            c = b if f is operator.mul else 1.0 / b
            lo, hi = a[0] * c, a[1] * c
            return torch.minimum(lo, hi), torch.maximum(lo, hi)
    return None


def spiq_ranges(model: nn.Module, *, k: float = 3.0, input_range: tuple[float, float] = (0.0, 1.0)
                ) -> dict[str, Range | None]:
    """Static per-channel input range of every Conv2d of the *unfolded* ``model`` from its norm statistics
    (None where the input's range cannot be derived without data)."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    env: dict[fx.Node, Range | None] = {}
    out: dict[str, Range | None] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            src = node.args[0]
            r = env.get(src) if isinstance(src, fx.Node) else None
            m = modules[node.target]
            out[node.target] = r if r is not None and len(r[0]) == m.in_channels else None
            env[node] = None
            continue
        try:
            env[node] = _propagate(node, env, modules, k, input_range)
        except (TypeError, RuntimeError, IndexError):
            env[node] = None
    return out


def _fq_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    q = 2 ** (bits - 1) - 1
    s = w.abs().flatten(1).amax(1).clamp(min=1e-12) / q  # per output channel
    s = s.view(-1, *([1] * (w.ndim - 1)))
    return (w / s).round().clamp(-q, q) * s


def _fq_input(lo: torch.Tensor, hi: torch.Tensor, bits: int = 8):
    levels = 2 ** bits - 1
    lo, hi = lo.view(1, -1, 1, 1), torch.maximum(hi, lo + 1e-6).view(1, -1, 1, 1)
    s = (hi - lo) / levels

    def hook(mod: nn.Module, inp: tuple) -> tuple:
        x = inp[0]
        return (((x - lo) / s).round().clamp(0, levels) * s + lo,)
    return hook


def _fq_dynamic(bits: int = 8):
    levels = 2 ** bits - 1

    def hook(mod: nn.Module, inp: tuple) -> tuple:
        x = inp[0]
        lo, hi = x.amin(), x.amax().clamp(min=x.amin() + 1e-6)
        s = (hi - lo) / levels
        return (((x - lo) / s).round().clamp(0, levels) * s + lo,)
    return hook


def fake_quantize(model: nn.Module, ranges: dict[str, Range | None], bits: int = 8) -> tuple[nn.Module, dict]:
    """A copy of ``model`` simulating int8: weights per out channel, conv inputs per channel at the static
    ``ranges`` (per-tensor dynamic where a range is None). Returns (model, counts)."""
    m = copy.deepcopy(model).eval()
    static = dynamic = 0
    for name, mod in m.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        mod.weight.data = _fq_weight(mod.weight.data, bits)
        r = ranges.get(name)
        if r is not None and len(r[0]) == mod.in_channels:
            mod.register_forward_pre_hook(_fq_input(r[0], r[1], bits))
            static += 1
        else:
            mod.register_forward_pre_hook(_fq_dynamic(bits))
            dynamic += 1
    return m, {"static_inputs": static, "dynamic_inputs": dynamic}


def calibration_images(images: Iterable[np.ndarray], limit: int = 32) -> list[np.ndarray]:
    """1×3×H×W float32 arrays in [0, 1] from HWC uint8 images (at most ``limit``)."""
    out = []
    for im in images:
        out.append((np.asarray(im, np.float32).transpose(2, 0, 1)[None] / 255.0).astype(np.float32))
        if len(out) >= limit:
            break
    return out


__all__ = ["quantize_static", "spiq_ranges", "fake_quantize", "calibration_images"]
