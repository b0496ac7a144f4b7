"""Detector training: one seeded loop, a checkpoint every epoch, resume after a kill. No Ray here
(:mod:`actors.detection.ray_train` runs this same loop inside a Ray Train ``TorchTrainer`` worker).

Contract
--------
* :func:`train_detector` trains ``det`` on :class:`DetectionData` for ``cfg.epochs`` epochs, or more when that
  would be under ``cfg.min_steps`` gradient steps (a small labeled set then still trains enough) (AdamW, linear
  warm-up then cosine decay per step, horizontal-flip augmentation). Epoch ``e`` shuffles and flips with a
  generator seeded by ``(cfg.seed, e)``, and the model is initialised from ``cfg.seed``; so a run resumed from the
  checkpoint of epoch ``e`` replays exactly the epochs an uninterrupted run would have (same result, on the same
  machine and thread count).
* After every epoch the checkpoint ``dict(model, optimizer, scheduler, epoch, config)`` is written atomically
  (temp + rename) to ``ckpt`` in the workspace. With ``resume=True`` an existing checkpoint whose ``config``
  matches is continued from; one that does not match is an error, never silently mixed.
* Checkpoints load with ``torch.load(weights_only=True)`` (:func:`load_detector`).
* Warm start (``warm_start=True``): training starts from ``det``'s current weights instead of ``det.reset(seed)``
  — trainable layers are not re-initialised, whatever their shapes (a pruned model's narrower layers included).
  The checkpoint's ``config`` then records ``init``, a fingerprint of those starting weights
  (:func:`weights_fingerprint`), so a resume only continues a run that started from the same weights.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from actors.core.errors import UserError
from actors.core.workspace import Workspace
from actors.detection.models import Detector, get_detector, list_detectors


@dataclass
class TrainConfig:
    """Optimisation settings; ``get_default_config()`` gives the shipped defaults (tuned on world seed 1)."""

    epochs: int = 24
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    hflip: bool = True
    seed: int = 0
    min_steps: int = 0  # at least this many gradient steps: epochs are raised for a small labeled set

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs run on data of ``steps_per_epoch`` batches: ``epochs``, raised to reach ``min_steps``."""
        return max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))

    @classmethod
    def get_default_config(cls) -> "TrainConfig":
        return cls()


Inputs = torch.Tensor | list[torch.Tensor]  # N×C×H×W when every image shares a size, else one C×H×W per image


def as_inputs(items: Sequence[torch.Tensor]) -> Inputs:
    """Per-image tensors as :class:`DetectionData` inputs: stacked (N×…) when they share a shape, else the list."""
    if not items:
        return torch.zeros(0)
    return torch.stack(list(items)) if len({tuple(t.shape) for t in items}) == 1 else list(items)


@dataclass
class DetectionData:
    """Training/eval inputs: ``inputs`` (cached features or images: N×… stacked, or a list of per-image tensors
    when the images differ in size), per-image ``boxes`` (n×4 pixels), ``labels`` (n, 0..K-1), ``sizes`` (W, H)
    and ``ids``. A batch is always drawn from images of one shape (:func:`shape_batches`)."""

    inputs: Inputs
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def shapes(self) -> list[tuple[int, ...]]:
        """The input shape of each image (one shape for all when the inputs are stacked)."""
        if isinstance(self.inputs, torch.Tensor):
            return [tuple(self.inputs.shape[1:])] * len(self.inputs)
        return [tuple(t.shape) for t in self.inputs]

    def take(self, idx: Sequence[int]) -> torch.Tensor:
        """B×… inputs of the images ``idx``, which must share a shape."""
        if isinstance(self.inputs, torch.Tensor):
            return self.inputs[torch.as_tensor(list(idx), dtype=torch.long)]
        return torch.stack([self.inputs[i] for i in idx])

    def subset(self, idx: Sequence[int]) -> "DetectionData":
        """The images ``idx``, in that order."""
        idx = list(idx)
        inputs = self.inputs[idx] if isinstance(self.inputs, torch.Tensor) else as_inputs([self.inputs[i]
                                                                                           for i in idx])
        return DetectionData(inputs, [self.boxes[i] for i in idx], [self.labels[i] for i in idx],
                             [self.sizes[i] for i in idx], [self.ids[i] for i in idx] if self.ids else [])

    def to_float(self) -> "DetectionData":
        """The same data with float32 inputs (cached maps are stored as fp16)."""
        x = self.inputs.float() if isinstance(self.inputs, torch.Tensor) else [t.float() for t in self.inputs]
        return DetectionData(x, self.boxes, self.labels, self.sizes, self.ids)


def shape_batches(shapes: Sequence[tuple[int, ...]], order: Iterable[int], batch_size: int) -> list[list[int]]:
    """Batches of at most ``batch_size`` indices taken in ``order``, each of one input shape.

    With one shape these are the consecutive chunks of ``order``. With several, an index joins the open batch of its
    shape, which is emitted when full; the unfilled ones follow in order of first appearance. Either way there are
    ``sum(ceil(n_shape / batch_size))`` batches, whatever the order.
    """
    open_: dict[tuple[int, ...], list[int]] = {}
    out: list[list[int]] = []
    for i in order:
        b = open_.setdefault(shapes[i], [])
        b.append(int(i))
        if len(b) == batch_size:
            out.append(b)
            open_[shapes[i]] = []
    return out + [b for b in open_.values() if b]


@dataclass
class TrainResult:
    """What :func:`train_detector` did: epochs run in this call, where it resumed from, mean loss per epoch."""

    epochs: int
    resumed_from: int
    losses: list[float]
    seconds: float
    checkpoint: str | None


def _lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    w = max(1, int(warmup * total))

    def f(step: int) -> float:
        if step < w:
            return 0.1 + 0.9 * step / w
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))
    return f


def _flip(x: torch.Tensor, boxes: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    b = boxes.clone()
    b[:, 0], b[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return x.flip(-1), b


def _batch(det: Detector, data: DetectionData, idx: list[int], flips: torch.Tensor):
    x = data.take(idx)
    boxes, labels = [data.boxes[i] for i in idx], [data.labels[i] for i in idx]
    head = det.config.get("head") or det.config.get("source", {}).get("head", {})  # a compressed one: its source's
    stride = head.get("stride", 1) if det.cached else 1
    xs, bs = [], []
    for j in range(len(idx)):
        width = x.shape[-1] * stride if det.cached else data.sizes[idx[j]][0]
        xj, bj = _flip(x[j], boxes[j], width) if flips[j] else (x[j], boxes[j])
        xs.append(xj)
        bs.append(bj)
    return torch.stack(xs), bs, labels


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short sha256 of a state dict (names, shapes and values): which weights a warm-started run began from."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def config_of(det: Detector, cfg: TrainConfig, init: str | None = None) -> dict[str, Any]:
    """What a checkpoint records to rebuild the detector and check a resume (``init``: warm-start fingerprint)."""
    out = {"detector": det.config, "classes": list(det.classes), "train": asdict(cfg)}
    if init is not None:
        out["init"] = init
    return out


def _save(ws: Workspace, rel: str, det: Detector, opt, sched, epoch: int, config: dict) -> None:
    buf = io.BytesIO()
    torch.save({"model": det.trainable_state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "config": config}, buf)
    ws.write_bytes(rel, buf.getvalue())


def read_checkpoint(ws: Workspace, rel: str) -> dict[str, Any]:
    """The checkpoint dict at ``rel`` (``weights_only=True``); UserError naming the file when unreadable."""
    try:
        ck = torch.load(io.BytesIO(ws.read_bytes(rel)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"{ws.path(rel)}: not a readable detector checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or not {"model", "epoch", "config"} <= set(ck):
        raise UserError(f"{ws.path(rel)}: not a detector checkpoint (needs model, epoch, config)")
    return ck


def load_detector(ws: Workspace, rel: str) -> Detector:
    """Rebuild the detector a checkpoint was trained as, with its weights, in eval mode (a detector that another
    package registers, e.g. ``compressed``, names its module in the config and is imported from there)."""
    ck = read_checkpoint(ws, rel)
    dcfg = dict(ck["config"]["detector"])
    name = dcfg.pop("name")
    if dcfg.get("module") and name not in list_detectors():  # a detector registered by another package
        import importlib

        importlib.import_module(dcfg["module"])
    opts = {"backbone": dcfg["backbone"]}
    if "head" in dcfg:
        opts.update({k: v for k, v in dcfg["head"].items() if k not in ("in_channels", "stride")})
        opts["fuse"] = dcfg.get("fuse", True)
    det = get_detector(name, ck["config"]["classes"], **opts)
    try:
        det.load_trainable_state(ck["model"])
    except RuntimeError as e:
        raise UserError(f"{ws.path(rel)}: weights do not fit {name} ({str(e).splitlines()[0]})") from e
    return det.eval()


def train_detector(det: Detector, data: DetectionData, cfg: TrainConfig | None = None, *,
                   ws: Workspace | None = None, ckpt: str | None = None, resume: bool = True,
                   on_step: Callable[[int, int], None] | None = None,
                   on_epoch: Callable[[int, float], None] | None = None, progress: bool = False,
                   warm_start: bool = False) -> TrainResult:
    """Train ``det`` in place; see the module contract. ``on_step(epoch, step)`` / ``on_epoch(epoch, loss)`` hooks.

    ``warm_start=True`` trains from ``det``'s current weights (no ``det.reset``): fine-tuning a trained or a
    pruned detector, or continuing from an earlier run's model.

    Raises
    ------
    UserError
        No training images, or a checkpoint at ``ckpt`` trained with another configuration.
    """
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    if len(data) == 0:
        raise UserError("no labeled images to train the detector on")
    t0 = time.monotonic()
    init = None
    if warm_start:
        init = weights_fingerprint(det.trainable_state())
        torch.manual_seed(cfg.seed)
    else:
        det.reset(cfg.seed)  # a fresh and a resumed run start from the same weights
    params = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    shapes = data.shapes()
    steps_per_epoch = max(1, len(shape_batches(shapes, range(len(data)), cfg.batch_size)))
    epochs = cfg.epochs_for(steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(epochs * steps_per_epoch, cfg.warmup))
    config, start = config_of(det, cfg, init), 0
    if ckpt and ws is not None and resume and ws.exists(ckpt):
        ck = read_checkpoint(ws, ckpt)
        if ck["config"] != config:
            raise UserError(f"{ws.path(ckpt)}: checkpoint was trained with another configuration; "
                            "delete it or use another run id")
        det.load_trainable_state(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start = int(ck["epoch"]) + 1
    if data.take([0]).dtype == torch.float16:  # cached maps are stored as fp16; convert once, not every step
        data = data.to_float()
    losses = []
    det.train()
    bar = tqdm(total=epochs, initial=start, desc="train detector", unit="epoch", disable=not progress)
    for epoch in range(start, epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(data), generator=g)
        flips = (torch.rand(len(data), generator=g) < 0.5) & cfg.hflip
        total = 0.0
        for step, idx in enumerate(shape_batches(shapes, order.tolist(), cfg.batch_size)):
            if on_step is not None:
                on_step(epoch, step)
            x, boxes, labels = _batch(det, data, idx, flips[idx])
            loss = sum(det.loss(x, boxes, labels).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        losses.append(total / steps_per_epoch)
        if ckpt and ws is not None:
            _save(ws, ckpt, det, opt, sched, epoch, config)
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    det.eval()
    return TrainResult(epochs=epochs - start, resumed_from=start, losses=losses,
                       seconds=time.monotonic() - t0, checkpoint=ckpt)


@torch.no_grad()
def predict(det: Detector, data: DetectionData, *, mirrored: bool = False, batch_size: int = 16
            ) -> dict[str, dict[str, Any]]:
    """Detections per image id (numpy: boxes M×4, scores M, labels M, probs M×K).

    ``mirrored=True``: ``data.inputs`` are of the horizontally flipped images (their features, for a cached
    detector); the boxes are mapped back to the original frame.
    """
    det.eval()
    out = {}
    for idx in shape_batches(data.shapes(), range(len(data)), batch_size):
        sizes = [data.sizes[i] for i in idx]
        for i, width, r in zip(idx, (w for w, _ in sizes), det.predict(data.take(idx), sizes)):
            b = r["boxes"].clone()
            if mirrored:
                b[:, 0], b[:, 2] = width - r["boxes"][:, 2], width - r["boxes"][:, 0]
            out[data.ids[i]] = {"boxes": b.numpy(), "scores": r["scores"].numpy(),
                                "labels": r["labels"].numpy(), "probs": r["probs"].numpy()}
    return out


__all__ = ["TrainConfig", "DetectionData", "TrainResult", "Inputs", "as_inputs", "shape_batches", "train_detector",
           "predict", "load_detector", "read_checkpoint", "config_of", "weights_fingerprint"]
