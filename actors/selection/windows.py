"""Window sums over feature maps for the fine stage's kernels (pure torch, no Ray).

:func:`window_sums` sums every h×w window of a ...×H×W tensor by separable shifted adds (the reference);
:func:`flat_window_sums` does the same over a batch seen as one flat channels-last array of cells, as contiguous
shifted adds of whole rows of C values (what :func:`actors.selection.match.pooled_match` runs).
"""

from __future__ import annotations

import math
import threading

import torch

from actors.core.errors import UserError


def window_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums over every h×w window (stride 1, "valid") of a ...×H×W tensor -> ...×(H-h+1)×(W-w+1).

    Separable running sums: h-1 then w-1 shifted adds (exact in the input's precision, no cancellation), so the
    cost is (h + w - 2) passes over the data whatever the window area; a strided ``avg_pool2d`` costs h·w.
    """
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise UserError(f"window {h}x{w} is larger than the map {H}x{W}")
    if h > 1:
        s = x[..., 0:H - h + 1, :].clone()
        for k in range(1, h):
            s += x[..., k:H - h + 1 + k, :]
        x = s
    if w > 1:
        s = x[..., 0:W - w + 1].clone()
        for k in range(1, w):
            s += x[..., k:W - w + 1 + k]
        x = s
    return x


_SCRATCH = threading.local()


def _scratch(key: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A per-thread reusable ``rows×C`` buffer on CPU (grown on demand): fresh multi-MB temporaries per batch would be
    mapped and faulted in by the allocator every time, which costs more than the adds that fill them."""
    shape = (rows, *like.shape[1:])
    if like.device.type != "cpu":  # accelerators' caching allocators already reuse blocks: hold nothing
        return like.new_empty(shape)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    b = bufs.get(key)
    if b is None or b.numel() < math.prod(shape) or b.dtype != like.dtype or b.device != like.device:
        b = bufs[key] = torch.empty(math.prod(shape), dtype=like.dtype, device=like.device)
    return b[:math.prod(shape)].view(shape)


def flat_window_sums(x: torch.Tensor, h: int, w: int, gw: int, rows: dict[int, torch.Tensor]) -> torch.Tensor:
    """Sums of the h×w windows over a flat channels-last array of cells (N·H·W rows of C channels, or one channel
    when 1-D; rows in row-major cell order, grid width ``gw``): entry p is the sum of the window whose top-left
    cell is p, as contiguous shifted adds: a shift by one cell along a grid row, by ``gw`` cells down a column.
    ``rows`` caches the 1×w sums by width (pass ``{}`` per array; widths are built from the next smaller one).
    Entries whose window crosses a grid edge (or a map boundary) are garbage: callers mask them. The result is
    shorter than ``x`` by the window's flat extent ``(h-1)·gw + w-1``; it may be a scratch buffer, valid until
    the next call on this thread."""
    rows.setdefault(1, x)
    k = max(r for r in rows if r <= w)
    while k < w:  # 1×(k+1) sums = 1×k sums + the cell k to the right
        m = x.shape[0] - k
        rows[k + 1] = torch.add(rows[k][:m], x[k:k + m], out=_scratch(f"{x.ndim}row{k + 1}", m, x))
        k += 1
    r = rows[w]
    if h == 1:
        return r
    m = r.shape[0] - (h - 1) * gw
    out = torch.add(r[:m], r[gw:gw + m], out=_scratch(f"{x.ndim}col", m, x))
    for k in range(2, h):
        out += r[k * gw:k * gw + m]
    return out


__all__ = ["flat_window_sums", "window_sums"]
