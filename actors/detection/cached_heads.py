"""torchvision's own detection heads on the frozen, cached Lite0 trunk: the peers of ``dense-lite0``.

``fcos-head-lite0``, ``retinanet-head-lite0`` and ``ssdlite-head-lite0`` put torchvision's ``FCOSHead``,
``RetinaNetHead`` and ``SSDLiteHead`` — with their own target assignment, losses and decoding
(``compute_loss`` / ``postprocess_detections`` of the torchvision model) — on exactly the input ``dense-lite0`` reads:
the fused stride-8 map of the frozen EfficientNet-Lite0 trunk, cached once per image. Only the head trains, so the
comparison is head against head, on 2 CPU cores, at equal input.

Single feature level (stride 8), so the anchors cover the embedded world's object sizes from one map: FCOS one
anchor per cell (its distances regress any size), RetinaNet five square sizes 16–80 px per cell, SSDlite two default
boxes (scales 0.06 and 0.15 of the image side, aspect ratios 1 and 2). Images have no normalisation or resizing step:
the cached map is already the trunk's, and boxes stay in pixels of the original image. A 1×1 neck (``NECK_WIDTH``
channels, like an FPN lateral) feeds the head: torchvision's towers (four 3×3 convs per branch) at its usual 256
channels would cost ~14 GFLOPs per image at stride 8.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from actors.detection.models import Detector, _trunk, from_torchvision, register_detector

NECK_WIDTH = 64  # a 1×1 conv (+GroupNorm, ReLU) from the trunk's 152 channels: torchvision's towers at 256 wide
#                  cost ~14 GFLOPs per 512×384 image at stride 8, beyond a 2-core training budget


class _NoBody(nn.Module):
    """A placeholder backbone: the torchvision model is built around it, its forward never runs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("cached head: the trunk's map is the input")


class CachedTorchvisionHead(Detector):
    """Frozen trunk (maps cached by the caller) + one torchvision detection head (``kind``: fcos/retinanet/ssdlite);
    labels are shifted by one inside (torchvision reserves 0 for the background)."""

    cached = True

    def __init__(self, classes: list[str], trunk: nn.Module, kind: str, config: dict) -> None:
        super().__init__(classes, config)
        self.trunk = trunk.eval().requires_grad_(False)
        self.kind, self.stride = kind, int(trunk.stride)
        self.model = self._build()

    def _build(self) -> nn.Module:
        from torchvision.models.detection import FCOS, RetinaNet
        from torchvision.models.detection.ssd import SSD
        from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.models.detection.ssdlite import SSDLiteHead

        c, k = NECK_WIDTH, len(self.classes) + 1
        self.neck = nn.Sequential(nn.Conv2d(self.trunk.dim, c, 1), nn.GroupNorm(16, c), nn.ReLU(inplace=True))
        body = _NoBody(c)
        if self.kind == "fcos":
            return FCOS(body, num_classes=k, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
                        detections_per_img=50, score_thresh=0.05, topk_candidates=200)
        if self.kind == "retinanet":
            gen = AnchorGenerator(((16, 24, 36, 54, 80),), ((1.0,),))
            return RetinaNet(body, num_classes=k, anchor_generator=gen,
                             head=RetinaNetHead(c, gen.num_anchors_per_location()[0], k),
                             detections_per_img=50, score_thresh=0.05, topk_candidates=200)
        if self.kind == "ssdlite":
            gen = DefaultBoxGenerator([[2]], min_ratio=0.06, max_ratio=0.15, scales=[0.06, 0.15])
            head = SSDLiteHead([c], gen.num_anchors_per_location(), k,
                               partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
            return SSD(body, gen, (384, 512), k, head=head, detections_per_img=50, score_thresh=0.05,
                       topk_candidates=200)
        raise ValueError(f"unknown head kind {self.kind!r}")

    def train(self, mode: bool = True) -> "CachedTorchvisionHead":
        super().train(mode)
        self.trunk.eval()
        return self

    @torch.no_grad()
    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images).to(torch.float16)

    def _frame(self, f: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> ImageList:
        """An ImageList of the right shape for the anchor generators (no pixels: only shapes are read)."""
        b, _, h, w = f.shape
        canvas = torch.zeros(1, 1, 1, 1, device=f.device).expand(b, 3, h * self.stride, w * self.stride)
        hw = [(int(H), int(W)) for W, H in sizes] if sizes else [(h * self.stride, w * self.stride)] * b
        return ImageList(canvas, hw)

    def loss(self, inputs: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        m, f = self.model, [self.neck(inputs.float())]
        targets = [{"boxes": b.float().reshape(-1, 4), "labels": lab.long() + 1} for b, lab in zip(boxes, labels)]
        out = m.head(f)
        anchors = m.anchor_generator(self._frame(f[0]), f)
        if self.kind == "fcos":
            return m.compute_loss(targets, out, anchors, [x.size(2) * x.size(3) for x in f])
        if self.kind == "retinanet":
            return m.compute_loss(targets, out, anchors)
        matched = []
        for a, t in zip(anchors, targets):
            if t["boxes"].numel() == 0:
                matched.append(torch.full((a.size(0),), -1, dtype=torch.int64, device=a.device))
            else:
                matched.append(m.proposal_matcher(box_ops.box_iou(t["boxes"], a)))
        return m.compute_loss(targets, out, anchors, matched)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
        m, f = self.model, [self.neck(inputs.float())]
        frame = self._frame(f[0], sizes)
        out = m.head(f)
        anchors = m.anchor_generator(frame, f)
        if self.kind == "ssdlite":
            dets = m.postprocess_detections(out, anchors, frame.image_sizes)
        else:
            hw = f[0].size(2) * f[0].size(3)
            n = [out["cls_logits"].size(1) // hw * hw]
            split = {k: list(v.split(n, dim=1)) for k, v in out.items()}
            dets = m.postprocess_detections(split, [list(a.split(n)) for a in anchors], frame.image_sizes)
        return [from_torchvision(r, len(self.classes)) for r in dets]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {**{f"neck.{k}": v for k, v in self.neck.state_dict().items()},
                **{f"model.{k}": v for k, v in self.model.state_dict().items()}}

    def reset(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = self._build()

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        self.neck.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("neck.")})
        self.model.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("model.")})


def _builder(kind: str):
    def build(classes: list[str], *, backbone: str = "efficientnet-lite0", random_init: bool = False,
              **_: Any) -> CachedTorchvisionHead:
        opts = {"fuse": True} if backbone.startswith("efficientnet-lite0") else {}
        trunk = _trunk(backbone, random_init, **opts)
        config = {"name": f"{kind}-head-lite0", "backbone": backbone, "fuse": bool(opts),
                  "head": {"kind": kind, "stride": int(trunk.stride)}, "weights_id": trunk.weights_id}
        return CachedTorchvisionHead(classes, trunk, kind, config)
    return build


for _kind in ("fcos", "retinanet", "ssdlite"):
    register_detector(f"{_kind}-head-lite0")(_builder(_kind))

__all__ = ["CachedTorchvisionHead"]
