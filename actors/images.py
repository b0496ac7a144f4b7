"""Image decoding and training-crop sampling, shared by the embedding pipeline and backbone training.

Contract
--------
* :func:`load_image` is the one decoder: every path (Ray tasks, the local loop, the benchmark, query encoding)
  turns a URI into the same uint8 H×W×3 RGB array.
* :func:`decode_batch` is the pure function behind the Ray decode tasks: it never raises for a bad image; the row
  gets a 1×1×3 placeholder and a non-empty ``error``.
* :func:`object_windows` / :func:`background_windows` cut fixed-size uint8 windows (objects centred, at native
  scale) out of labeled images for :func:`actors.backbone.train_backbone`; they are deterministic given the rng.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


def load_image(uri: str) -> np.ndarray:
    """Decode an image file to uint8 H×W×3 RGB; raises ``OSError``/``ValueError`` when unreadable."""
    with Image.open(uri) as im:
        im.load()
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # H×W×3
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
                       core: float = 0.5, tries: int = 20) -> np.ndarray:
    """Up to ``n`` random windows whose central ``core`` fraction overlaps no box by more than 10% of its area."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n * tries):
        if len(out) >= n:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        half = side * core / 2
        if not _clear(boxes, cx - half, cy - half, cx + half, cy + half):
            continue
        out.append(cut_window(img, cy, cx, side))
    return np.stack(out) if out else np.zeros((0, side, side, 3), np.uint8)


def _clear(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
    if len(boxes) == 0:
        return True
    iw = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    return bool(np.all(iw * ih / area <= 0.1))


def augment_windows(x: "torch.Tensor", scale: "torch.Tensor", out: int, g: "torch.Generator | None" = None,
                    train: bool = True) -> "torch.Tensor":
    """Resample uint8 windows B×S×S×3 to float B×3×out×out in [0, 1], centred, covering ``scale`` of the window.

    With ``train`` the scale is jittered (×e^U(-0.3, 0.3)), the centre shifted by up to a quarter of ``out``,
    half the samples flipped left-right, and brightness / per-channel gain / contrast jittered; 20% go grey.
    """
    import torch
    import torch.nn.functional as F

    b, side = x.shape[0], x.shape[1]
    img = x.permute(0, 3, 1, 2).float() / 255  # B×3×S×S
    a = scale.float().clone()
    tx, ty, sx = torch.zeros(b), torch.zeros(b), torch.ones(b)
    if train:
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
        a = a * torch.exp(u(-0.3, 0.3))
        shift = 0.25 * out / (side / 2)
        tx, ty = u(-shift, shift), u(-shift, shift)
        sx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    a = a.clamp(max=1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = a * sx, a, tx, ty
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)  # B×out×out×2
    y = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # B×3×out×out
    if train:
        gain = u(0.7, 1.3).view(b, 1, 1, 1) * (0.85 + 0.3 * torch.rand(b, 3, generator=g)).view(b, 3, 1, 1)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)  # B×1×1×1
        y = (y - mean) * u(0.7, 1.3).view(b, 1, 1, 1) + mean
        y = y * gain
        grey = (torch.rand(b, generator=g) < 0.2).view(b, 1, 1, 1)
        y = torch.where(grey, y.mean(dim=1, keepdim=True).expand_as(y), y)
    return y.clamp(0, 1)
