"""Workspace images for compression, accuracy of a tensor module, and fine-tuning a pruned one.

* :func:`load_split` — a split's images (1×3×H×W float tensors in [0, 1]) with their boxes and class indices, from
  the catalog (``actors.detection``'s readers), in a stable order.
* :func:`evaluate_outputs` — mAP@.5 and mAP@[.5:.95] of any runner ``images -> (cls, ltrb, ctr)`` (PyTorch
  module or ONNX Runtime session) through the detector's own decoding and ``actors.detection``'s pycocotools
  evaluation, batch 1.
* :func:`finetune` — the pruned end-to-end network trained with the detector's loss (``DenseHead.loss``: focal +
  GIoU + centerness on the labels) plus distillation from the unpruned teacher's raw maps (MSE on class and
  centerness logits, L1 on log box distances), AdamW with cosine decay, horizontal flips, seeded. Normalisation
  layers keep their statistics (eval mode), as in the detector's own training of its frozen trunk. This is our own
  loop, not :func:`actors.detection.train.train_detector`, because that loop trains only the head of a cached
  detector and re-initialises trainable layers from the seed, which would wipe the pruned trunk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

Runner = Callable[[np.ndarray], Sequence[Any]]  # 1×3×H×W float32 -> (cls, ltrb, ctr)


@dataclass
class Split:
    """Images of one split: ``images[i]`` 1×3×H×W, ``boxes[i]`` n×4 pixels, ``labels[i]`` n, ``ids[i]``."""

    ids: list[str]
    images: list[torch.Tensor]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def hw(self) -> tuple[int, int]:
        """The most common H×W (the deployment size the latency is measured at)."""
        sizes = [tuple(x.shape[-2:]) for x in self.images]
        return max(set(sizes), key=sizes.count) if sizes else (384, 512)


def load_split(ws: Any, split: str, classes: Sequence[str], limit: int | None = None) -> Split:
    """Readable images of ``split`` with their human/world labels (empty Split when none)."""
    from actors.core.images import load_image
    from actors.detection.data import catalog_rows, labels_by_image

    rows = sorted(catalog_rows(ws, [split]).values(), key=lambda r: r["image_id"])[:limit]
    labels = labels_by_image(ws, [r["image_id"] for r in rows], classes)
    images = [torch.from_numpy(np.ascontiguousarray(load_image(r["uri"]))).permute(2, 0, 1)[None].float() / 255.0
              for r in rows]
    return Split([r["image_id"] for r in rows], images, [labels[r["image_id"]][0] for r in rows],
                 [labels[r["image_id"]][1] for r in rows])


def torch_runner(net: nn.Module) -> Runner:
    def run(x: np.ndarray) -> Sequence[Any]:
        with torch.inference_mode():
            return net.eval()(torch.from_numpy(x))
    return run


def onnx_runner(session: Any) -> Runner:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def evaluate_outputs(run: Runner, head: nn.Module, data: Split, classes: Sequence[str]) -> dict[str, float]:
    """COCO mAP of ``run``'s decoded detections on ``data`` ({"map50", "map", "n_images", "n_det"})."""
    from actors.detection.evaluate import evaluate_detections

    dets, gt = {}, {}
    for i, x in enumerate(data.images):
        outs = tuple(torch.as_tensor(np.asarray(o)).float() for o in run(x.numpy()))
        h, w = x.shape[-2:]
        r = head.decode(outs, [(int(w), int(h))])[0]
        dets[data.ids[i]] = (r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy())
        gt[data.ids[i]] = (data.boxes[i], data.labels[i])
    rep = evaluate_detections(gt, dets, classes)
    return {"map50": rep.map50, "map": rep.map, "n_images": rep.n_images, "n_det": rep.n_det}


@dataclass
class FinetuneConfig:
    """Fine-tuning of a pruned network; ``get_default_config()`` gives the shipped defaults."""

    epochs: int = 2
    lr: float = 5e-4
    weight_decay: float = 1e-4
    distill: float = 1.0
    hflip: bool = True
    seed: int = 0

    @classmethod
    def get_default_config(cls) -> "FinetuneConfig":
        return cls()


def _flip(x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.shape[-1]
    b = boxes.clone()
    b[:, 0], b[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return x.flip(-1), b


def _distill(s: Sequence[torch.Tensor], t: Sequence[torch.Tensor]) -> torch.Tensor:
    return (F.mse_loss(s[0], t[0]) + F.mse_loss(s[2], t[2])
            + F.l1_loss(torch.log(s[1].clamp(min=1e-3)), torch.log(t[1].clamp(min=1e-3))))


def detection_loss(net: nn.Module, x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The detector's training loss (focal + GIoU + centerness) of ``net`` on one image."""
    return sum(net.head.loss(net(x), [boxes], [labels]).values())


def finetune(net: nn.Module, data: Split, cfg: FinetuneConfig | None = None, *, teacher: nn.Module | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``net`` in place on ``data`` (batch 1); returns {"epochs", "losses", "seconds"}."""
    cfg = cfg or FinetuneConfig()
    if not len(data) or cfg.epochs <= 0:
        return {"epochs": 0, "losses": [], "seconds": 0.0}
    t0 = time.monotonic()
    g = torch.Generator().manual_seed(cfg.seed)
    net.eval().requires_grad_(True)  # eval: normalisation statistics stay as trained
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(data)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        run = 0.0
        for step, i in enumerate(order):
            x, b = data.images[i], torch.from_numpy(np.asarray(data.boxes[i], np.float32)).reshape(-1, 4)
            lab = torch.from_numpy(np.asarray(data.labels[i], np.int64))
            if cfg.hflip and bool(torch.rand(1, generator=g) < 0.5):
                x, b = _flip(x, b)
            out = net(x)
            loss = sum(net.head.loss(out, [b], [lab]).values())
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    t = teacher(x)
                loss = loss + cfg.distill * _distill(out, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss)
            if progress is not None:
                progress(epoch, step, float(loss))
        losses.append(run / len(data))
    net.eval().requires_grad_(False)
    return {"epochs": cfg.epochs, "losses": losses, "seconds": time.monotonic() - t0}


__all__ = ["Split", "load_split", "torch_runner", "onnx_runner", "evaluate_outputs", "FinetuneConfig",
           "detection_loss", "finetune"]
