"""The embedded world: an offline, deterministic cluttered-scene detection data set.

``make_world(out_dir, seed=…)`` paints ``n_images`` scenes and writes::

    out_dir/images/<split>/<split>_<index:06d>.jpg   one file per image (index counts within the split)
    out_dir/annotations/<split>.json                  COCO: images, annotations (bbox [x, y, w, h]), categories
    out_dir/world.json                                config + counts (no timings, no absolute paths)
    <workspace>/catalog/…                             the COCO files ingested (default ``out_dir/workspace``)

Scenes
------
* Background: a random crop (random scale, flips, colour jitter) of a real photograph shipped with scikit-image.
* Objects (labelled): the 10 handwritten digits of ``sklearn.datasets.load_digits`` (``digit_0`` … ``digit_9``,
  the 8×8 glyph smoothly upscaled and used as an alpha mask with a random colour), faces from
  ``skimage.data.lfw_subset`` (``face``, tinted, under a soft elliptical mask) and procedural shapes (``circle``,
  ``triangle``, ``square``, ``star``, ``ring``, ``cross``). Each gets a random scale (box area fraction log-uniform in
  ``object_area``), colour, rotation and position; later objects may overlap earlier ones a little.
* Clutter (not labelled): lines, soft blobs and texture patches under the objects, and occluders (texture
  patches covering one side of an object) over them.

Contract
--------
* A box is the tight box of the object's own alpha mask (alpha > 0.5) *before* occlusion: an occluder may hide up
  to about half of it, never all of it. Boxes lie inside the image and have width and height >= 1 pixel.
* Every image draws from its own ``np.random.default_rng([seed, i])`` (``i`` the global image index), so the
  output is byte-identical for a seed whatever ``workers`` is, and differs between seeds.
* Images of the ``queries`` split hold at least one object.
* Object instances are held out: every 5th digit glyph of each class and every 5th face crop
  (``instance % QUERY_INSTANCE_EVERY == 0``) appear only in the ``queries`` split, all others only outside it, so a
  query's object is never the same glyph or face as any pool (or training) object.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from actors.catalog.emoji import EMOJI_CATEGORIES, EMOJI_SUPERCATEGORY, render_glyph
from actors.core.errors import UserError

BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "grass", "gravel",
               "brick", "camera", "cat", "immunohistochemistry", "coins", "moon", "stereo_motorcycle")
EMOJI = tuple(EMOJI_CATEGORIES)
DIGITS = tuple(f"digit_{d}" for d in range(10))
SHAPES = ("circle", "triangle", "square", "star", "ring", "cross")
CATEGORIES = EMOJI + DIGITS + ("face",) + SHAPES  # every category the generator knows, in canonical order
# family (what draws it) of each category; ``classes`` may name a category, a family or a supercategory
FAMILY = {**dict.fromkeys(EMOJI, "emoji"), **dict.fromkeys(DIGITS, "digit"), "face": "face",
          **dict.fromkeys(SHAPES, "shape")}
SUPERCATEGORY = {**EMOJI_SUPERCATEGORY, **{d: "digit" for d in DIGITS}, "face": "face", **{s: "shape" for s in SHAPES}}
# the default world: category-level objects recognisable at their size (measured: bench/selection_ceiling.py)
DEFAULT_CLASSES = ("emoji",)
# skewed class frequencies by default: a few common classes, most at weight 1, three rare ones (about 1 object in 60)
DEFAULT_CLASS_WEIGHTS = (("car", 3.0), ("pedestrian", 3.0), ("sign", 2.0), ("aircraft", 0.3), ("boat", 0.3),
                         ("book", 0.3))
DEFAULT_SPLITS = (("train", 0.3), ("val", 0.1), ("pool", 0.5), ("queries", 0.1))
DEFAULT_OBJECT_AREA = (0.0015, 0.04)  # log-uniform box area fraction: ~58% of objects under 1%, the rest 1-4%
MAX_OVERLAP = 0.3  # a new object may cover at most this fraction of an earlier object's box (and vice versa)
HELD_OUT_SPLIT = "queries"  # its digit glyphs and face crops are used in no other split
QUERY_INSTANCE_EVERY = 5  # instance i of a class is a query instance iff i % QUERY_INSTANCE_EVERY == 0


@dataclass(frozen=True)
class WorldConfig:
    """Generator parameters; ``WorldConfig.get_default_config()`` gives the shipped defaults.

    ``size`` is ``(W, H)`` in pixels; ``object_area`` the range of an object's box area as a fraction of the image
    (log-uniform); ``clutter`` the range of distractors per image; ``occlusion`` the chance an object gets an
    occluder; ``classes`` category, family (``emoji``, ``digit``, ``face``, ``shape``) or supercategory names
    (``vehicle``, ``animal`` …), ``None`` for :data:`DEFAULT_CLASSES`; ``class_weights`` relative sampling weights
    of some categories (the rest weigh 1), e.g. ``(("star", 0.05),)`` makes ``star`` a rare class; ``None`` applies
    :data:`DEFAULT_CLASS_WEIGHTS` to those of its categories in use, ``()`` draws uniformly.
    """

    seed: int = 0
    n_images: int = 2000
    size: tuple[int, int] = (512, 384)
    classes: tuple[str, ...] | None = None
    objects_per_image: tuple[int, int] = (1, 4)
    object_area: tuple[float, float] = DEFAULT_OBJECT_AREA
    clutter: tuple[int, int] = (2, 6)
    occlusion: float = 0.3
    splits: tuple[tuple[str, float], ...] = DEFAULT_SPLITS
    class_weights: tuple[tuple[str, float], ...] | None = None  # (category, relative weight); others weigh 1
    image_format: str = "jpg"
    jpeg_quality: int = 90
    workers: int = field(default=0, compare=False)  # 0: one per CPU (at most 8); never changes the output

    @classmethod
    def get_default_config(cls) -> "WorldConfig":
        return cls()

    def categories(self) -> tuple[str, ...]:
        """The category names in use, in canonical order (category id = position + 1)."""
        wanted = set()
        for c in DEFAULT_CLASSES if self.classes is None else self.classes:
            names = [n for n in CATEGORIES if c in (n, FAMILY[n], SUPERCATEGORY[n])]
            if not names:
                groups = sorted(set(FAMILY.values()) | set(SUPERCATEGORY.values()))
                raise UserError(f"unknown class {c!r}; known: {', '.join(CATEGORIES)} or {'/'.join(groups)}")
            wanted.update(names)
        return tuple(n for n in CATEGORIES if n in wanted)

    def validate(self) -> "WorldConfig":
        w, h = self.size
        lo, hi = self.object_area
        if w < 16 or h < 16:
            raise UserError(f"size must be at least 16x16, got {w}x{h}")
        if not 0 < lo <= hi < 0.5:
            raise UserError(f"object_area must satisfy 0 < lo <= hi < 0.5, got {self.object_area}")
        if not 0 <= self.objects_per_image[0] <= self.objects_per_image[1]:
            raise UserError(f"objects_per_image must be (lo, hi) with 0 <= lo <= hi, got {self.objects_per_image}")
        if self.n_images < 1:
            raise UserError(f"n_images must be >= 1, got {self.n_images}")
        if self.image_format not in ("jpg", "png"):
            raise UserError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        fracs = [f for _, f in self.splits]
        if not self.splits or min(fracs) < 0 or abs(sum(fracs) - 1) > 1e-6:
            raise UserError(f"split fractions must be >= 0 and sum to 1, got {self.splits}")
        cats = self.categories()
        for name, wgt in self.class_weights or ():
            if name not in cats or not wgt > 0:
                raise UserError(f"class_weights: {name!r} must be a category in use with a weight > 0, got {wgt!r}")
        return self

    def class_probs(self) -> np.ndarray | None:
        """Sampling probabilities of :meth:`categories` (None: uniform, the original draw)."""
        cats = self.categories()
        weights = self.class_weights
        if weights is None:
            weights = tuple((c, w) for c, w in DEFAULT_CLASS_WEIGHTS if c in cats)
        if not weights:
            return None
        wgt = dict(weights)
        p = np.array([float(wgt.get(c, 1.0)) for c in cats])
        return p / p.sum()


@dataclass
class WorldSummary:
    """What :func:`make_world` wrote; ``seconds`` is the wall time of image generation alone."""

    out_dir: str
    workspace: str
    n_images: int
    n_objects: int
    images_per_split: dict[str, int]
    objects_per_split: dict[str, int]
    annotation_files: dict[str, str]
    categories: list[str]
    seconds: float
    ingest_seconds: float = 0.0


# --------------------------------------------------------------------------- assets (loaded once per process)
@lru_cache(maxsize=None)
def _backgrounds() -> tuple[Image.Image, ...]:
    import skimage.data as data

    out = []
    for name in BACKGROUNDS:
        a = getattr(data, name)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle is (left, right, disparity)
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        out.append(Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)))
    return tuple(out)


@lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return tuple((d.images[d.target == k] / 16.0).astype(np.float32) for k in range(10))


@lru_cache(maxsize=None)
def _faces() -> np.ndarray:
    import skimage.data as data

    return data.lfw_subset()[:100].astype(np.float32)  # the first 100 are faces, the rest are not


def _warm_assets() -> None:
    _backgrounds(), _digits(), _faces()
    for name, codes in EMOJI_CATEGORIES.items():
        for i in range(len(codes)):
            render_glyph(name, i)


# --------------------------------------------------------------------------- masks
def _grid(h: int, w: int, angle: float, ss: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled coordinates in [-1, 1]², rotated by ``angle`` radians; each (h*ss, w*ss)."""
    ys = (np.arange(h * ss, dtype=np.float32) + 0.5) / (h * ss) * 2 - 1
    xs = (np.arange(w * ss, dtype=np.float32) + 0.5) / (w * ss) * 2 - 1
    x, y = np.meshgrid(xs, ys)
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _downsample(mask: np.ndarray, ss: int = 3) -> np.ndarray:
    h, w = mask.shape[0] // ss, mask.shape[1] // ss
    return mask.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)


def _shape_alpha(name: str, h: int, w: int, angle: float) -> np.ndarray:
    """Anti-aliased (h, w) alpha of a procedural shape of radius ~0.7, rotated so it stays inside the patch."""
    x, y = _grid(h, w, angle)
    r, t = np.hypot(x, y), np.arctan2(y, x)
    if name == "circle":
        m = r < 0.7
    elif name == "ring":
        m = (r < 0.7) & (r > 0.42)
    elif name == "square":
        m = (np.abs(x) < 0.5) & (np.abs(y) < 0.5)
    elif name == "triangle":  # equilateral, circumradius 0.7
        m = (y < 0.35) & (np.sqrt(3) * x - y < 0.7) & (-np.sqrt(3) * x - y < 0.7)
    elif name == "star":  # five points between radii 0.3 and 0.7
        m = r < 0.3 + 0.4 * np.abs(np.cos(2.5 * (t + np.pi / 2))) ** 2
    elif name == "cross":
        m = ((np.abs(x) < 0.2) & (np.abs(y) < 0.65)) | ((np.abs(y) < 0.2) & (np.abs(x) < 0.65))
    else:
        raise ValueError(f"unknown shape {name!r}")
    return _downsample(m.astype(np.float32))


def _ellipse_alpha(h: int, w: int, soft: float = 0.2) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r = np.hypot(xs[None, :], ys[:, None])
    return np.clip((1 - r) / soft, 0, 1)


def _resize(a: np.ndarray, w: int, h: int, angle_deg: float = 0.0) -> np.ndarray:
    """Smoothly resize (and rotate, expanding the canvas) a float32 image."""
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F").resize((w, h), Image.BICUBIC)
    if angle_deg:
        im = im.rotate(angle_deg, resample=Image.BILINEAR, expand=True)
    return np.asarray(im, dtype=np.float32)


def _instance(n: int, rng: np.random.Generator, held_out: bool) -> int:
    """An instance index in [0, n): a query instance (``i % QUERY_INSTANCE_EVERY == 0``) iff ``held_out``."""
    ids = np.arange(n)
    ids = ids[(ids % QUERY_INSTANCE_EVERY == 0) == held_out]
    return int(ids[rng.integers(len(ids))])


def _emoji_patch(name: str, area: float, rng: np.random.Generator,
                 held_out: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(alpha, rgb, instance) of one drawing of an emoji category: its own aspect ratio (±10 %), box area ``area``
    px², mirrored half the time, rotated up to ±15°, per-channel gain 0.8–1.2 (lighting)."""
    i = _instance(len(EMOJI_CATEGORIES[name]), rng, held_out)
    alpha, rgb = render_glyph(name, i)
    aspect = alpha.shape[1] / alpha.shape[0] * rng.uniform(0.9, 1.1)
    w, h = max(4, round(math.sqrt(area * aspect))), max(4, round(math.sqrt(area / aspect)))
    if rng.random() < 0.5:
        alpha, rgb = alpha[:, ::-1], rgb[:, ::-1]
    angle = float(rng.uniform(-15, 15))
    a = _resize(alpha, w, h, angle).clip(0, 1)
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    rgb = np.stack([_resize(rgb[..., k], w, h, angle) for k in range(3)], -1) * gain
    return a, rgb.clip(0, 255), i


def _object_patch(name: str, w: int, h: int, rng: np.random.Generator,
                  held_out: bool = False) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(alpha, shade, instance) of one object; shade multiplies the colour (None: flat colour); instance is the
    digit glyph / face crop index (None for procedural shapes), drawn from the held-out query instances iff
    ``held_out``. Emoji categories are drawn by :func:`_emoji_patch`."""
    if name in SHAPES:
        return _shape_alpha(name, h, w, rng.uniform(0, 2 * np.pi)), None, None
    angle = float(rng.uniform(-25, 25))
    if name == "face":
        i = _instance(100, rng, held_out)
        face = _faces()[i]
        return _resize(_ellipse_alpha(25, 25), w, h, angle).clip(0, 1), _resize(face, w, h, angle).clip(0, 1), i
    glyphs = _digits()[int(name[-1])]
    i = _instance(len(glyphs), rng, held_out)
    g = _resize(np.pad(glyphs[i], 1), w, h, angle)
    return np.clip((g - 0.2) / 0.4, 0, 1), None, i


# --------------------------------------------------------------------------- painting
def _paste(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, x: int, y: int) -> None:
    """Alpha-composite in place; ``rgb`` is (3,) or (h, w, 3), ``alpha`` (h, w) in [0, 1]."""
    h, w = alpha.shape
    region = img[y : y + h, x : x + w]
    a = alpha[..., None]
    region *= 1 - a
    region += a * rgb


def _colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A saturated random colour, flipped when too close to the mean colour ``behind`` it."""
    c = rng.uniform(0, 255, 3).astype(np.float32)
    c[rng.integers(3)] = rng.choice([20.0, 235.0])
    return 255 - c if np.abs(c - behind).sum() < 150 else c


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32 jittered crop of a random photograph."""
    src = _backgrounds()[rng.integers(len(BACKGROUNDS))]
    cw_max = min(src.width, src.height * w / h)
    cw = cw_max * rng.uniform(0.35, 1.0)
    ch = cw * h / w
    x0, y0 = rng.uniform(0, src.width - cw), rng.uniform(0, src.height - ch)
    a = np.asarray(src.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)), dtype=np.float32)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if rng.random() < 0.2:
        a = a[::-1]
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32) * rng.uniform(0.7, 1.3)
    mean = a.mean()
    return np.ascontiguousarray((a - mean) * rng.uniform(0.6, 1.2) + mean) * gain


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int, side: float) -> None:
    """Paint ``n`` unlabelled distractors: lines, soft blobs and texture patches."""
    H, W = img.shape[:2]
    for _ in range(n):
        kind = rng.integers(3)
        if kind == 0:
            mask = Image.new("L", (W, H))
            pts = [tuple(p) for p in rng.uniform(0, [W, H], (int(rng.integers(2, 5)), 2)).tolist()]
            ImageDraw.Draw(mask).line(pts, fill=255, width=int(rng.integers(1, max(2, side // 4) + 1)))
            _paste(img, np.asarray(mask, dtype=np.float32) / 255, _colour(rng, img.mean((0, 1))), 0, 0)
            continue
        w = int(np.clip(side * rng.uniform(0.5, 3.0), 3, W // 2))
        h = int(np.clip(w * rng.uniform(0.5, 2.0), 3, H // 2))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        alpha = _ellipse_alpha(h, w, soft=rng.uniform(0.1, 0.6)) * rng.uniform(0.5, 1.0)
        rgb = _colour(rng, img[y : y + h, x : x + w].mean((0, 1))) if kind == 1 else _background(rng, w, h)
        _paste(img, alpha, rgb, x, y)


def _occlude(img: np.ndarray, rng: np.random.Generator, box: Sequence[int]) -> None:
    """Cover one side of ``box`` (x, y, w, h): 20–45 % of it, with a texture patch reaching beyond it."""
    H, W = img.shape[:2]
    x, y, w, h = box
    f = rng.uniform(0.2, 0.45)
    side = rng.integers(4)
    if side < 2:  # left / right
        ow, oh = max(1, int(w * f)), h + 2 * int(h * 0.3)
        ox = x if side == 0 else x + w - ow
        oy = y - int(h * 0.3)
    else:  # top / bottom
        ow, oh = w + 2 * int(w * 0.3), max(1, int(h * f))
        ox, oy = x - int(w * 0.3), (y if side == 2 else y + h - oh)
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + ow, W), min(oy + oh, H)
    if x1 > x0 and y1 > y0:
        _paste(img, np.ones((y1 - y0, x1 - x0), np.float32), _background(rng, x1 - x0, y1 - y0), x0, y0)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        iw = min(x + w, bx + bw) - max(x, bx)
        ih = min(y + h, by + bh) - max(y, by)
        if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(w * h, bw * bh):
            return True
    return False


def _place_object(img, rng, cfg, name, boxes,
                  held_out=False) -> tuple[tuple[int, int, int, int], int, int | None] | None:
    """Paint one object where it does not hide earlier ones; returns (tight box, mask area, instance) or None."""
    H, W = img.shape[:2]
    area = math.exp(rng.uniform(*np.log(cfg.object_area))) * W * H
    if name in EMOJI_CATEGORIES:
        alpha, rgb, instance = _emoji_patch(name, area, rng, held_out)
        shade = None
    else:
        aspect = rng.uniform(0.75, 1.33)
        side = math.sqrt(area) / (0.75 if name in SHAPES else 0.9)
        pw, ph = max(4, round(side * math.sqrt(aspect))), max(4, round(side / math.sqrt(aspect)))
        alpha, shade, instance = _object_patch(name, min(pw, W - 2), min(ph, H - 2), rng, held_out)
        rgb = None
    ys, xs = np.nonzero(alpha > 0.5)
    h, w = alpha.shape
    if len(ys) == 0 or h > H or w > W:
        return None
    for _ in range(10):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        box = (x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)
        if not _overlaps(box, boxes):
            break
    else:
        return None
    if rgb is None:
        colour = _colour(rng, img[y : y + h, x : x + w].mean((0, 1)))
        rgb = colour if shade is None else shade[..., None] * (0.5 * colour + 0.5 * 255)
    _paste(img, alpha, rgb, x, y)
    return box, len(ys), instance


def render_image(cfg: WorldConfig, index: int, min_objects: int = 0,
                 held_out: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Paint image ``index`` of the world; returns ((H, W, 3) uint8, [{category, bbox [x,y,w,h], area,
    instance}]); ``held_out``: digits and faces use only the query instances (the ``queries`` split)."""
    rng = np.random.default_rng([cfg.seed, index])
    W, H = cfg.size
    cats, probs = cfg.categories(), cfg.class_probs()
    img = _background(rng, W, H)
    _clutter(img, rng, int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1)), math.sqrt(cfg.object_area[1] * W * H))
    n = max(int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1)), min_objects)
    objects: list[dict[str, Any]] = []
    for _ in range(100 if n else 0):
        name = cats[rng.integers(len(cats))] if probs is None else cats[rng.choice(len(cats), p=probs)]
        placed = _place_object(img, rng, cfg, name, [o["bbox"] for o in objects], held_out)
        if placed:
            objects.append({"category": name, "bbox": placed[0], "area": placed[1], "instance": placed[2]})
        if len(objects) >= n:
            break
    for o in objects:
        if rng.random() < cfg.occlusion:
            _occlude(img, rng, o["bbox"])
    return np.clip(img, 0, 255).astype(np.uint8), objects


def encode_image(arr: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Deterministic JPEG/PNG bytes (no metadata, fixed quality and subsampling)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=2, optimize=False)
    else:
        Image.fromarray(arr).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------- driver
def _split_plan(cfg: WorldConfig) -> list[tuple[str, int, int]]:
    """[(split, index within split, global index)]; split sizes by largest remainder."""
    raw = [f * cfg.n_images for _, f in cfg.splits]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: cfg.n_images - sum(counts)]:
        counts[i] += 1
    plan, g = [], 0
    for (name, _), c in zip(cfg.splits, counts):
        plan += [(name, k, g + k) for k in range(c)]
        g += c
    return plan


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _make_one(args: tuple[WorldConfig, str, str, int, int]) -> tuple[int, str, list[dict[str, Any]]]:
    cfg, out_dir, split, k, g = args
    arr, objects = render_image(cfg, g, min_objects=1 if split == "queries" else 0,
                                held_out=split == HELD_OUT_SPLIT)
    rel = f"images/{split}/{split}_{k:06d}.{cfg.image_format}"
    _write_file(Path(out_dir) / rel, encode_image(arr, cfg.image_format, cfg.jpeg_quality))
    return g, rel, objects


def _render_all(cfg: WorldConfig, out_dir: Path, plan: list[tuple[str, int, int]]) -> list[tuple]:
    """Render every planned image not done yet; each finished image is appended to the progress ledger (after its
    file was written atomically), so a killed run resumes where it stopped."""
    done = _read_progress(out_dir)
    tasks = [(cfg, str(out_dir), s, k, g) for s, k, g in plan
             if not (g in done and (out_dir / done[g][1]).is_file())]
    results = [done[g] for _, _, g in plan if g in done and (out_dir / done[g][1]).is_file()]
    workers = cfg.workers or min(os.cpu_count() or 1, 8)
    with open(out_dir / PROGRESS, "a") as ledger:
        if workers <= 1 or len(tasks) < 64:
            _warm_assets()
            made = (_make_one(t) for t in tasks)
            results += [_log(ledger, r) for r in made]
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_warm_assets) as pool:
                made = pool.map(_make_one, tasks, chunksize=max(1, len(tasks) // (8 * workers)))
                results += [_log(ledger, r) for r in made]
    return results


PARTIAL = "world.partial.json"  # the config of a run in progress (world.json, written last, marks a complete world)
PROGRESS = ".progress.jsonl"  # one line per finished image: [global index, relative path, objects]


def _log(ledger, r: tuple) -> tuple:
    ledger.write(json.dumps(list(r)) + "\n")
    ledger.flush()
    return r


def _read_progress(out_dir: Path) -> dict[int, tuple]:
    """Finished images of an interrupted run (a torn last line, from a kill mid-write, is ignored)."""
    done: dict[int, tuple] = {}
    path = out_dir / PROGRESS
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                g, rel, objects = json.loads(line)
            except (ValueError, TypeError):
                continue
            done[int(g)] = (int(g), rel, objects)
    return done


def _config_dict(cfg: WorldConfig) -> dict[str, Any]:
    """The config a world records (no ``workers``; no ``class_weights`` when uniform, as before the option)."""
    return {k: v for k, v in asdict(cfg).items() if k != "workers" and not (k == "class_weights" and v is None)}


def _start_or_resume(out: Path, cfg: WorldConfig) -> None:
    """Refuse a folder holding a complete world or another world's partial run; mark this run as in progress."""
    config = _config_dict(cfg)
    if (out / "world.json").exists():
        raise UserError(f"{out}: already holds a world; choose another --out or delete it")
    partial = out / PARTIAL
    if partial.exists():
        if json.loads(partial.read_text()) != json.loads(json.dumps(config)):
            raise UserError(f"{out}: holds an unfinished world with other settings ({partial}); re-run with those "
                            "settings to finish it, or choose another --out")
        return  # resume: same settings
    if (out / "images").exists():
        raise UserError(f"{out}: holds images but no world marker; choose another --out or delete it")
    _write_file(partial, (json.dumps(config, sort_keys=True, indent=2) + "\n").encode())


def _coco(cfg: WorldConfig, split: str, results: list[tuple], first_ann_id: int) -> dict[str, Any]:
    cats = cfg.categories()
    ids = {n: i + 1 for i, n in enumerate(cats)}
    W, H = cfg.size
    images, anns = [], []
    for g, rel, objects in results:
        images.append({"id": g + 1, "file_name": rel, "width": W, "height": H})
        for o in objects:
            anns.append({"id": first_ann_id + len(anns), "image_id": g + 1, "bbox": list(o["bbox"]),
                         "area": o["area"], "category_id": ids[o["category"]], "iscrowd": 0})
    categories = [{"id": ids[n], "name": n, "supercategory": SUPERCATEGORY[n]} for n in cats]
    return {"info": {"description": f"assay world, split {split}", "seed": cfg.seed},
            "images": images, "annotations": anns, "categories": categories}


def make_world(out_dir: str | os.PathLike, *, seed: int = 0, n_images: int = 2000,
               size: tuple[int, int] = (512, 384), classes: Sequence[str] | None = None,
               objects_per_image: tuple[int, int] = (1, 4), object_area: tuple[float, float] = DEFAULT_OBJECT_AREA,
               clutter: tuple[int, int] = (2, 6), occlusion: float = 0.3,
               splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS, image_format: str = "jpg",
               workers: int = 0, workspace: Any = None, progress: bool = False,
               class_weights: Sequence[tuple[str, float]] | None = None) -> WorldSummary:
    """Generate the world into ``out_dir`` and ingest its COCO files into a workspace catalog.

    Parameters are those of :class:`WorldConfig`; ``workspace`` is a Workspace or a path/URI (default
    ``out_dir/workspace``). ``out_dir`` must not hold a complete world (``world.json``, written last) or an
    unfinished one with other settings (``UserError``): re-using it would mix two worlds under the same URIs.

    Resumable: every image is written atomically and logged once written, so a run killed part-way is finished by
    the same call (same settings): images already written are skipped, the output is byte-identical to an
    uninterrupted run.

    Returns
    -------
    WorldSummary
    """
    cfg = WorldConfig(seed=seed, n_images=n_images, size=tuple(size), objects_per_image=tuple(objects_per_image),
                      classes=None if classes is None else tuple(classes), object_area=tuple(object_area),
                      clutter=tuple(clutter), occlusion=occlusion, splits=tuple(tuple(s) for s in splits),
                      image_format=image_format, workers=workers,
                      class_weights=None if class_weights is None else tuple((c, float(w)) for c, w in class_weights))
    return generate_world(out_dir, cfg.validate(), workspace=workspace, progress=progress)


def generate_world(out_dir: str | os.PathLike, cfg: WorldConfig, *, workspace: Any = None,
                   progress: bool = False) -> WorldSummary:
    """Like :func:`make_world`, from a :class:`WorldConfig`."""
    from actors.catalog.ingest import ingest
    from actors.core.workspace import Workspace

    out = Path(out_dir).expanduser().resolve()
    _start_or_resume(out, cfg)
    t0 = time.perf_counter()
    plan = _split_plan(cfg)
    results = sorted(_render_all(cfg, out, plan))
    by_split: dict[str, list[tuple]] = {name: [] for name, _ in cfg.splits}
    for (split, _, _), r in zip(plan, results):
        by_split[split].append(r)
    files, n_ann = {}, 1
    for split, rs in by_split.items():
        coco = _coco(cfg, split, rs, n_ann)
        n_ann += len(coco["annotations"])
        files[split] = f"annotations/{split}.json"
        _write_file(out / files[split], json.dumps(coco, sort_keys=True).encode())
    seconds = time.perf_counter() - t0
    summary = WorldSummary(
        out_dir=str(out), workspace="", n_images=len(plan), n_objects=n_ann - 1,
        images_per_split={s: len(rs) for s, rs in by_split.items()},
        objects_per_split={s: sum(len(r[2]) for r in rs) for s, rs in by_split.items()},
        annotation_files=files, categories=list(cfg.categories()), seconds=seconds)
    meta = {"config": _config_dict(cfg),
            "counts": {k: getattr(summary, k) for k in ("n_images", "n_objects", "images_per_split",
                                                         "objects_per_split")},
            "annotation_files": files, "categories": summary.categories}
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace or out / "workspace")
    t1 = time.perf_counter()
    for split, rel in files.items():
        ingest(out / rel, ws, split=split, progress=progress)  # idempotent: a resumed run re-ingests safely
    summary.ingest_seconds, summary.workspace = time.perf_counter() - t1, ws.uri
    _write_file(out / "world.json", (json.dumps(meta, sort_keys=True, indent=2) + "\n").encode())  # complete
    (out / PARTIAL).unlink(missing_ok=True)
    (out / PROGRESS).unlink(missing_ok=True)
    return summary


__all__ = ["WorldConfig", "WorldSummary", "make_world", "generate_world", "render_image", "encode_image",
           "CATEGORIES", "SHAPES", "DIGITS", "EMOJI", "FAMILY", "DEFAULT_CLASSES", "DEFAULT_CLASS_WEIGHTS",
           "DEFAULT_OBJECT_AREA", "BACKGROUNDS", "DEFAULT_SPLITS",
           "HELD_OUT_SPLIT", "QUERY_INSTANCE_EVERY"]
