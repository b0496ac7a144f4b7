"""Image decoding and training-crop sampling, shared by the embedding pipeline and backbone training.

Contract
--------
* :func:`load_image` is the one decoder: every path (Ray tasks, the local loop, the benchmark, query encoding)
  turns a URI into the same uint8 H×W×3 RGB array.
* :func:`decode_batch` is the pure function behind the Ray decode tasks: it never raises for a bad image; the row
  gets a 1×1×3 placeholder and a non-empty ``error``.
* :func:`object_windows` / :func:`background_windows` cut fixed-size uint8 windows (objects centred, at native
  scale) out of labeled images for :func:`actors.features.backbones.train_backbone`; they are deterministic given the rng.
* :func:`paste_objects` (copy-paste: an object's contrast mask onto another window) and :func:`augment_objects`
  (rotation, scale, shift, colour permutation / inversion / grey; returns where the object box went) make the
  training batches; deterministic given the torch generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from actors.core.workspace import open_uri

if TYPE_CHECKING:  # torch is imported lazily: decoding in Ray tasks does not need it
    import torch

PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


def load_image(uri: str) -> np.ndarray:
    """Decode an image file to a writable uint8 H×W×3 RGB array; raises ``OSError``/``ValueError`` when unreadable.

    ``uri`` is a local path or any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``, ``hdfs://``): bytes are read
    through the same filesystem layer as the workspace (:func:`actors.core.workspace.open_uri`).
    """
    with (open_uri(uri) if "://" in uri else open(uri, "rb")) as f, Image.open(f) as im:
        im.load()
        arr = np.array(im.convert("RGB"), dtype=np.uint8)  # H×W×3, writable (torch.from_numpy warns otherwise)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{uri}: decoded to an empty image {arr.shape}")
    return arr


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data decode stage: ``{image_id, uri, …}`` -> the same columns plus ``image`` and ``error``.

    ``image`` is an object array of uint8 H×W×3 arrays (ragged); failed rows hold :data:`PLACEHOLDER`.
    """
    images, errors = [], []
    for uri in batch["uri"]:
        try:
            images.append(load_image(str(uri)))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - any decoder failure is a row error, never fatal
            images.append(PLACEHOLDER)
            errors.append(f"unreadable image: {type(e).__name__}: {e}"[:500])
    out = {k: v for k, v in batch.items() if k != "uri"}
    col = np.empty(len(images), dtype=object)
    col[:] = images
    out["image"] = col
    out["error"] = np.array(errors, dtype=object)
    return out


def cut_window(img: np.ndarray, cy: float, cx: float, side: int) -> np.ndarray:
    """A side×side×3 window centred on (cy, cx), zero-padded where it leaves the image."""
    h, w = img.shape[:2]
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    out = np.zeros((side, side, 3), np.uint8)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, h), min(x0 + side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def object_windows(img: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Windows centred on each box (x0, y0, x1, y1 pixels, N×4) -> N×side×side×3 uint8."""
    out = [cut_window(img, (b[1] + b[3]) / 2, (b[0] + b[2]) / 2, side) for b in boxes]
    return np.stack(out) if out else np.zeros((0, side, side, 3), np.uint8)


def background_windows(img: np.ndarray, boxes: np.ndarray, side: int, n: int, rng: np.random.Generator,
                       core: float = 0.5, tries: int = 20, hard: int = 1) -> np.ndarray:
    """Up to ``n`` random windows whose central ``core`` fraction overlaps no box by more than 10% of its area.

    With ``hard`` > 1 each window is the most textured (largest colour std in its core) of ``hard`` clear
    candidates: clutter and edges, the negatives a template is most often confused with.
    """
    h, w = img.shape[:2]
    half = side * core / 2
    out: list[np.ndarray] = []
    cands: list[tuple[float, float, float]] = []
    for _ in range(n * tries * hard):
        if len(out) >= n:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if not _clear(boxes, cx - half, cy - half, cx + half, cy + half):
            continue
        core_px = img[max(0, int(cy - half)):int(cy + half), max(0, int(cx - half)):int(cx + half)]
        cands.append((float(core_px.std()) if core_px.size else 0.0, cy, cx))
        if len(cands) >= hard:
            _, cy, cx = max(cands)
            out.append(cut_window(img, cy, cx, side))
            cands = []
    return np.stack(out) if out else np.zeros((0, side, side, 3), np.uint8)


def _clear(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
    if len(boxes) == 0:
        return True
    iw = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    return bool(np.all(iw * ih / area <= 0.1))


def object_mask(x: "torch.Tensor", wh: "torch.Tensor", thresh: float = 40.0) -> "torch.Tensor":
    """Foreground of the box centred in each window: pixels inside the box whose colour differs from the mean colour
    of a 2-px ring around the box by more than ``thresh`` (0–255 scale), softened by a 3×3 blur.

    x : uint8 B×S×S×3 windows, object centred; wh : B×2 box width, height in pixels. Returns float B×1×S×S in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    b, side = x.shape[0], x.shape[1]
    c = torch.arange(side, dtype=torch.float32) + 0.5 - side / 2  # S, distance from the centre
    dx, dy = c.abs().view(1, 1, side), c.abs().view(1, side, 1)
    hw, hh = (wh[:, 0] / 2).view(b, 1, 1), (wh[:, 1] / 2).view(b, 1, 1)
    inside = (dx <= hw) & (dy <= hh)  # B×S×S
    ring = (dx <= hw + 2) & (dy <= hh + 2) & ~inside
    img = x.float()  # B×S×S×3
    ref = (img * ring[..., None]).sum((1, 2)) / ring.sum((1, 2)).clamp_min(1)[:, None]  # B×3
    fg = ((img - ref.view(b, 1, 1, 3)).norm(dim=-1) > thresh) & inside  # B×S×S
    return F.avg_pool2d(fg[:, None].float(), 3, 1, 1)  # B×1×S×S


def paste_objects(obj: "torch.Tensor", wh: "torch.Tensor", bg: "torch.Tensor", thresh: float = 40.0) -> "torch.Tensor":
    """Copy-paste: each centred object's :func:`object_mask` composited onto the same-size window ``bg``.

    obj, bg : uint8 B×S×S×3; wh : B×2. Returns uint8 B×S×S×3 (``bg`` wherever the mask is 0).
    """
    m = object_mask(obj, wh, thresh).permute(0, 2, 3, 1)  # B×S×S×1
    return (m * obj.float() + (1 - m) * bg.float()).round().clamp(0, 255).to(obj.dtype)


_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def augment_objects(x: "torch.Tensor", wh: "torch.Tensor", scale: "torch.Tensor", out: int,
                    g: "torch.Generator | None" = None, train: bool = True, rotate: float = 30.0,
                    invert: float = 0.15, grey: float = 0.2) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Resample centred-object windows and say where their boxes land.

    x : uint8 B×S×S×3 windows with the object centred; wh : B×2 its box width, height (window pixels);
    scale : B, fraction of the window the output covers (before jitter); out : output side.

    With ``train``: scale ×e^U(-0.3, 0.3), rotation U(-rotate, rotate) degrees, centre shift up to a quarter of
    ``out``, random channel permutation, inversion (prob ``invert``), grey (prob ``grey``), brightness / contrast
    jitter. No flips (digits are not mirror-symmetric).

    Returns
    -------
    images : float B×3×out×out in [0, 1]
    boxes : float B×4 (x0, y0, x1, y1) of the (rotated) object box in output pixels.
    """
    import math

    import torch
    import torch.nn.functional as F

    b, side = x.shape[0], x.shape[1]
    img = x.permute(0, 3, 1, 2).float() / 255  # B×3×S×S
    a = scale.float().clone()
    tx, ty, ang = torch.zeros(b), torch.zeros(b), torch.zeros(b)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    if train:
        a = a * torch.exp(u(-0.3, 0.3))
        shift = 0.25 * out / (side / 2)
        tx, ty, ang = u(-shift, shift), u(-shift, shift), u(-rotate, rotate) * math.pi / 180
    a = a.clamp(max=1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a * cos, -a * sin, a * sin, a * cos
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)  # B×out×out×2
    y = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # B×3×out×out
    # the window centre (0, 0) lands at R^T(-t)/a in output coordinates; sizes scale by out / (a·S)
    cx, cy = (-cos * tx - sin * ty) / a, (sin * tx - cos * ty) / a
    zoom = out / (a * side)
    bw = (cos.abs() * wh[:, 0] + sin.abs() * wh[:, 1]) * zoom
    bh = (sin.abs() * wh[:, 0] + cos.abs() * wh[:, 1]) * zoom
    px, py = (cx + 1) * out / 2, (cy + 1) * out / 2
    boxes = torch.stack([px - bw / 2, py - bh / 2, px + bw / 2, py + bh / 2], 1)  # B×4
    if train:
        perm = torch.tensor(_PERMS)[torch.randint(len(_PERMS), (b,), generator=g)]  # B×3
        y = torch.gather(y, 1, perm.view(b, 3, 1, 1).expand_as(y))
        mean = y.mean(dim=(1, 2, 3), keepdim=True)  # B×1×1×1
        y = ((y - mean) * u(0.7, 1.3).view(b, 1, 1, 1) + mean) * u(0.7, 1.3).view(b, 1, 1, 1)
        inv = (torch.rand(b, generator=g) < invert).view(b, 1, 1, 1)
        y = torch.where(inv, 1 - y.clamp(0, 1), y)
        gr = (torch.rand(b, generator=g) < grey).view(b, 1, 1, 1)
        y = torch.where(gr, y.mean(dim=1, keepdim=True).expand_as(y), y)
    return y.clamp(0, 1), boxes
