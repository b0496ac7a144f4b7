"""Workspace images for compression, accuracy of a tensor module, and fine-tuning a pruned one.

* :func:`load_split` — a split's images (1×3×H×W float tensors in [0, 1]) with their boxes and class indices, from
  the catalog (``actors.detection``'s readers), in a stable order.
* :func:`evaluate_outputs` — mAP@.5 and mAP@[.5:.95] of any runner ``images -> (cls, ltrb, ctr)`` (PyTorch
  module or ONNX Runtime session) through the detector's own decoding and ``actors.detection``'s pycocotools
  evaluation, batch 1.
* :func:`finetune` — the pruned network trained end to end (or, ``head_only``, its head on the frozen trunk's
  cached maps, as ``dense-lite0`` trains) by the detector training loop itself
  (:func:`actors.detection.train.train_detector` with ``warm_start=True``: nothing re-initialised, a checkpoint
  every epoch when ``ws``/``ckpt`` are given, resumed after a kill) through
  :class:`~actors.compression.detector.CompressedDetector`: the detector's loss (focal + GIoU + centerness) plus
  distillation from the unpruned teacher's raw maps; normalisation layers keep their statistics. The same loop runs
  on Ray Train in :mod:`actors.compression.ray_finetune`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

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
    batch_size: int = 2
    warmup: float = 0.05
    seed: int = 0
    head_only: bool = False  # trunk frozen, its maps computed once: the detector's own cached training

    @classmethod
    def get_default_config(cls) -> "FinetuneConfig":
        return cls()

    def train_config(self) -> Any:
        """The :class:`actors.detection.train.TrainConfig` of the detector loop these settings mean."""
        from actors.detection.train import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           warmup=self.warmup, hflip=self.hflip, seed=self.seed)


def detection_data(data: Split) -> Any:
    """:class:`actors.detection.train.DetectionData` (images as inputs) of the labeled images of ``data`` that have
    the split's most common size (a batch must share one)."""
    from actors.detection.train import DetectionData

    hw = data.hw()
    keep = [i for i in range(len(data)) if tuple(data.images[i].shape[-2:]) == hw]
    return DetectionData(
        inputs=torch.cat([data.images[i] for i in keep]) if keep else torch.zeros(0, 3, *hw),
        boxes=[torch.from_numpy(np.asarray(data.boxes[i], np.float32)).reshape(-1, 4) for i in keep],
        labels=[torch.from_numpy(np.asarray(data.labels[i], np.int64)) for i in keep],
        sizes=[(hw[1], hw[0])] * len(keep), ids=[data.ids[i] for i in keep])


def detection_loss(net: nn.Module, x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The detector's training loss (focal + GIoU + centerness) of ``net`` on one image."""
    return sum(net.head.loss(net(x), [boxes], [labels]).values())


def finetune(net: nn.Module, data: Split, cfg: FinetuneConfig | None = None, *, teacher: nn.Module | None = None,
             source: Any = None, ws: Any = None, ckpt: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``net`` in place on ``data`` with the detector training loop (warm start); returns
    {"epochs", "losses", "seconds", "resumed_from", "loop"}. ``source``: the detector ``net`` came from (its
    config and classes; default: a stand-in naming the head's classes). With ``ws`` and ``ckpt`` a checkpoint is
    written every epoch and an existing one from the same start is resumed."""
    from actors.compression.detector import from_net
    from actors.detection.train import train_detector

    cfg = cfg or FinetuneConfig()
    dd = detection_data(data)
    if not len(dd) or cfg.epochs <= 0:
        return {"epochs": 0, "losses": [], "seconds": 0.0, "resumed_from": 0, "loop": "none"}
    if cfg.head_only:  # the trunk's maps once per image (fp16, as the detector's feature cache), the head trains
        det = from_net(net, source or _Source(net), end_to_end=False)
        maps = torch.cat([det.inputs(dd.inputs[i:i + 8]) for i in range(0, len(dd), 8)])
        dd = type(dd)(maps, dd.boxes, dd.labels, dd.sizes, dd.ids)
    else:
        det = from_net(net, source or _Source(net), end_to_end=True, teacher=teacher,
                       distill=cfg.distill if teacher is not None else 0.0)
    res = train_detector(det, dd, cfg.train_config(), ws=ws, ckpt=ckpt, warm_start=True, on_step=progress)
    net.eval().requires_grad_(False)
    return {"epochs": res.epochs, "losses": res.losses, "seconds": res.seconds, "resumed_from": res.resumed_from,
            "loop": "actors.detection.train.train_detector"}


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: Sequence[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean/variance of ``net`` on ``images`` (1×3×H×W each), in place
    ("adaptive BN", EagleEye, Li et al. ECCV'20): after channels are removed, the next layers' input statistics
    change and the stored ones no longer normalise them. Only BN statistics change (no weights, no gradients);
    the model is left in eval mode. Returns the number of BN layers re-estimated."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(images):
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calls
        m.train()
    try:
        for x in images:
            net(x)
    finally:
        for m, (mom, _) in zip(bns, saved):
            m.momentum = mom
        net.eval()
    return len(bns)


class _Source:
    """What :func:`finetune` needs of a source detector when none is given."""

    def __init__(self, net: nn.Module) -> None:
        k = net.head.cls.out_channels
        self.classes, self.config = [str(i) for i in range(k)], {"name": "dense-lite0"}


__all__ = ["Split", "load_split", "torch_runner", "onnx_runner", "evaluate_outputs", "FinetuneConfig",
           "detection_loss", "detection_data", "finetune", "recalibrate_bn"]
