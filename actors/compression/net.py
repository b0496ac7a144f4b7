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
        raise UserError(f"compression supports the dense-lite0 detector; got {name}")
    fe = det.trunk
    body = copy.deepcopy(fe.body)
    trunk = nn.Sequential(Normalize(fe.mean.flatten().tolist(), fe.std.flatten().tolist()), body) if fe.normalize \
        else nn.Sequential(body)
    return DenseNet(trunk, copy.deepcopy(det.head)).eval().requires_grad_(False)


def final_layers(net: DenseNet) -> list[nn.Module]:
    """The prediction convs whose outputs are the model's outputs (never pruned)."""
    return [net.head.cls, net.head.box, net.head.ctr]


@torch.no_grad()
def decode(det: nn.Module, outputs: Sequence[Any], sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """Detections per image from raw outputs (torch tensors or numpy arrays) with the detector's own decoding."""
    outs = tuple(torch.as_tensor(o).float() for o in outputs)
    return det.head.decode(outs, sizes)


__all__ = ["Normalize", "DenseNet", "tensor_module", "final_layers", "decode"]
