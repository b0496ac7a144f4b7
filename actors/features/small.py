"""assay-small: Assay's own compact backbone, and how it is trained on a workspace's labels (no download).

5 convs, stride 8, 64 channels, receptive field 63 px, sized for 10–45 px objects; registered as ``"assay-small"``
and loaded from ``models/assay-small.pt``.

Training recipe (no download, :func:`train_backbone`): windows around every labeled train object (native scale,
with context) and as many background windows (half of them hard, textured negatives). Each batch copy-pastes half
of its objects onto other images' background windows, then rotates, scales, shifts and recolours (channel
permutation, inversion, grey: object colour is arbitrary). The loss is the one template matching needs: the
trunk's mean feature inside the object box (``roi_align``, as the matcher does), made zero-mean and unit-norm
(NCC of a 1×1 template), is classified by scaled cosine against one learned prototype per class + background.
The head is dropped afterwards; the trunk's cells are localized, NCC-comparable region features.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.catalog.schema import IMAGES, LABELS
from actors.core.errors import UserError
from actors.core.workspace import Workspace
from actors.features.backbones import (IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor, _state_dict, _weights_id,
                                       checkpoint_bytes, register_backbone)
from actors.features.regions import region_vectors

SMALL_CHECKPOINT = "models/assay-small.pt"

# ------------------------------------------------------------------------------------------------ assay-small
@dataclass
class SmallConfig:
    """assay-small's shape: channel widths of its 5 convs and output stride (8, or 4 for very small objects)."""

    widths: tuple[int, ...] = (32, 48, 64, 96, 64)
    stride: int = 8


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_trunk(cfg: SmallConfig) -> nn.Sequential:
    """3 stride-2 convs (stride 8; the third is stride 1 when ``cfg.stride == 4``), then 2 convs, the last dilated.

    Receptive field at stride 8: 3, 7, 15, 31, 63 px: a 10–45 px object and some context land in one cell.
    """
    if cfg.stride not in (4, 8):
        raise UserError(f"assay-small stride must be 4 or 8, got {cfg.stride}")
    w = list(cfg.widths)
    return nn.Sequential(_conv(3, w[0], 2), _conv(w[0], w[1], 2), _conv(w[1], w[2], 2 if cfg.stride == 8 else 1),
                         _conv(w[2], w[3]), _conv(w[3], w[4], dilation=2))


@register_backbone("assay-small")
def _small_backbone(*, workspace: Workspace | str | None = None, checkpoint: str | None = None,
                    random_init: bool = False, normalize: bool = True, **cfg: Any) -> FeatureExtractor:
    if random_init:
        conf = SmallConfig(**{k: v for k, v in cfg.items() if k in ("widths", "stride")})
        return FeatureExtractor(small_trunk(conf), name="assay-small", normalize=normalize)
    data = checkpoint_bytes(checkpoint, workspace, SMALL_CHECKPOINT, label="assay-small",
                            train_cmd="assay backbone train --workspace …")
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    conf = SmallConfig(**{k: tuple(v) if k == "widths" else v for k, v in ckpt.get("config", {}).items()
                          if k in ("widths", "stride")})
    body = small_trunk(conf)
    body.load_state_dict(_state_dict(ckpt, "assay-small checkpoint"))
    return FeatureExtractor(body, name="assay-small", normalize=normalize, weights_id=_weights_id(data))


def save_small_checkpoint(ws: Workspace, body: nn.Module, cfg: SmallConfig, **extra: Any) -> str:
    """Atomically write ``models/assay-small.pt`` = dict(model=state_dict, config=…, **extra)."""
    buf = io.BytesIO()
    torch.save({"model": body.state_dict(), "config": asdict(cfg), **extra}, buf)
    ws.write_bytes(SMALL_CHECKPOINT, buf.getvalue())
    return SMALL_CHECKPOINT


# ------------------------------------------------------------------------------------------------ training
TRAINABLE = ("assay-small", "efficientnet-lite0")


def _ident(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class TrainReport:
    """What :func:`train_backbone` did; accuracies are crop-classification accuracies over (classes + background)."""

    name: str
    checkpoint: str
    classes: list[str]
    epochs: int
    n_train: int
    n_val: int
    train_accuracy: float
    val_accuracy: float
    chance: float
    majority: float
    seconds: float
    stopped_early: bool
    steps: int = 0



@dataclass
class Windows:
    """Training windows: uint8 N×S×S×3 (object centred), labels N (``len(classes)`` = background), box sizes N×2
    (w, h in window pixels; a background window gets an object-like pseudo box) and output scales N."""

    x: torch.Tensor
    y: torch.Tensor
    wh: torch.Tensor
    scale: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> "Windows":
        return Windows(self.x[idx], self.y[idx], self.wh[idx], self.scale[idx])


def _labeled(ws: Workspace, split: str) -> tuple[dict[str, str], dict[str, list]]:
    imgs = ws.read_table(IMAGES, columns=["image_id", "uri", "split", "status"]).to_pylist()
    uris = {r["image_id"]: r["uri"] for r in imgs if r["split"] == split and r["status"] != "error"}
    boxes: dict[str, list] = {}
    for r in ws.read_table(LABELS).to_pylist():
        if r["image_id"] in uris and r.get("status", "ok") in ("ok", None):
            boxes.setdefault(r["image_id"], []).append(r)
    return uris, boxes


def _windows(ws: Workspace, split: str, crop: int, rng, classes: list[str] | None, max_windows: int,
             hard: int = 3) -> tuple[Windows, list[str]]:
    """One window per labeled object of ``split`` and as many background windows (half of them hard negatives)."""
    import numpy as np

    from actors.core.images import background_windows, load_image, object_windows

    uris, boxes = _labeled(ws, split)
    if classes is None:
        classes = sorted({r["category"] for rs in boxes.values() for r in rs})
    index, side = {c: i for i, c in enumerate(classes)}, 2 * crop
    xs, ys, whs = [], [], []
    for k, image_id in enumerate(sorted(boxes)[: max(1, max_windows // 2)]):
        rs = [r for r in boxes[image_id] if r["category"] in index]
        img = load_image(uris[image_id])
        b = np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rs], np.float32).reshape(-1, 4)
        bg = background_windows(img, b, side, max(1, len(rs)), rng, hard=hard if k % 2 else 1)
        xs += [object_windows(img, b, side), bg]
        ys += [index[r["category"]] for r in rs] + [len(classes)] * len(bg)
        whs += [b[:, 2:] - b[:, :2], np.full((len(bg), 2), np.nan, np.float32)]
    x = np.concatenate(xs) if xs else np.zeros((0, side, side, 3), np.uint8)
    wh = np.concatenate(whs) if whs else np.zeros((0, 2), np.float32)
    obj = ~np.isnan(wh[:, 0])
    pseudo = wh[obj][rng.integers(obj.sum(), size=(~obj).sum())] if obj.any() else np.full((1, 2), crop / 2)
    wh[~obj] = pseudo if obj.any() else crop / 2
    big = wh.max(1) / (0.8 * crop)  # objects larger than 0.8·crop are shrunk to fit
    scale = np.minimum(0.5 * np.maximum(big, 1.0), 1.0)
    return Windows(torch.from_numpy(x), torch.tensor(ys, dtype=torch.long), torch.from_numpy(wh),
                   torch.from_numpy(scale.astype(np.float32))), classes


class RoiCosineHead(nn.Module):
    """Trunk -> the object box's vector exactly as the matcher computes it (:func:`actors.features.regions.
    region_vectors`: ROI-align 1×1, centred with the mean cell vector of the batch, the training analogue of the
    pool mean) -> scaled cosine to one prototype per class.

    Training this way makes same-class box vectors agree under the matcher's cosine and background ones not.
    """

    def __init__(self, trunk: nn.Module, dim: int, n_out: int, stride: int, scale: float = 10.0) -> None:
        super().__init__()
        self.trunk, self.stride, self.scale = trunk, stride, scale
        self.prototypes = nn.Parameter(torch.randn(n_out, dim) * 0.1)  # K×C

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)  # B×C×h×w
        center = f.detach().mean(dim=(0, 2, 3))  # C: the batch's mean cell vector (the pool mean's analogue)
        v = region_vectors(f, boxes, self.stride, self.stride, center)  # B×C, unit
        return self.scale * v @ F.normalize(self.prototypes, dim=1).T  # B×K


@torch.no_grad()
def _accuracy(model: nn.Module, w: Windows, crop: int, batch_size: int = 256, prep=None) -> float:
    from actors.core.images import augment_objects

    model.eval()
    hits = 0
    for i in range(0, len(w), batch_size):
        b = w.take(torch.arange(i, min(i + batch_size, len(w))))
        xb, boxes = augment_objects(b.x, b.wh, b.scale, crop, train=False)
        hits += int((model((prep or _norm)(xb), boxes).argmax(1) == b.y).sum())
    return hits / max(1, len(w))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _freeze_bn(model: nn.Module) -> None:
    """BatchNorm layers to eval mode: a pretrained trunk keeps its running statistics (small crop batches would
    move them away from whole images')."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _batch(w: Windows, idx: torch.Tensor, bg_idx: torch.Tensor, n_classes: int, crop: int, paste: float,
           g: torch.Generator, prep=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented batch: a ``paste`` fraction of its objects copy-pasted onto random background windows."""
    from actors.core.images import augment_objects, paste_objects

    b = w.take(idx)
    x = b.x
    if paste > 0 and len(bg_idx):
        m = (b.y < n_classes) & (torch.rand(len(idx), generator=g) < paste)
        if m.any():
            bg = w.x[bg_idx[torch.randint(len(bg_idx), (int(m.sum()),), generator=g)]]
            x = x.clone()
            x[m] = paste_objects(x[m], b.wh[m], bg)
    xb, boxes = augment_objects(x, b.wh, b.scale, crop, g)
    return (prep or _norm)(xb).contiguous(memory_format=torch.channels_last), boxes, b.y


def _lr_factor(step: int, total: int, warmup: float = 0.1) -> float:
    """Linear warm-up from 0.1 to 1 over ``warmup`` of the steps, then cosine down to 0.01."""
    import math

    w = max(1, int(warmup * total))
    if step < w:
        return 0.1 + 0.9 * step / w
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def train_backbone(ws: Workspace | str, *, name: str = "assay-small", epochs: int = 15, crop: int = 48,
                   batch_size: int = 64, lr: float | None = None, seed: int = 0, max_minutes: float | None = 2.5,
                   max_windows: int = 8000, config: SmallConfig | None = None, paste: float = 0.5,
                   repeats: int = 4, progress: bool = True, steps: int | None = None,
                   stride: int = 8) -> TrainReport:
    """Train assay-small (or fine-tune the ImageNet EfficientNet-Lite0 trunk) on the workspace's train-split labels.

    ``name="assay-small"`` trains from scratch and saves ``models/assay-small.pt``; ``name="efficientnet-lite0"``
    fine-tunes the pretrained Lite0 trunk cut at ``stride`` (8 or 16; BatchNorm statistics frozen) with the same
    loss and batches and saves ``models/efficientnet-lite0-ft-s<stride>.pt`` (the ``efficientnet-lite0-ft``
    backbone). ``steps`` fixes the number of optimisation steps (the learning-rate schedule spans them and no
    wall-clock budget applies: a loaded machine trains as long as a quiet one); without it the budget is
    ``epochs`` epochs, shortened to fit ``max_minutes`` (None: no wall-clock limit). ``lr`` defaults to 3e-3
    from scratch and 1e-3 when fine-tuning.

    Recipe: windows around every labeled train object (native scale, with context; objects larger than 0.8·crop
    are shrunk to fit) and as many background windows (half of them the most textured of 3 candidates: hard
    negatives). Each step draws a batch, copy-pastes a ``paste`` fraction of its objects onto background windows
    of other images (:func:`actors.core.images.paste_objects`), rotates / scales / shifts / recolours it
    (:func:`actors.core.images.augment_objects`), and classifies the matcher's box vector (:func:`~actors.features.regions.region_vectors`) of each
    object box against one prototype per class + background (:class:`RoiCosineHead`, scaled cosine, label
    smoothing). AdamW, warm-up + cosine learning rate over ``epochs`` epochs of ``repeats`` passes each (every
    pass is a fresh augmentation / copy-paste of the same windows).

    Validation uses the val split's labels, or a seeded 20% of the train windows when the val split has none.
    Deterministic given ``seed`` unless ``max_minutes`` binds: after a few steps the step budget is projected
    from the measured speed and shortened to fit (``stopped_early`` says so; the schedule still completes).

    Raises
    ------
    ValueError
        ``name`` is not a trainable backbone, or the train split has no labeled objects.
    WorkspaceError
        The catalog is missing.
    """
    import time

    import numpy as np
    from tqdm.auto import tqdm

    if name not in TRAINABLE:
        raise UserError(f"only {', '.join(TRAINABLE)} can be trained, got {name!r}")
    ws = Workspace(ws) if isinstance(ws, (str, os.PathLike)) else ws
    t0, cfg = time.monotonic(), config or SmallConfig()
    torch.manual_seed(seed)
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    tr, classes = _windows(ws, "train", crop, rng, None, max_windows)
    if not classes:
        raise UserError(f"{ws.uri}: no labeled objects in the train split; nothing to train on")
    va, _ = _windows(ws, "val", crop, rng, classes, max_windows // 4)
    if len(va) == 0:
        perm = torch.randperm(len(tr), generator=g)
        cut = max(1, len(tr) // 5)
        va, tr = tr.take(perm[:cut]), tr.take(perm[cut:])
    prep, pretrained = None, name != "assay-small"
    lr = lr if lr is not None else 1e-3 if pretrained else 3e-3
    if pretrained:  # the pretrained trunk takes [0, 1] images and scales them itself
        from actors.features.lite0 import lite0_backbone

        ext = lite0_backbone(stride=stride)
        trunk, dim, out_stride, prep = ext.body.to(memory_format=torch.channels_last), ext.dim, ext.stride, _ident
    else:
        trunk = small_trunk(cfg).to(memory_format=torch.channels_last)
        dim, out_stride = cfg.widths[-1], cfg.stride
    model = RoiCosineHead(trunk, dim, len(classes) + 1, out_stride)
    per_pass = max(1, (len(tr) + batch_size - 1) // batch_size)
    per_epoch = per_pass * max(1, repeats)
    cap = steps if steps is not None else epochs * per_epoch
    budget = {"total": cap}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, budget["total"]))
    loss_fn, stopped = nn.CrossEntropyLoss(label_smoothing=0.1), False
    bg_idx = torch.nonzero(tr.y == len(classes)).flatten()
    order, step, t_loop = torch.randperm(len(tr), generator=g), 0, time.monotonic()
    limit = None if steps is not None or max_minutes is None else 60 * max_minutes - (t_loop - t0)
    bar = tqdm(total=budget["total"], desc="train assay-small", unit="step", disable=not progress)
    model.train()
    if pretrained:
        _freeze_bn(model)
    torch.set_flush_denormal(True)  # decaying weights / gradients as denormals slow CPU math many-fold
    while step < budget["total"]:
        pos = (step % per_pass) * batch_size
        if pos == 0 and step:
            order = torch.randperm(len(tr), generator=g)
        xb, boxes, yb = _batch(tr, order[pos:pos + batch_size], bg_idx, len(classes), crop, paste, g, prep)
        loss = loss_fn(model(xb, boxes), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if limit is None:
                continue
            used = time.monotonic() - t_loop
            fit = int(step * (0.95 * limit - 5) / max(used, 1e-6))  # steps that fit, keeping time for evaluation
            budget["total"] = max(step, min(cap, fit))  # re-projected as the machine's load changes
            stopped, bar.total = budget["total"] < cap, budget["total"]
    bar.close()
    torch.set_flush_denormal(False)
    metrics = {"train_accuracy": _accuracy(model, tr, crop, prep=prep), "val_accuracy": _accuracy(model, va, crop,
                                                                                                   prep=prep)}
    trunk = trunk.to(memory_format=torch.contiguous_format)
    extra = dict(epoch=step // per_epoch, steps=step, metrics=metrics, classes=classes, seed=seed, crop=crop,
                 prototypes=model.prototypes.detach())
    if pretrained:
        from actors.features.lite0 import save_finetuned

        path = save_finetuned(ws, trunk, stride, **extra)
    else:
        path = save_small_checkpoint(ws, trunk, cfg, **extra)
    return TrainReport(name=name, checkpoint=path, classes=classes, epochs=step // per_epoch, n_train=len(tr),
                       n_val=len(va), chance=1.0 / (len(classes) + 1),
                       majority=float(torch.bincount(va.y).max()) / max(1, len(va)),
                       seconds=time.monotonic() - t0, stopped_early=stopped, steps=step, **metrics)
