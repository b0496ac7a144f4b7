"""A light FCOS-style dense detection head over one cached stride-s feature map (the CPU default).

The trunk is frozen and runs once per image (its map is cached); only this head trains: ``depth`` blocks of a
depthwise 3×3 + pointwise conv (GroupNorm, ReLU), then 1×1 outputs. Per cell it predicts K
class logits (sigmoid, focal loss), the distances to the box's four sides (exp, in pixels, GIoU loss) and a
centerness logit (BCE). A cell is positive for a box when its centre lies inside the box and within
``center_radius`` cells of the box centre (the cell holding the centre always qualifies); a cell claimed by several
boxes goes to the smallest. Decoding: score = sqrt(max class prob × centerness), top ``pre_nms`` cells above
``score_thresh``, class-agnostic NMS at ``nms_iou`` (objects of the embedded world overlap little), at most
``max_dets``. Each detection carries its class distribution: the K sigmoid probabilities of its cell, normalised
to sum to 1 (what the entropy score reads).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss


@dataclass
class HeadConfig:
    """Shape and decoding of :class:`DenseHead`; ``get_default_config()`` gives the shipped defaults."""

    in_channels: int = 152
    width: int = 64
    depth: int = 2
    stride: int = 8
    center_radius: float = 1.5
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    pre_nms: int = 200
    max_dets: int = 50

    @classmethod
    def get_default_config(cls) -> "HeadConfig":
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


class DenseHead(nn.Module):
    """B×C×h×w cached features -> (cls B×K×h×w logits, ltrb B×4×h×w pixels, ctr B×1×h×w logits)."""

    def __init__(self, num_classes: int, cfg: HeadConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HeadConfig()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for _ in range(cfg.depth):  # depthwise 3×3 + pointwise: spatial context at a ninth of a 3×3's cost
            layers += [nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cfg.width, 1),
                       nn.GroupNorm(8, cfg.width), nn.ReLU(inplace=True)]
            cin = cfg.width
        self.tower = nn.Sequential(*layers)
        self.cls = nn.Conv2d(cin, num_classes, 1)
        self.box = nn.Conv2d(cin, 4, 1)
        self.ctr = nn.Conv2d(cin, 1, 1)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))  # focal-loss prior: 1% foreground
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.box.bias, 1.0)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.tower(f.float())  # B×W×h×w
        ltrb = torch.exp(self.box(t).clamp(max=6.0)) * self.cfg.stride  # B×4×h×w, pixels
        return self.cls(t), ltrb, self.ctr(t)

    # ------------------------------------------------------------------ training
    def _centers(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        s = self.cfg.stride
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([(xs.flatten() + 0.5) * s, (ys.flatten() + 0.5) * s], 1).float()  # hw×2

    def targets(self, boxes: torch.Tensor, labels: torch.Tensor, h: int, w: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell class index (−1 background) hw and target box hw×4 for one image's N×4 ``boxes``."""
        c = self._centers(h, w, boxes.device)  # hw×2
        cls = torch.full((h * w,), -1, dtype=torch.long, device=boxes.device)
        tgt = torch.zeros(h * w, 4, device=boxes.device)
        if not len(boxes):
            return cls, tgt
        inside = ((c[:, None, 0] >= boxes[None, :, 0]) & (c[:, None, 0] <= boxes[None, :, 2])
                  & (c[:, None, 1] >= boxes[None, :, 1]) & (c[:, None, 1] <= boxes[None, :, 3]))  # hw×N
        mid = (boxes[:, :2] + boxes[:, 2:]) / 2  # N×2
        near = ((c[:, None, :] - mid[None]).abs() <= self.cfg.center_radius * self.cfg.stride).all(2)  # hw×N
        home = ((mid / self.cfg.stride).floor().long())  # N×2 cell holding each centre
        home_idx = (home[:, 1].clamp(0, h - 1) * w + home[:, 0].clamp(0, w - 1))
        ok = inside & near
        ok[home_idx, torch.arange(len(boxes))] = True
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand_as(ok)
        area = torch.where(ok, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(1)
        pos = torch.isfinite(best_area)
        cls[pos] = labels[best[pos]]
        tgt[pos] = boxes[best[pos]]
        return cls, tgt

    def loss(self, out: tuple[torch.Tensor, ...], boxes: list[torch.Tensor], labels: list[torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """Focal + GIoU + centerness losses for a batch (``boxes[i]`` N×4 pixels, ``labels[i]`` N in 0..K-1)."""
        cls_logits, ltrb, ctr = out
        b, k, h, w = cls_logits.shape
        c = self._centers(h, w, cls_logits.device)
        tc, tb = zip(*[self.targets(bx, lb, h, w) for bx, lb in zip(boxes, labels)])
        tc, tb = torch.stack(tc), torch.stack(tb)  # B×hw, B×hw×4
        logits = cls_logits.flatten(2).transpose(1, 2)  # B×hw×K
        onehot = F.one_hot(tc.clamp(min=0), k).float() * (tc >= 0).unsqueeze(-1)
        pos = tc >= 0
        n_pos = max(1.0, float(pos.sum()))
        l_cls = sigmoid_focal_loss(logits, onehot, reduction="sum") / n_pos
        if not pos.any():
            zero = ltrb.sum() * 0 + ctr.sum() * 0
            return {"cls": l_cls, "box": zero, "ctr": zero}
        d = ltrb.flatten(2).transpose(1, 2)[pos]  # P×4
        cp = c[None].expand(b, -1, -1)[pos]  # P×2
        pred = torch.cat([cp - d[:, :2], cp + d[:, 2:]], 1)
        gt = tb[pos]
        l, t = cp[:, 0] - gt[:, 0], cp[:, 1] - gt[:, 1]
        r, bt = gt[:, 2] - cp[:, 0], gt[:, 3] - cp[:, 1]
        lr = torch.stack([l, r], 1).clamp(min=1e-3)
        tb_ = torch.stack([t, bt], 1).clamp(min=1e-3)
        centerness = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb_.min(1).values / tb_.max(1).values))
        l_box = (generalized_box_iou_loss(pred, gt, reduction="none") * centerness).sum() / centerness.sum().clamp(min=1e-6)
        l_ctr = F.binary_cross_entropy_with_logits(ctr.flatten(1)[pos], centerness, reduction="mean")
        return {"cls": l_cls, "box": l_box, "ctr": l_ctr}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def decode(self, out: tuple[torch.Tensor, ...], sizes: list[tuple[int, int]] | None = None
               ) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes M×4 (pixels, clipped to ``sizes[i]`` = (W, H)), scores M, labels M, probs M×K."""
        cls_logits, ltrb, ctr = out
        b, k, h, w = cls_logits.shape
        c = self._centers(h, w, cls_logits.device)
        res = []
        for i in range(b):
            p = torch.sigmoid(cls_logits[i].flatten(1).T)  # hw×K
            q = torch.sigmoid(ctr[i].flatten())  # hw
            top, lab = p.max(1)
            score = torch.sqrt(top * q)
            keep = torch.nonzero(score > self.cfg.score_thresh).flatten()
            keep = keep[score[keep].argsort(descending=True)[: self.cfg.pre_nms]]
            d = ltrb[i].flatten(1).T[keep]
            bx = torch.cat([c[keep] - d[:, :2], c[keep] + d[:, 2:]], 1)
            if sizes is not None:
                W, H = sizes[i]
                bx[:, 0::2] = bx[:, 0::2].clamp(0, W)
                bx[:, 1::2] = bx[:, 1::2].clamp(0, H)
            sel = batched_nms(bx, score[keep], torch.zeros_like(keep), self.cfg.nms_iou)[: self.cfg.max_dets]
            probs = p[keep[sel]]
            res.append({"boxes": bx[sel], "scores": score[keep][sel], "labels": lab[keep][sel],
                        "probs": probs / probs.sum(1, keepdim=True).clamp(min=1e-8)})
        return res


__all__ = ["HeadConfig", "DenseHead"]
