"""The box vector: the one definition of "the feature of a box", shared by assay-small's training and the matcher.

A box's vector is the ROI-align of the box over the feature grid with a 1×1 output (``aligned=True``, adaptive
sampling: the bilinear mean of ~1 sample per cell the box covers), with no minimum box size, then *pool-mean
centred*: the mean cell vector of the pool (at search time, ``IndexManifest.center``; in training, the batch's cells)
is subtracted, and the result is scaled to unit norm. This is the matcher's definition, the one
``bench/targeted_selection.py`` measured; training adopts it so the trunk learns the vectors the matcher compares.

* :func:`box_vectors` — B×C×H×W maps and one pixel box per map -> B×C raw box vectors.
* :func:`centre_normalize` — subtract a centre (or nothing) and scale to unit norm.
* :func:`region_vectors` — both: the vectors the matcher and the training head compare.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_align

EPS = 1e-6


def box_vectors(fmaps: torch.Tensor, boxes: torch.Tensor, stride_y: float, stride_x: float) -> torch.Tensor:
    """Raw vector of each box: ``fmaps`` B×C×H×W, ``boxes`` B×4 ``(x0, y0, x1, y1)`` image pixels (box b on map b),
    ``stride_y``/``stride_x`` image pixels per cell -> B×C (ROI-align 1×1, aligned, adaptive sampling)."""
    if fmaps.ndim != 4 or boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(fmaps):
        raise ValueError(f"expected maps [B, C, H, W] and boxes [B, 4], got {list(fmaps.shape)} and "
                         f"{list(boxes.shape)}")
    scale = torch.tensor([stride_x, stride_y, stride_x, stride_y], dtype=fmaps.dtype, device=fmaps.device)
    idx = torch.arange(len(boxes), dtype=fmaps.dtype, device=fmaps.device)[:, None]
    rois = torch.cat([idx, boxes.to(fmaps.device, fmaps.dtype) / scale], 1)  # B×5, in cells
    return roi_align(fmaps, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)[:, :, 0, 0]


def centre_normalize(v: torch.Tensor, center: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """``v`` (…×C) minus ``center`` (C; None or empty: no centring), unit norm over the last dim."""
    if center is not None and len(center):
        v = v - torch.as_tensor(np.asarray(center, np.float32) if not torch.is_tensor(center) else center,
                                dtype=v.dtype, device=v.device)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(EPS)


def region_vectors(fmaps: torch.Tensor, boxes: torch.Tensor, stride_y: float, stride_x: float,
                   center: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """The box vectors the matcher and assay-small's training compare: :func:`box_vectors`, pool-mean centred
    (``center``), unit norm -> B×C."""
    return centre_normalize(box_vectors(fmaps, boxes, stride_y, stride_x), center)


__all__ = ["box_vectors", "centre_normalize", "region_vectors"]
