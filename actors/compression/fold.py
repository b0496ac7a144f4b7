"""BatchNorm folding: ``conv -> [affine-commuting ops] -> BN`` chains become one conv with a bias.

A BN in eval mode is a per-channel affine map ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - s * mean``. Folding it into the producing convolution scales the conv's *output* channels by ``s`` and
sets its bias to ``s * b + t``. The graph is read with ``torch.fx`` (convs and norms are leaves), so the chains are
found from the data flow, not from attribute order. Cases a naive ``conv.weight * s`` fold gets wrong and this one
handles (after "To fold or not to fold", Yvinec et al. 2022):

* a conv that already has a bias (the bias is scaled and shifted, not dropped);
* grouped and depthwise convs (the weight's dim 0 is still the output channel: scaling it is exact), and
  transposed convs (whose output channel is weight dim 1, per group);
* BN reached from the conv through ops that commute with a per-channel affine map: ``Identity``, ``Dropout`` (eval),
  nearest/bilinear ``interpolate``/``Upsample`` (weights sum to 1), average pools without zero padding, and max
  pools when every ``s > 0``. Zero padding, activations and anything with several consumers stop a chain;
* ``torchvision.ops.FrozenBatchNorm2d`` (buffers, not parameters) and timm's ``BatchNormAct2d`` (a BN that also
  applies its activation: the BN becomes its activation, never a bare ``Identity`` that would drop the ReLU6);
* a conv whose output feeds anything besides the chain is not folded (the other consumer needs the unscaled map).

:func:`fold_batchnorm` edits the model in place (eval mode), returns what it folded and, given an example input,
the max abs output difference it caused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Upsample, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)
_PASS_FUNCTIONS = {F.interpolate, F.dropout, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d}


def _is_bn(m: nn.Module) -> bool:
    from torchvision.ops.misc import FrozenBatchNorm2d

    return isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_bn(m) or isinstance(m, _CONVS) or super().is_leaf_module(m, qualname)


@dataclass
class FoldReport:
    """``folded``: (conv path, bn path, ops between) per fold; ``skipped``: (bn path, why); ``max_abs_diff``."""

    folded: list[tuple[str, str, list[str]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"folded": [{"conv": c, "bn": b, "through": t} for c, b, t in self.folded],
                "skipped": [{"bn": b, "why": w} for b, w in self.skipped], "max_abs_diff": self.max_abs_diff}


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with ``bn(x) == s * x + t`` per channel in eval mode (BatchNorm*d or FrozenBatchNorm2d)."""
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    w = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    b = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    s = w / torch.sqrt(var + bn.eps)
    return s, b - s * mean


def _commutes(node: fx.Node, modules: dict[str, nn.Module], s: torch.Tensor) -> str | None:
    """Name of a pass-through op that commutes with ``s * x + t`` per channel, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.MaxPool2d,)):
            return node.target if bool((s > 0).all()) else None
        if isinstance(m, nn.AvgPool2d) and m.padding not in (0, (0, 0)) and m.count_include_pad:
            return None
        if isinstance(m, nn.Upsample) and m.mode not in ("nearest", "bilinear"):
            return None
        return node.target if isinstance(m, _PASS_MODULES) else None
    if node.op == "call_function" and node.target in _PASS_FUNCTIONS:
        if node.target is F.max_pool2d and not bool((s > 0).all()):
            return None
        if node.target is F.avg_pool2d and (node.kwargs.get("padding", 0) or (len(node.args) > 3 and node.args[3])):
            return None
        if node.target is F.interpolate and node.kwargs.get("mode", "nearest") not in ("nearest", "bilinear"):
            return None
        return node.target.__name__
    return None


def _producer(bn_node: fx.Node, modules: dict[str, nn.Module], s: torch.Tensor
              ) -> tuple[str | None, list[str], str]:
    """Walk back from a BN node to the conv whose output reaches it only through commuting ops."""
    through: list[str] = []
    node = bn_node.args[0] if bn_node.args else None
    while isinstance(node, fx.Node):
        if len(node.users) != 1:
            return None, through, "its input has other consumers"
        if node.op == "call_module" and isinstance(modules[node.target], _CONVS):
            return node.target, through[::-1], ""
        name = _commutes(node, modules, s)
        if name is None:
            return None, through, f"input comes from {node.op} {getattr(node.target, '__name__', node.target)}"
        through.append(name)
        node = node.args[0] if node.args else None
    return None, through, "no producing conv"


@torch.no_grad()
def fold_into_conv(conv: nn.Module, s: torch.Tensor, t: torch.Tensor) -> None:
    """Make ``conv`` compute ``s * conv(x) + t`` (per output channel), in place; adds a bias when missing."""
    w = conv.weight.detach().double()
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):  # weight Cin × Cout/g × k…: out channel on dim 1
        g = conv.groups
        wg = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        sg = s.reshape(g, 1, -1, *([1] * (w.ndim - 2)))
        w = (wg * sg).reshape(w.shape)
    else:
        w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(s)
    conv.weight.data.copy_(w.to(conv.weight.dtype))
    new_bias = (s * b + t).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.data.copy_(new_bias)


def _replacement(bn: nn.Module) -> nn.Module:
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)  # timm BatchNormAct2d
    parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return parts[0] if len(parts) == 1 else (nn.Sequential(*parts) if parts else nn.Identity())


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> FoldReport:
    """Fold every foldable BN of ``model`` into its producing conv, in place (the model is put in eval mode).

    ``example``: an input to measure the max abs output difference (stored in the report). Raises ValueError when
    the model cannot be traced by ``torch.fx``.
    """
    model.eval()
    before = _run(model, example) if example is not None else None
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - FX raises many types for untraceable code
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find conv->BN chains: {e}") from e
    modules = dict(model.named_modules())
    report = FoldReport()
    for node in graph.nodes:
        if node.op != "call_module" or not _is_bn(modules[node.target]):
            continue
        bn = modules[node.target]
        s, t = bn_affine(bn)
        conv_path, through, why = _producer(node, modules, s)
        if conv_path is None:
            report.skipped.append((node.target, why))
            continue
        conv = modules[conv_path]
        n_out = conv.out_channels
        if n_out != len(s):
            report.skipped.append((node.target, f"{conv_path} has {n_out} channels, BN {len(s)}"))
            continue
        fold_into_conv(conv, s, t)
        _set(model, node.target, _replacement(bn))
        report.folded.append((conv_path, node.target, through))
    if example is not None:
        after = _run(model, example)
        report.max_abs_diff = max((float((a - b).abs().max()) for a, b in zip(before, after)), default=0.0)
    return report


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    if isinstance(out, dict):
        out = list(out.values())
    return [o.detach().clone() for o in out if isinstance(o, torch.Tensor)]


def folded_copy(model: nn.Module, example: torch.Tensor | None = None) -> tuple[nn.Module, FoldReport]:
    """A deep copy of ``model`` with its BNs folded (the original is left untouched)."""
    m = copy.deepcopy(model)
    return m, fold_batchnorm(m, example)


__all__ = ["FoldReport", "bn_affine", "fold_into_conv", "fold_batchnorm", "folded_copy"]
