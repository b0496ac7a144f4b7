"""A compressed network as an Assay detector, so that the detection training loop, evaluation and ``assay learn``
use it like any registered detector.

:class:`CompressedDetector` wraps a :class:`~actors.compression.net.DenseNet` (trunk + dense head, pruned or not)
behind the detector interface of :mod:`actors.detection.models` (``inputs`` / ``loss`` / ``predict``,
``trainable_state``, ``reset``):

* ``end_to_end=True`` (fine-tuning after pruning): inputs are images, every layer trains, normalisation layers keep
  their statistics (eval mode, as the detector's own frozen trunk), and with a ``teacher`` the loss adds
  distillation from the teacher's raw maps (MSE on class and centerness logits, L1 on log box distances, weight
  ``distill``).
* ``end_to_end=False`` (``assay learn --init DIR``): the compressed trunk is frozen and its maps are cached by the
  caller (like ``dense-lite0``); only the compressed head trains. ``reset`` goes back to the compressed weights,
  so every round starts from the compressed model, never from a random head.

Registered as detector ``compressed`` (``get_detector("compressed", classes, backbone=DIR or DIR/model.pt)``) when
this module is imported; the checkpoint config names this module, so :func:`actors.detection.train.load_detector`
imports it to rebuild such a checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.core.errors import UserError
from actors.detection.models import Detector, register_detector

MODULE = __name__


def distill_loss(s: Sequence[torch.Tensor], t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Distillation between raw maps (cls, ltrb, ctr) of a student ``s`` and a teacher ``t``."""
    return (F.mse_loss(s[0], t[0]) + F.mse_loss(s[2], t[2])
            + F.l1_loss(torch.log(s[1].clamp(min=1e-3)), torch.log(t[1].clamp(min=1e-3))))


class CompressedDetector(Detector):
    """A :class:`DenseNet` behind the detector interface (see the module doc)."""

    def __init__(self, net: nn.Module, classes: list[str], config: dict, *, end_to_end: bool = False,
                 teacher: nn.Module | None = None, distill: float = 0.0) -> None:
        super().__init__(list(classes), config)
        self.cached = not end_to_end
        self.net = net
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.distill = float(distill)
        self.net.trunk.requires_grad_(end_to_end)
        self.net.head.requires_grad_(True)
        self._initial = {k: v.detach().clone() for k, v in self.trainable_state().items()}

    @property
    def head(self) -> nn.Module:  # decoding reads the head's config
        return self.net.head

    def train(self, mode: bool = True) -> "CompressedDetector":
        super().train(mode)
        self.net.eval()  # normalisation statistics stay as trained (GroupNorm is the same in both modes)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.end_to_end:
            return images
        with torch.no_grad():
            return self.net.trunk(images).to(torch.float16)

    @property
    def end_to_end(self) -> bool:
        return not self.cached

    def _maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(x.float()) if self.end_to_end else self.net.head(x.float())

    def loss(self, inputs: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        out = self._maps(inputs)
        losses = dict(self.net.head.loss(out, boxes, labels))
        if self.teacher is not None and self.distill > 0 and self.end_to_end:
            with torch.no_grad():
                t = self.teacher(inputs.float())
            losses["distill"] = self.distill * distill_loss(out, t)
        return losses

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
        return self.net.head.decode(self._maps(inputs), sizes)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict() if self.end_to_end else self.net.head.state_dict()

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        (self.net if self.end_to_end else self.net.head).load_state_dict(sd)

    def reset(self, seed: int) -> None:
        self.load_trainable_state(self._initial)  # the compressed weights, never a random draw
        torch.manual_seed(seed)


def model_path(path: str) -> str:
    """``DIR/model.pt`` for a folder ``assay compress --out DIR`` wrote, else ``path`` itself."""
    return os.path.join(path, "model.pt") if os.path.isdir(path) else path


def from_net(net: nn.Module, source: Any, *, end_to_end: bool, teacher: nn.Module | None = None,
             distill: float = 0.0, path: str | None = None) -> CompressedDetector:
    """A :class:`CompressedDetector` on ``net`` (used in place, not copied); ``source`` is the detector ``net`` was
    made from (its config and classes)."""
    from actors.detection.train import weights_fingerprint

    config = {"name": "compressed", "backbone": path or "<in memory>", "module": MODULE,
              "weights_id": weights_fingerprint(net.trunk.state_dict()),
              "source": dict(source.config.get("source", source.config))}
    return CompressedDetector(net, list(source.classes), config, end_to_end=end_to_end, teacher=teacher,
                              distill=distill)


@register_detector("compressed")
def _compressed(classes: list[str], *, backbone: str = "", end_to_end: bool = False, **_: Any) -> CompressedDetector:
    """The compressed model at ``backbone`` (``assay compress --out`` folder or its ``model.pt``)."""
    from actors.compression.export import load_compressed

    if not backbone:
        raise UserError("the compressed detector needs its model: --init DIR (an `assay compress --out` folder)")
    path = model_path(backbone)
    net, det = load_compressed(path)
    if list(classes) != list(det.classes):
        raise UserError(f"{path}: the compressed model's classes {list(det.classes)} are not the workspace's "
                        f"{list(classes)}")
    return from_net(net, det, end_to_end=end_to_end, path=os.path.abspath(path))


def build_end_to_end(spec: dict, teacher_spec: dict | None, teacher_state: dict | None, distill: float,
                     init: dict[str, torch.Tensor] | None) -> CompressedDetector:
    """Rebuild an end-to-end :class:`CompressedDetector` from :func:`~actors.compression.net.net_spec` and its
    weights ``init`` (the ``build`` of a Ray Train worker: the pruned architecture, never the registry's)."""
    from actors.compression.net import build_net

    if init is None:
        raise ValueError("a compressed network is rebuilt from its weights; none given")
    net, det = build_net(spec, init)
    teacher = build_net(teacher_spec, teacher_state)[0] if teacher_spec is not None else None
    return from_net(net.requires_grad_(True), det, end_to_end=True, teacher=teacher, distill=distill)


__all__ = ["CompressedDetector", "distill_loss", "from_net", "model_path", "build_end_to_end"]
