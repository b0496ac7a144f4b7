"""Deep template matching: ROI templates from a query feature map, dense NCC over pool feature maps.

After "Object-Level Targeted Selection via Deep Template Matching" (arXiv 2207.01778): the template comes from the
ROI of the query box in the backbone's region grid and is compared with every position of a pool image's grid.
Several sizes are tried (multi-scale), several boxes can be asked to co-occur (multi-object), and the best position
gives the matched box in image pixels (localization).

Two kinds of template (an "object" below is a list of one kind):

* :class:`BoxTemplate` (what :mod:`actors.selection.mine` uses): the box's ROI-averaged feature vector, centred with the
  pool's mean cell vector and unit-normalised, compared by cosine with the (centred) mean of every window of the
  box's size in cells, at a few scales (:func:`pooled_match`). Made for tiny objects: a 12-px digit is less than
  one 16-px cell, so a ≥ 2×2-cell ROI template is mostly background and NCC then matches background texture;
  one vector of the box, compared with windows of the box's own size, weighs object and context by how much
  of the box they cover. The output box has the query box's size (times the scale) centred on the best window.
* a list of C×h×w ROI tensors (:func:`roi_template`), matched by dense NCC (:func:`ncc_match`): the paper's
  template, kept as the reference kernel for larger objects and for tests.

Kernels (pure torch, CPU or CUDA, no Ray): :func:`box_template`, :func:`pooled_match`, :func:`roi_template`,
:func:`ncc_match`, :func:`best_match`, :func:`match_image`, :func:`rank_feature_maps` / :func:`exhaustive_match`
(the no-FAISS reference).
Wrappers live beside it: :class:`actors.selection.matcher.Matcher` (feature-map LRU cache + these kernels) and
:class:`actors.selection.actor.MatchActor` (the same, as a Ray actor).

Conventions: a feature map is C×H×W; ``stride_y``/``stride_x`` are image pixels per cell, so cell (i, j) covers
y ∈ [i·stride_y, (i+1)·stride_y). Boxes are ``(x0, y0, x1, y1)`` in image pixels unless said otherwise.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from actors.core.errors import UserError
from actors.features.regions import region_vectors
from actors.features.codecs import Codec
from actors.features.store import EncodedMap, FeatureMap
from actors.selection.windows import flat_window_sums, window_sums

SCALES = (0.7, 1.0, 1.4)
COMBINE = ("min", "mean")
EPS = 1e-6
# feature maps per fine-stage batch on accelerators (large batches keep the GPU busy); on CPU batches hold about
# FINE_BATCH_BYTES of float32 (3 MB, 16 maps of 24×32 cells × 64 channels: few enough ops per map, and the
# passes still run from cache; 8 maps were 10% slower, 32 maps 20%)
FINE_BATCH = {"cuda": 256}
FINE_BATCH_BYTES = 16 * 64 * 24 * 32 * 4


@dataclass
class Hit:
    """One matched image: NCC score and the matched region(s) in image pixels."""

    image_id: str
    score: float
    box: tuple[float, float, float, float]
    object_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- templates
def check_box(box: Sequence[float], image_size: tuple[float, float]) -> tuple[float, float, float, float]:
    """Validate an ``(x0, y0, x1, y1)`` pixel box against ``image_size = (width, height)``; returns it clipped.

    Raises ``UserError`` naming the box and the image size when it is malformed, empty or outside the image
    (a tolerance of one pixel is clipped away).
    """
    if len(box) != 4:
        raise UserError(f"expected a box (x0, y0, x1, y1), got {tuple(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = image_size
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"box {(x0, y0, x1, y1)} is empty: need x1 > x0 and y1 > y0")
    if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
        raise UserError(f"box {(x0, y0, x1, y1)} is outside the image of size {w:g}x{h:g} (width x height)")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))


def _box_roi(fmap, box, stride_y, stride_x, image_size):
    """(feature map as float C×H×W tensor, the box as a 1×5 roi_align row in cell units, the checked box)."""
    x = (torch.from_numpy(np.array(fmap, dtype=np.float32)) if isinstance(fmap, np.ndarray) else fmap).float()  # C×H×W
    if x.ndim != 3:
        raise ValueError(f"expected a feature map of shape [C, H, W], got {list(x.shape)}")
    _, gh, gw = x.shape
    x0, y0, x1, y1 = check_box(box, image_size or (gw * stride_x, gh * stride_y))
    roi = torch.tensor([[0.0, x0 / stride_x, y0 / stride_y, x1 / stride_x, y1 / stride_y]], device=x.device)  # 1×5
    return x, roi, (x0, y0, x1, y1)


def roi_template(fmap: torch.Tensor | np.ndarray, box: Sequence[float], stride_y: float, stride_x: float, *,
                 scales: Sequence[float] = SCALES,
                 image_size: tuple[float, float] | None = None) -> list[torch.Tensor]:
    """ROI-align templates of one box at several sizes.

    Parameters
    ----------
    fmap : C×H×W feature map of the query image.
    box : (x0, y0, x1, y1) in image pixels.
    stride_y, stride_x : image pixels per cell.
    scales : template sizes relative to the box's own size in cells (each at least 1×1 cell); equal sizes
        are kept once.
    image_size : (width, height) in pixels; default the grid's extent ``(W·stride_x, H·stride_y)``.

    Returns
    -------
    list of float32 C×h×w tensors on ``fmap``'s device, one per distinct size, in ``scales`` order.
    """
    x, roi, (x0, y0, x1, y1) = _box_roi(fmap, box, stride_y, stride_x, image_size)
    hb, wb = (y1 - y0) / stride_y, (x1 - x0) / stride_x  # box size in cells
    sizes = list(dict.fromkeys((max(1, round(hb * s)), max(1, round(wb * s))) for s in scales))
    return [roi_align(x[None], roi, output_size=hw, spatial_scale=1.0, sampling_ratio=-1, aligned=True)[0]
            for hw in sizes]  # each C×h×w


@dataclass
class BoxTemplate:
    """One query box for :func:`pooled_match`.

    vector : C float32, the box's mean feature minus ``center``, unit norm.
    sizes : ((h, w, scale), ...) window sizes in cells, one per distinct scale.
    box_cells : the box's (height, width) in cells (output boxes are this times the scale).
    center : C float32 subtracted from pool cells before comparing, or None.
    """

    vector: torch.Tensor
    sizes: tuple[tuple[int, int, float], ...]
    box_cells: tuple[float, float]
    center: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> "BoxTemplate":
        c = None if self.center is None else self.center.to(device)
        return BoxTemplate(self.vector.to(device), self.sizes, self.box_cells, c)


def box_template(fmap: torch.Tensor | np.ndarray, box: Sequence[float], stride_y: float, stride_x: float, *,
                 scales: Sequence[float] = SCALES, image_size: tuple[float, float] | None = None,
                 center: torch.Tensor | np.ndarray | Sequence[float] | None = None) -> BoxTemplate:
    """The :class:`BoxTemplate` of one box: its vector from :func:`actors.features.regions.region_vectors` (the one
    definition assay-small's training uses too: ROI-align 1×1, pool-mean centred, unit norm).

    Parameters are those of :func:`roi_template`; ``center`` is the pool's mean cell vector (C) or None.
    Window sizes are ``max(1, round(box size in cells · scale))`` per side; equal sizes are kept once, with the
    scale nearest 1 (so a speck's single 1×1 window outputs boxes of the speck's own size).
    """
    x, _, (x0, y0, x1, y1) = _box_roi(fmap, box, stride_y, stride_x, image_size)
    c = None if center is None or len(center) == 0 else torch.as_tensor(np.asarray(center, np.float32)).to(x.device)
    v = region_vectors(x[None], torch.tensor([[x0, y0, x1, y1]]), stride_y, stride_x, c)[0]  # C, centred, unit
    hb, wb = (y1 - y0) / stride_y, (x1 - x0) / stride_x  # box size in cells
    sizes: dict[tuple[int, int], float] = {}
    for s in sorted(scales, key=lambda s: abs(math.log(s))):  # equal sizes keep the scale nearest 1
        sizes.setdefault((max(1, round(hb * s)), max(1, round(wb * s))), float(s))
    sizes_s = tuple(sorted(((h, w, s) for (h, w), s in sizes.items()), key=lambda hws: hws[2]))
    return BoxTemplate(v, sizes_s, (hb, wb), c)


def pooled_match(t: BoxTemplate, fmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of the template vector with the centred mean of every window, best over sizes and positions.

    Parameters
    ----------
    t : BoxTemplate (on ``fmaps``' device).
    fmaps : B×C×H×W, any strides; channels-last memory (a ``B×H×W×C`` tensor permuted, as
        :func:`rank_feature_maps` builds it) is used as is.

    Returns
    -------
    scores : B float32 in [-1, 1] (-inf when every window size is larger than the maps).
    boxes : B×4 float32 ``(x0, y0, x1, y1)`` in cells: the query box's size times the scale, centred on the best
        window (so a 1×1 window still gives a box of the object's size), clipped to the grid.

    The cosine with a window's mean equals ``(v · S) / |S|`` with S the window's sum, and ``v · S`` is the window
    sum of the one-channel map ``v · x``: per size, only ``|S|`` needs the C channels. The batch is seen as one
    flat array of B·H·W cells of C channels (channels-last memory, no copy), so every window sum is a few
    contiguous shifted adds of whole rows of C values (:func:`flat_window_sums`: a shift by one cell along a
    grid row, by W cells down a column), shared between sizes of equal width; positions whose window would cross
    the grid's edge are masked. About 5 passes over the batch for three sizes against 15 multiply-adds per value
    for a ones-kernel convolution. Callers keep batches to a few MB (:func:`fine_batch`): the passes run from cache.
    """
    if t.vector.shape[0] != fmaps.shape[1]:
        raise UserError(f"template has {t.vector.shape[0]} channels, feature maps {fmaps.shape[1]}")
    x = fmaps.float()
    if t.center is not None:
        x = x - t.center.view(1, -1, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)  # no copy when it is already channels-last
    b, c, gh, gw = x.shape
    n = b * gh * gw
    cells = x.permute(0, 2, 3, 1).reshape(n, c)  # B·H·W×C view: cell p = (b, i, j) in row-major order
    sizes = [(h, w, s) for h, w, s in t.sizes if h <= gh and w <= gw]
    if not sizes:
        return torch.full((b,), -float("inf"), device=x.device), torch.zeros(b, 4, device=x.device)
    proj = cells @ t.vector  # B·H·W: v · x per cell
    dot_rows: dict[int, torch.Tensor] = {}
    sum_rows: dict[int, torch.Tensor] = {}
    sim = x.new_full((b, len(sizes), gh, gw), -float("inf"))  # per size, every window's cosine (-inf: none)
    flat = x.new_empty(n)
    for k, (h, w, _) in enumerate(sizes):
        dot = flat_window_sums(proj, h, w, gw, dot_rows)  # v · S per window
        norm = torch.linalg.vector_norm(flat_window_sums(cells, h, w, gw, sum_rows), dim=1)  # |S| per window
        torch.div(dot, norm.clamp_min_(EPS * h * w), out=flat[:dot.shape[0]])  # the tail: invalid windows
        sim[:, k, :gh - h + 1, :gw - w + 1] = flat.view(b, gh, gw)[:, :gh - h + 1, :gw - w + 1]
    best, pos = sim.view(b, -1).max(dim=1)  # B, B: the first best (smallest scale, then row-major position)
    k, cell = pos // (gh * gw), pos % (gh * gw)
    hws = torch.tensor([[h, w, s] for h, w, s in sizes], dtype=torch.float32, device=x.device)[k]  # B×3
    cy, cx = (cell // gw).float() + hws[:, 0] / 2, (cell % gw).float() + hws[:, 1] / 2
    hh, hw = t.box_cells[0] * hws[:, 2] / 2, t.box_cells[1] * hws[:, 2] / 2
    boxes = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=1)  # B×4 cells
    boxes[:, 0::2].clamp_(0.0, float(gw))  # a box near the border stays inside the image
    boxes[:, 1::2].clamp_(0.0, float(gh))
    return best, boxes


# ----------------------------------------------------------------------------------------------- NCC
def ncc_match(templates: torch.Tensor, fmaps: torch.Tensor) -> torch.Tensor:
    """Dense normalized cross-correlation of templates over feature maps ("valid" positions only).

    Each template and each C×h×w window is made zero-mean and unit-norm over all its C·h·w values, so a score is
    the Pearson correlation of template and window, in [-1, 1]. Windows with (near) zero variance score 0.

    Parameters
    ----------
    templates : C×h×w, or T×C×h×w (T templates of one size).
    fmaps : B×C×H×W with H ≥ h and W ≥ w; the computation runs on ``fmaps``' device.

    Returns
    -------
    B×H'×W' (or B×T×H'×W' for T templates) float32, with H' = H - h + 1 and W' = W - w + 1; the score at
    (i, j) is for the window whose top-left cell is (i, j).
    """
    single = templates.ndim == 3
    t = templates[None] if single else templates  # T×C×h×w
    t = t.to(device=fmaps.device, dtype=torch.float32)
    x = fmaps.float()  # B×C×H×W
    if t.shape[1] != x.shape[1]:
        raise UserError(f"template has {t.shape[1]} channels, feature maps {x.shape[1]}")
    _, c, h, w = t.shape
    if h > x.shape[2] or w > x.shape[3]:
        raise UserError(f"template {h}x{w} cells is larger than the feature maps {x.shape[2]}x{x.shape[3]}")
    n = c * h * w
    t = t - t.mean(dim=(1, 2, 3), keepdim=True)
    t = t / t.flatten(1).norm(dim=1).clamp_min(EPS)[:, None, None, None]  # zero-mean, unit-norm
    num = F.conv2d(x, t)  # B×T×H'×W'
    ones = torch.ones(1, 1, h, w, device=x.device)
    s1 = F.conv2d(x.sum(1, keepdim=True), ones)  # B×1×H'×W'  window sums
    s2 = F.conv2d((x * x).sum(1, keepdim=True), ones)  # B×1×H'×W'  window sums of squares
    var = (s2 - s1 * s1 / n).clamp_min(0.0)  # n · window variance
    den = var.sqrt()
    ok = den > EPS * s2.sqrt().clamp_min(1.0)
    scores = torch.where(ok, num / den.clamp_min(EPS), torch.zeros_like(num)).clamp(-1.0, 1.0)
    return scores[:, 0] if single else scores


def best_match(templates: Sequence[torch.Tensor] | BoxTemplate,
               fmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best position over all templates (scales) and positions, per feature map.

    ``templates`` is a list of C×h×w NCC templates, or a :class:`BoxTemplate` (then :func:`pooled_match`).

    Returns
    -------
    scores : B float32 (-inf when every template is larger than the maps).
    boxes : B×4 float32 ``(x0, y0, x1, y1)`` in *cells* (multiply by the strides for pixels).
    """
    if isinstance(templates, BoxTemplate):
        return pooled_match(templates, fmaps)
    b, _, gh, gw = fmaps.shape
    best = torch.full((b,), -float("inf"), device=fmaps.device)
    boxes = torch.zeros(b, 4, device=fmaps.device)
    for t in templates:
        h, w = t.shape[-2:]
        if h > gh or w > gw:
            continue
        s = ncc_match(t, fmaps).flatten(1)  # B×(H'·W')
        v, pos = s.max(dim=1)  # B, B
        i, j = pos // (gw - w + 1), pos % (gw - w + 1)
        better = v > best
        best = torch.where(better, v, best)
        cand = torch.stack([j, i, j + w, i + h], dim=1).float()  # B×4 cells
        boxes = torch.where(better[:, None], cand, boxes)
    return best, boxes


def match_objects(objects: Sequence[Sequence[torch.Tensor] | BoxTemplate], fmaps: torch.Tensor,
                  combine: str = "min") -> tuple[torch.Tensor, torch.Tensor]:
    """Several query objects that must co-occur: image score = min (or mean) of each object's best score.

    Returns scores B and boxes B×n_obj×4 in cells.
    """
    if combine not in COMBINE:
        raise UserError(f"combine must be one of {COMBINE}, got {combine!r}")
    per = [best_match(ts, fmaps) for ts in objects]
    scores = torch.stack([s for s, _ in per], dim=1)  # B×n_obj
    boxes = torch.stack([bx for _, bx in per], dim=1)  # B×n_obj×4
    return (scores.min(dim=1).values if combine == "min" else scores.mean(dim=1)), boxes


def match_image(templates: Sequence[torch.Tensor] | BoxTemplate, fmap: torch.Tensor | np.ndarray, stride_y: float,
                stride_x: float) -> tuple[float, tuple[float, float, float, float]]:
    """Best NCC score of the templates in one C×H×W map and the matched box in image pixels."""
    x = torch.from_numpy(np.array(fmap, dtype=np.float32)) if isinstance(fmap, np.ndarray) else fmap
    s, bx = best_match(templates, x[None].float())
    return float(s[0]), _to_pixels(bx[0], stride_y, stride_x)


def _to_pixels(cells: torch.Tensor, stride_y: float, stride_x: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = cells.tolist()
    return x0 * stride_x, y0 * stride_y, x1 * stride_x, y1 * stride_y


# ----------------------------------------------------------------------------------------------- ranking
def rank_feature_maps(objects: Sequence[Sequence[torch.Tensor]], fmaps: Iterable[FeatureMap | EncodedMap], *,
                      top_k: int | None = None, combine: str = "min", device: str = "cpu",
                      batch_size: int | None = None, workers: int | None = None,
                      codec: Codec | None = None) -> list[Hit]:
    """Score every feature map (batched by grid shape) and return hits sorted by score, best first.

    ``fmaps`` are decoded :class:`FeatureMap` s, or :class:`EncodedMap` s as the store holds them (then ``codec``
    decodes each batch straight into its channels-last working array: no per-image decoded copy is made).

    ``objects`` is, per query object, a :class:`BoxTemplate` or a list of NCC templates (scales). The image box is
    the union of the objects' matched boxes; ``object_boxes`` lists them. Ties keep the input order.
    ``batch_size`` defaults to :func:`fine_batch` of the device type and map size. On CPU the batches run on
    ``workers`` threads (default ``torch.get_num_threads()``), each with one torch thread (the setting is
    restored after): independent batches scale over cores, while many small ops split over OpenMP threads
    stall whenever another process holds a core. Scores do not depend on ``batch_size`` or ``workers``.
    """
    objects = [ts.to(device) if isinstance(ts, BoxTemplate) else [t.to(device) for t in ts] for ts in objects]
    cpu = torch.device(device).type == "cpu"
    with _one_torch_thread(cpu) as n_threads:
        n_workers = max(1, workers or n_threads) if cpu else 1
        pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
        done: list[list[Hit]] = []
        pending: deque = deque()

        def submit(group: list[FeatureMap]) -> None:
            if pool is None:
                done.append(_score_group(objects, group, combine, device, codec))
                return
            pending.append(pool.submit(_score_group, objects, group, combine, device, codec))
            while len(pending) > 2 * n_workers:  # bounded memory for streamed maps
                done.append(pending.popleft().result())

        try:
            groups: dict[tuple, list[FeatureMap]] = {}
            limits: dict[tuple, int] = {}  # batch size per (encoded, shape), computed once
            for fm in fmaps:
                encoded = isinstance(fm, EncodedMap)
                if encoded and codec is None:
                    raise ValueError("encoded feature maps need their codec")
                key = (encoded, tuple(fm.shape if encoded else fm.fmap.shape))
                groups.setdefault(key, []).append(fm)
                if key not in limits:
                    limits[key] = batch_size or fine_batch(device, key[1])
                if len(groups[key]) >= limits[key]:
                    submit(groups.pop(key))
            for group in groups.values():
                submit(group)
            done += [f.result() for f in pending]
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    hits = [h for part in done for h in part]
    hits.sort(key=lambda h: -h.score)
    return hits[:top_k] if top_k is not None else hits


def fine_batch(device: str, shape: tuple[int, ...]) -> int:
    """Feature maps per fine-stage batch: on CPU about :data:`FINE_BATCH_BYTES` of float32 (a batch then stays in
    cache through its passes), on CUDA :data:`FINE_BATCH` maps."""
    if torch.device(device).type != "cpu":
        return FINE_BATCH.get(torch.device(device).type, 64)
    return max(1, FINE_BATCH_BYTES // (4 * max(1, int(np.prod(shape)))))


_THREADS = threading.Lock()


@contextmanager
def _one_torch_thread(enabled: bool):
    """While held: torch runs one intra-op thread (restored after); yields the thread count before."""
    if not enabled:
        yield torch.get_num_threads()
        return
    with _THREADS:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield n
        finally:
            torch.set_num_threads(n)


def _score_group(objects, group: list, combine: str, device: str, codec: Codec | None = None) -> list[Hit]:
    # channels-last B×H×W×C, seen as B×C×H×W: encoded maps decoded into it, decoded ones copied (one copy each)
    center = _shared_center(objects) if torch.device(device).type == "cpu" else None
    if center is not None:  # subtracted once while building the working array; the templates then skip it
        objects = [BoxTemplate(t.vector, t.sizes, t.box_cells, None) for t in objects]
    if isinstance(group[0], EncodedMap):
        c, h, w = group[0].shape
        x = codec.decode_into([e.data for e in group], group[0].shape, np.empty((len(group), h, w, c), np.float32),
                              center=center)
    else:
        x = np.stack([np.asarray(fm.fmap, np.float32).transpose(1, 2, 0) for fm in group])
        if center is not None:
            x -= center
    x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2)
    scores, boxes = match_objects(objects, x, combine)  # B, B×n_obj×4
    out = []
    for fm, s, bx in zip(group, scores.tolist(), boxes.cpu().tolist()):
        obj = [(b[0] * fm.stride_x, b[1] * fm.stride_y, b[2] * fm.stride_x, b[3] * fm.stride_y) for b in bx]
        union = (min(b[0] for b in obj), min(b[1] for b in obj), max(b[2] for b in obj), max(b[3] for b in obj))
        out.append(Hit(fm.image_id, float(s), union, obj))
    return out


def _shared_center(objects) -> np.ndarray | None:
    """The centre (C float32) when every object is a :class:`BoxTemplate` with the same one, else None."""
    if not objects or not all(isinstance(t, BoxTemplate) and t.center is not None for t in objects):
        return None
    c = objects[0].center
    if not all(torch.equal(t.center, c) for t in objects[1:]):
        return None
    return c.detach().cpu().numpy().astype(np.float32)


def exhaustive_match(objects: Sequence[Sequence[torch.Tensor]], fmaps: Iterable[FeatureMap], top_k: int, *,
                     combine: str = "min", device: str = "cpu") -> list[Hit]:
    """Reference search without FAISS: NCC over every feature map; the top ``top_k`` hits."""
    return rank_feature_maps(objects, fmaps, top_k=top_k, combine=combine, device=device)
