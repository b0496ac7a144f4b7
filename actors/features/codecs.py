"""Cell codecs of the feature store: how one image's C×H×W region grid becomes the bytes of its ``fmap`` cell.

=======  =========================================  ============================================================
codec    bytes per cell                             what is stored
=======  =========================================  ============================================================
fp16     2·C                                        the grid as float16, C-order (every store before codecs)
int8     C (+ 8·C per image)                        per image and channel: ``lo``, ``scale`` (float32), then the
                                                    grid as uint8 ``round((x - lo) / scale)``, C-order
pq       M (+ the codebook once per store)          product quantization: the C channels split into M groups of
                                                    C/M, each cell's group replaced by the index (uint8) of its
                                                    nearest of 256 centroids; codes H×W×M, cell-major
=======  =========================================  ============================================================

Decoding gives float32 (fp16 stays float16, as stored); a PQ grid comes back as a C×H×W view of H×W×C memory
(the fine stage's channels-last layout, no transpose copy). Codecs are pure numpy; the store's manifest ``meta`` names
the codec (``codec``; absent = fp16, so stores written before codecs read unchanged) and, for ``pq``, the
workspace path of the codebook (``pq``: an ``.npz`` with ``centroids`` M×256×(C/M)).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from actors.core.errors import UserError

CODECS = ("fp16", "int8", "pq")
PQ_BITS = 8
PQ_K = 2 ** PQ_BITS


class Codec:
    """fp16: the grid as float16 bytes. Subclasses override :meth:`encode` / :meth:`decode`."""

    name = "fp16"

    def encode(self, fmap: np.ndarray) -> np.ndarray:
        """C×H×W array -> flat uint8 bytes of the row's ``fmap`` cell."""
        return np.ascontiguousarray(fmap, dtype=np.float16).reshape(-1).view(np.uint8)

    def decode(self, buf: Any, shape: tuple[int, int, int]) -> np.ndarray:
        """Bytes (any buffer) + (C, H, W) -> the grid; ``ValueError`` when the byte count does not fit."""
        x = np.frombuffer(buf, dtype=np.float16)
        if x.size != int(np.prod(shape)):
            raise ValueError(f"fmap holds {x.size} fp16 values, expected {shape}")
        return x.reshape(shape)

    def nbytes(self, shape: tuple[int, int, int]) -> int:
        return 2 * int(np.prod(shape))

    def decode_into(self, bufs: list[Any], shape: tuple[int, int, int], out: np.ndarray,
                    center: np.ndarray | None = None) -> np.ndarray:
        """Decode ``len(bufs)`` grids of one ``shape`` (C, H, W) into ``out``, a float32 B×H×W×C array (channels-last,
        the fine stage's working layout), minus ``center`` (C float32) when given; returns ``out``. The values equal
        ``decode(buf) - center`` exactly."""
        for k, buf in enumerate(bufs):
            out[k] = self.decode(buf, shape).transpose(1, 2, 0)
        if center is not None:
            out -= np.asarray(center, np.float32)
        return out


class Int8Codec(Codec):
    """Per-image, per-channel affine uint8: ``x ≈ lo + scale · q`` (error ≤ scale / 2 = range / 510)."""

    name = "int8"

    def encode(self, fmap: np.ndarray) -> np.ndarray:
        c = fmap.shape[0]
        x = np.asarray(fmap, np.float32).reshape(c, -1)  # C×(H·W)
        lo = x.min(1) if x.shape[1] else np.zeros(c, np.float32)
        hi = x.max(1) if x.shape[1] else np.zeros(c, np.float32)
        scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
        q = np.rint((x - lo[:, None]) / scale[:, None]).clip(0, 255).astype(np.uint8)
        return np.concatenate([lo.astype(np.float32).view(np.uint8), scale.view(np.uint8), q.reshape(-1)])

    def decode(self, buf: Any, shape: tuple[int, int, int]) -> np.ndarray:
        c = shape[0]
        raw = np.frombuffer(buf, dtype=np.uint8)
        if raw.size != self.nbytes(shape):
            raise ValueError(f"fmap holds {raw.size} bytes, expected {self.nbytes(shape)} for int8 {shape}")
        lo = raw[:4 * c].view(np.float32)
        scale = raw[4 * c:8 * c].view(np.float32)
        q = raw[8 * c:].reshape(c, -1)
        return (q * scale[:, None] + lo[:, None]).astype(np.float32, copy=False).reshape(shape)

    def nbytes(self, shape: tuple[int, int, int]) -> int:
        return 8 * shape[0] + int(np.prod(shape))


PQ_GROUP_BLOCK = 8  # groups encoded per batched product (about 4x faster than one at a time for 56 groups)


class PQCodec(Codec):
    """Product quantization with ``centroids`` M×256×d (C = M·d): M bytes per cell."""

    name = "pq"

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(centroids, np.float32)  # M×K×d
        self.m, self.k, self.d = self.centroids.shape
        self._norms = (self.centroids ** 2).sum(-1)  # M×K
        # the codebook as M·K items of d floats each (group j's code q is item j·K + q), seen as one d·4-byte
        # word per item so that decoding is one 1-D np.take (about 10× faster than fancy-indexing M×K×d)
        word = {4: np.int32, 8: np.int64}.get(4 * self.d, np.dtype((np.void, 4 * self.d)))
        self._words = self.centroids.reshape(self.m * self.k, self.d).view(word).reshape(-1)  # M·K
        self._offsets = (np.arange(self.m) * self.k).astype(np.uint16 if self.m * self.k <= 65536 else np.intp)

    def encode(self, fmap: np.ndarray) -> np.ndarray:
        c, h, w = fmap.shape
        if c != self.m * self.d:
            raise ValueError(f"PQ codebook is for {self.m * self.d} channels, the map has {c}")
        x2 = 2 * np.asarray(fmap, np.float32).reshape(self.m, self.d, h * w).transpose(0, 2, 1)  # M×N×d (2x)
        codes = np.empty((self.m, h * w), np.uint8)
        cent_t = self.centroids.transpose(0, 2, 1)  # M×d×K
        # nearest centroid: argmin |c|² - 2x·c, PQ_GROUP_BLOCK groups per batched product (a cache-sized M×N×K
        # block; each element is the same GEMM dot product as one group at a time, so the codes are the same)
        for j in range(0, self.m, PQ_GROUP_BLOCK):
            part = np.matmul(x2[j:j + PQ_GROUP_BLOCK], cent_t[j:j + PQ_GROUP_BLOCK])  # b×N×K
            np.subtract(self._norms[j:j + PQ_GROUP_BLOCK, None, :], part, out=part)
            codes[j:j + PQ_GROUP_BLOCK] = part.argmin(-1)
        return codes.T.reshape(-1)

    def decode(self, buf: Any, shape: tuple[int, int, int]) -> np.ndarray:
        c, h, w = shape
        codes = np.frombuffer(buf, dtype=np.uint8)
        if codes.size != h * w * self.m or c != self.m * self.d:
            raise ValueError(f"fmap holds {codes.size} PQ codes, expected {h * w * self.m} for {shape}")
        items = np.take(self._words, (codes.reshape(h * w, self.m) + self._offsets).reshape(-1))  # N·M words
        return items.view(np.float32).reshape(h, w, c).transpose(2, 0, 1)  # C×H×W view of H×W×C memory

    def nbytes(self, shape: tuple[int, int, int]) -> int:
        return self.m * shape[1] * shape[2]

    def decode_into(self, bufs: list[Any], shape: tuple[int, int, int], out: np.ndarray,
                    center: np.ndarray | None = None) -> np.ndarray:
        """One gather; with ``center`` from a codebook with the centre subtracted (centroid - centre is the same
        float operation as decoded value - centre, so the result is the same to the bit, with no extra pass)."""
        c, h, w = shape
        codes = np.concatenate([np.frombuffer(b, dtype=np.uint8) for b in bufs]) if bufs else np.zeros(0, np.uint8)
        if codes.size != len(bufs) * h * w * self.m or c != self.m * self.d:
            raise ValueError(f"{len(bufs)} fmaps hold {codes.size} PQ codes, expected {h * w * self.m} each for {shape}")
        if out.shape != (len(bufs), h, w, c) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"decode_into needs a C-contiguous float32 {(len(bufs), h, w, c)} array")
        words = out.reshape(-1).view(self._words.dtype)  # one word per (cell, group)
        np.take(self._table(center), (codes.reshape(-1, self.m) + self._offsets).reshape(-1), out=words, mode="wrap")
        return out

    def _table(self, center: np.ndarray | None) -> np.ndarray:
        """The codebook as words, minus ``center`` when given (the last centre's table is kept)."""
        if center is None:
            return self._words
        center = np.asarray(center, np.float32).reshape(self.m, 1, self.d)
        cached = getattr(self, "_centred", None)
        if cached is None or not np.array_equal(cached[0], center):
            table = (self.centroids - center).reshape(self.m * self.k, self.d).view(self._words.dtype).reshape(-1)
            cached = self._centred = (center.copy(), table)
        return cached[1]


def train_pq(cells: np.ndarray, m: int, *, iters: int = 12, seed: int = 0) -> np.ndarray:
    """k-means (256 centroids) per group of C/m channels of N×C cells -> centroids m×256×(C/m), float32.

    Fewer cells than centroids (a tiny workspace) gives duplicate centroids: every cell is then coded exactly.
    Raises ``UserError`` when m does not divide C or there are no cells.
    """
    n, c = cells.shape
    if m < 1 or c % m:
        raise UserError(f"pq_m={m} must divide the cell dimension {c} (after PCA, if any)")
    if n == 0:
        raise UserError("PQ needs training cells, got none")
    rng = np.random.default_rng(seed)
    cells = np.asarray(cells, np.float32)
    cells = cells[np.lexsort(cells.T[::-1])]  # canonical order: the same cells give the same codebook in any order
    x = cells.reshape(n, m, c // m)
    out = np.empty((m, PQ_K, c // m), np.float32)
    with _one_blas_thread():  # a (N×d)·(d×256) product is too small to split: threads only wait on each other
        for j in range(m):
            out[j] = _kmeans_group(x[:, j], iters, rng)
    return out


def _one_blas_thread():
    """Limit BLAS to one thread inside the block (each output element is computed the same way, so the products
    are the same to the bit); no-op when threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def _kmeans_group(xj: np.ndarray, iters: int, rng: np.random.Generator, block: int = 2048) -> np.ndarray:
    """One group's k-means (see :func:`train_pq`): N×d cells -> 256×d centroids.

    Each step computes exactly what ``argmin(|c|² - 2x @ c.T)`` and ``np.add.at(sums, assign, x)`` compute (the same
    float operations in the same order, so the codebook is the same to the bit), faster: ``2x`` once per group, the
    distances (in place) and their argmin over cache-sized row blocks, the sums one channel at a time.
    """
    n = len(xj)
    x2 = 2 * xj  # contiguous, as ``2 * xj`` was inside the expression
    cols = [np.ascontiguousarray(xj[:, i]) for i in range(xj.shape[1])]
    assign = np.empty(n, np.intp)
    cent = xj[rng.choice(n, PQ_K, replace=n < PQ_K)].copy()
    for _ in range(iters):
        norms = (cent ** 2).sum(1)[None]
        for b in range(0, n, block):  # row blocks (a multiple of every GEMM kernel's row unroll): same products
            part = x2[b:b + block] @ cent.T
            np.subtract(norms, part, out=part)
            assign[b:b + block] = np.argmin(part, axis=1)
        sums_t = np.zeros((xj.shape[1], PQ_K), np.float32)
        for i, col in enumerate(cols):  # sequential per element, in row order: the adds np.add.at does
            np.add.at(sums_t[i], assign, col)
        sums = sums_t.T
        counts = np.bincount(assign, minlength=PQ_K)
        empty = counts == 0
        cent[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # re-seed empty centroids on random cells
            cent[empty] = xj[rng.choice(n, int(empty.sum()), replace=n < int(empty.sum()))]
    return cent


def default_pq_m(dim: int) -> int:
    """PQ bytes per cell by default: the largest divisor of ``dim`` up to dim / 2 (2 channels per byte; what
    ``bench/feature_store.py`` chose)."""
    return max([m for m in range(1, max(1, dim // 2) + 1) if dim % m == 0])


def save_codebook(centroids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, centroids=centroids)
    return buf.getvalue()


def load_codebook(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["centroids"]


def make_codec(name: str | None, centroids: np.ndarray | None = None) -> Codec:
    """The codec called ``name`` (None = fp16); ``pq`` needs its ``centroids``."""
    name = name or "fp16"
    if name == "fp16":
        return Codec()
    if name == "int8":
        return Int8Codec()
    if name == "pq":
        if centroids is None:
            raise UserError("the pq codec needs its codebook")
        return PQCodec(centroids)
    raise UserError(f"unknown feature codec {name!r}; choose one of {', '.join(CODECS)}")


__all__ = ["CODECS", "Codec", "Int8Codec", "PQCodec", "default_pq_m", "load_codebook", "make_codec", "save_codebook", "train_pq"]
