"""Feature distillation of a pruned trunk to the original's, on unlabeled workspace images.

Assay's default detector (``dense-lite0``) trains only its head, on the frozen ImageNet trunk's cached map. Pruning
the trunk changes that map, and the head trained on the original one no longer reads it (mAP ~0 before any
training). :func:`distill_trunk` trains the pruned trunk to *reproduce the original trunk's map* again — a dense
target at every cell, no labels needed, so every training and pool image of the workspace can be used — plus the
detector outputs through the (unchanged) head (:func:`actors.compression.detector.distill_loss`). Pruning has
to keep the trunk's output channels for this (the head's input is protected from pruning:
``ignored=`` every head conv), so the original head runs on the distilled trunk as it is.

* Loss per step: ``mean((s - t)² / var_t)`` over channels and cells, where ``s``/``t`` are the student/teacher
  trunk maps and ``var_t`` the teacher's per-channel variance on the first 16 images (every channel counts alike:
  1.0 is what predicting the channel mean scores), plus ``out_weight`` × the output distillation.
* Batches: ``batch_size`` random crops of ``crop`` pixels (multiples of the trunk's stride, so the crop's map is a
  crop of the map up to border effects; a quarter of a 384×512 image costs a quarter of its compute), mirrored at
  random; crop positions, images and flips come from ``seed`` and the step number, so a resumed run draws what the
  uninterrupted one drew.
* AdamW, linear warm-up over 5% of the steps then cosine decay. BatchNorm layers keep their statistics (eval
  mode; re-estimate them first, :func:`actors.compression.finetune.recalibrate_bn`): small batches of crops
  estimate them worse, and what is trained is what runs. ``bn_train=True`` trains in batch statistics instead.
* Every ``checkpoint_every`` steps (and at the end) the student, optimizer, scheduler and step are written
  atomically to ``ckpt`` in the workspace; a run finding a checkpoint of the same start (student and teacher
  weights, config) resumes from it, and one of another start is a UserError naming the file.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from actors.core.errors import UserError


@dataclass
class DistillConfig:
    """Feature distillation of a pruned trunk; ``get_default_config()`` gives the shipped defaults."""

    steps: int = 1500
    batch_size: int = 8
    crop: tuple[int, int] = (128, 192)
    lr: float = 2e-3
    weight_decay: float = 1e-5
    out_weight: float = 1.0
    hflip: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    bn_train: bool = False

    @classmethod
    def get_default_config(cls) -> "DistillConfig":
        return cls()


def crop_size(images: Sequence[torch.Tensor], crop: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """``crop`` shrunk to fit every image, rounded down to multiples of ``stride`` (at least one stride)."""
    h = min([crop[0]] + [int(x.shape[-2]) for x in images])
    w = min([crop[1]] + [int(x.shape[-1]) for x in images])
    return max(stride, h // stride * stride), max(stride, w // stride * stride)


def _batch(images: Sequence[torch.Tensor], cfg: DistillConfig, step: int, hw: tuple[int, int],
           stride: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    ch, cw = hw
    out = []
    for _ in range(cfg.batch_size):
        x = images[int(torch.randint(len(images), (1,), generator=g))]
        y0 = int(torch.randint((x.shape[-2] - ch) // stride + 1, (1,), generator=g)) * stride
        x0 = int(torch.randint((x.shape[-1] - cw) // stride + 1, (1,), generator=g)) * stride
        c = x[..., y0:y0 + ch, x0:x0 + cw]
        if cfg.hflip and bool(torch.rand(1, generator=g) < 0.5):
            c = c.flip(-1)
        out.append(c.reshape(1, 3, ch, cw))
    return torch.cat(out)


def _fingerprint(net: nn.Module) -> str:
    from actors.detection.train import weights_fingerprint

    return weights_fingerprint(net.state_dict())


def distill_trunk(student: nn.Module, teacher: nn.Module, images: Sequence[torch.Tensor],
                  cfg: DistillConfig | None = None, *, ws: Any = None, ckpt: str | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train ``student.trunk`` (a pruned copy of ``teacher``, a :class:`~actors.compression.net.DenseNet`) in place
    to reproduce ``teacher.trunk``'s map on ``images`` (1×3×H×W each, unlabeled); ``student.head`` is not trained.
    Returns {"steps", "resumed_from", "losses" (mean per checkpoint interval), "seconds", "crop"}.

    Raises ValueError when the trunks' output channels differ (prune with the head's input protected) and
    UserError for a checkpoint at ``ckpt`` from another start.
    """
    cfg = cfg or DistillConfig()
    if not len(images) or cfg.steps <= 0:
        return {"steps": 0, "resumed_from": 0, "losses": [], "seconds": 0.0, "crop": None}
    teacher = teacher.eval().requires_grad_(False)
    with torch.no_grad():
        probe = images[0][..., :32, :32]
        if student.trunk.eval()(probe).shape[1] != teacher.trunk(probe).shape[1]:
            raise ValueError("the student trunk's output channels differ from the teacher's: prune with every "
                             "head conv ignored (the head's input protected) to distill the trunk")
        first = torch.cat([teacher.trunk(x) for x in images[:16] if x.shape == images[0].shape])
        var = first.var(dim=(0, 2, 3), keepdim=True) + 1e-4
    stride = max(1, round(images[0].shape[-1] / first.shape[-1])) * 2  # the deepest map's stride (fused: 2× the map's)
    hw = crop_size(images, cfg.crop, stride)
    trunk = student.trunk
    trunk.requires_grad_(True)
    opt = torch.optim.AdamW(trunk.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, math.ceil(0.05 * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 5% of the steps, then cosine to 0
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    config = {"distill": {**asdict(cfg), "crop": list(cfg.crop)}, "student": _fingerprint(student),
              "teacher": _fingerprint(teacher), "images": len(images)}
    start, losses = 0, []
    if ckpt and ws is not None and ws.exists(ckpt):
        try:
            ck = torch.load(io.BytesIO(ws.read_bytes(ckpt)), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise UserError(f"{ws.path(ckpt)}: not a readable distillation checkpoint ({type(e).__name__})") from e
        if not isinstance(ck, dict) or ck.get("config") != config:
            raise UserError(f"{ws.path(ckpt)}: distillation checkpoint from another start or configuration; "
                            "delete it or use another run id")
        student.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, losses = int(ck["step"]), list(ck["losses"])
    t0 = time.monotonic()
    head = student.head.eval().requires_grad_(False)
    from actors.compression.detector import distill_loss

    trunk.train(cfg.bn_train)
    acc, n = 0.0, 0
    for step in range(start, cfg.steps):
        xb = _batch(images, cfg, step, hw, stride)
        with torch.no_grad():
            t = teacher.trunk(xb)
            to = teacher.head(t) if cfg.out_weight else None
        s = trunk(xb)
        loss = ((s - t) ** 2 / var).mean()
        if cfg.out_weight:
            loss = loss + cfg.out_weight * distill_loss(head(s), to)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc, n = acc + float(loss.detach()), n + 1
        if progress is not None:
            progress(step + 1, cfg.steps, float(loss.detach()))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            losses.append(acc / n)
            acc, n = 0.0, 0
            if ckpt and ws is not None:
                buf = io.BytesIO()
                torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "step": step + 1, "losses": losses,
                            "config": config}, buf)
                ws.write_bytes(ckpt, buf.getvalue())
    student.eval().requires_grad_(False)
    return {"steps": cfg.steps - start, "resumed_from": start, "losses": losses,
            "seconds": time.monotonic() - t0, "crop": list(hw)}


__all__ = ["DistillConfig", "crop_size", "distill_trunk"]
