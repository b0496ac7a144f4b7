"""The tensor module a detector deploys as: images in, raw head maps out; box decoding and NMS stay outside.

torchvision-style detectors do not export whole (NMS has data-dependent shapes), so Assay compresses and exports
the part that holds the FLOPs — backbone + neck + head — as a plain module ``B×3×H×W images in [0, 1] -> tuple of
tensors``, and decodes its outputs with the detector's own decoding (score threshold, top-k, NMS) in PyTorch after
the graph (:func:`decode`). The same decoding runs on PyTorch outputs and on ONNX Runtime outputs, so mAP before and
after compression is measured through one path.

Supported: ``dense-lite0`` (:class:`~actors.detection.models.CachedDenseDetector`): trunk (the extractor's body plus
its input normalization) and :class:`~actors.detection.head.DenseHead`; outputs ``(cls B×K×h×w logits,
ltrb B×4×h×w pixels, ctr B×1×h×w logits)``.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn

from actors.core.errors import UserError


class Normalize(nn.Module):
    """``(x - mean) / std`` with ImageNet statistics (what FeatureExtractor does when ``normalize``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DenseNet(nn.Module):
    """Trunk + dense head: B×3×H×W in [0, 1] -> (cls B×K×h×w, ltrb B×4×h×w, ctr B×1×h×w)."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x))


def tensor_module(det: nn.Module) -> DenseNet:
    """A deep copy of ``det``'s backbone + head as a :class:`DenseNet` in eval mode (weights shared by none).

    Raises UserError for a detector kind this module cannot export yet.
    """
    from actors.detection.models import CachedDenseDetector

    if not isinstance(det, CachedDenseDetector):
        name = det.config.get("name", type(det).__name__)
        raise UserError(f"assay compress supports the dense-lite0 detector only (and models it compressed); "
                        f"got {name}")
    fe = det.trunk
    body = copy.deepcopy(fe.body)
    trunk = nn.Sequential(Normalize(fe.mean.flatten().tolist(), fe.std.flatten().tolist()), body) if fe.normalize \
        else nn.Sequential(body)
    return DenseNet(trunk, copy.deepcopy(det.head)).eval().requires_grad_(False)


def final_layers(net: DenseNet) -> list[nn.Module]:
    """The prediction convs whose outputs are the model's outputs (never pruned)."""
    return [net.head.cls, net.head.box, net.head.ctr]


def head_convs(net: DenseNet) -> list[nn.Module]:
    """Every conv of the head: ignored by pruning, the head's input channels (the trunk's output) are kept, so
    the original head still reads the pruned trunk's map (what :mod:`~actors.compression.distill` needs)."""
    return [m for m in net.head.modules() if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def decode(det: nn.Module, outputs: Sequence[Any], sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """Detections per image from raw outputs (torch tensors or numpy arrays) with the detector's own decoding."""
    outs = tuple(torch.as_tensor(o).float() for o in outputs)
    return det.head.decode(outs, sizes)


def net_spec(net: nn.Module, det: nn.Module, folded: bool) -> dict[str, Any]:
    """JSON-able description that, with ``net``'s state dict, rebuilds ``net`` (:func:`build_net`): the source
    detector's config and classes, whether BN is folded, and every GroupNorm's group count."""
    return {"detector": det.config, "classes": list(det.classes), "folded": folded,
            "gn_groups": {n: m.num_groups for n, m in net.named_modules() if isinstance(m, nn.GroupNorm)},
            "bn_eps": {n: m.eps for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}}


def _narrow(net: nn.Module, sd: dict[str, torch.Tensor], gn_groups: dict[str, int]) -> None:
    """Replace every conv / BN / GroupNorm whose stored weight has another shape by one of the stored shape."""
    for name, m in list(net.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None:
            continue
        if isinstance(m, nn.Conv2d) and tuple(w.shape) != tuple(m.weight.shape):
            dw = m.groups == m.in_channels == m.out_channels and m.groups > 1
            out = w.shape[0]
            groups = out if dw else m.groups
            new = nn.Conv2d(w.shape[1] * groups, out, m.kernel_size, m.stride, m.padding, m.dilation, groups=groups,
                            bias=f"{name}.bias" in sd)
        elif isinstance(m, nn.Conv2d) and (m.bias is None) != (f"{name}.bias" not in sd):
            new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            groups=m.groups, bias=f"{name}.bias" in sd)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and w.shape[0] != m.num_features:
            # narrowed in place, never replaced: a subclass (timm's BatchNormAct2d) also applies its activation,
            # which a plain BatchNorm2d in its place would silently drop
            n = int(w.shape[0])
            m.num_features = n
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
            if m.running_mean is not None:
                m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)
            continue
        elif isinstance(m, nn.GroupNorm):
            new = nn.GroupNorm(gn_groups.get(name, m.num_groups), w.shape[0], eps=m.eps, affine=m.affine)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)


def build_net(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[DenseNet, nn.Module]:
    """(network in eval mode, its detector whose ``head.decode`` decodes its outputs) from :func:`net_spec` and a
    state dict: the source architecture is built (random init, nothing downloaded), folded when ``spec`` says so,
    every layer narrowed to the stored shapes, and the weights loaded strictly.

    Raises ValueError / RuntimeError / KeyError when the weights do not fit.
    """
    from actors.compression.fold import fold_batchnorm
    from actors.detection.models import get_detector

    dcfg = dict(spec["detector"])
    name = dcfg.pop("name")
    opts: dict[str, Any] = {"backbone": dcfg["backbone"], "random_init": True}
    if "head" in dcfg:
        opts.update({k: v for k, v in dcfg["head"].items() if k not in ("in_channels", "stride")})
        opts["fuse"] = dcfg.get("fuse", True)
    det = get_detector(name, spec["classes"], **opts)
    net = tensor_module(det)
    if spec.get("folded"):
        fold_batchnorm(net)
    for lname, m in (("head.cls", net.head.cls), ("head.box", net.head.box), ("head.ctr", net.head.ctr)):
        w = state.get(f"{lname}.weight")
        if w is None or w.shape[0] != m.out_channels:  # outputs are never pruned: a mismatch is another model
            raise ValueError(f"{lname} has {None if w is None else w.shape[0]} outputs, "
                             f"{len(spec['classes'])} classes need {m.out_channels}")
    _narrow(net, state, spec.get("gn_groups", {}))
    for n, m in net.named_modules():  # a random-init build may differ from the trained one's BN eps
        if n in spec.get("bn_eps", {}):
            m.eps = float(spec["bn_eps"][n])
    net.load_state_dict(state, strict=True)
    det.head = net.head  # decoding reads the head's config; the pruned head is the one that runs
    return net.eval().requires_grad_(False), det


__all__ = ["Normalize", "DenseNet", "tensor_module", "final_layers", "head_convs", "decode", "net_spec", "build_net"]
