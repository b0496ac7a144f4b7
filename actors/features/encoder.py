"""The region encoder: image -> grid of region vectors, the one function pool images and query images go through.

A :class:`RegionEncoder` wraps a backbone (:mod:`actors.features.backbones`), average-pools its cells into stored
cells (``CELL_STRIDE`` image pixels by default), and optionally projects each cell with PCA.
:func:`load_region_encoder` rebuilds, from a feature store's manifest, exactly the encoder that made the store.
"""

from __future__ import annotations

import io
import os
import threading
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from actors.core.errors import UserError
from actors.core.runtime import device as auto_device
from actors.core.workspace import Workspace, WorkspaceError
from actors.features.backbones import FeatureExtractor, get_backbone, parse_spec
from actors.features.onnx_trunk import RUNTIMES, OnnxTrunk, trunk_runtime
from actors.features.store import FeatureMap, feature_meta

CELL_STRIDE = 8  # default pixels per stored cell (pool = CELL_STRIDE // backbone stride): tiny objects need 8-px cells


class RegionEncoder:
    """Image -> region grid, identical for pool and query images.

    Parameters
    ----------
    extractor : FeatureExtractor
    pool : int
        k: average-pool k×k backbone cells into one stored cell (``ceil_mode``: border cells average what exists).
    pca : (mean C, components C×D) float32 arrays, optional
        Projection applied per cell: ``(f - mean) @ components``.
    max_side : int, optional
        Resize (bilinear, antialiased, aspect kept) so the longer side equals this before the backbone.
    device : str, optional
        Default: ``actors.core.runtime.device()``.
    batch_size : int
        Images per forward pass in :meth:`encode_batch`.
    runtime : {"torch", "onnxruntime"}, optional
        What runs the backbone: default :func:`~actors.features.onnx_trunk.trunk_runtime` (ONNX Runtime for the
        EfficientNet-Lite0 trunks on CPU, ~4× faster there; PyTorch otherwise). The ONNX graph is exported on the
        first forward pass, in memory. Encoding is thread-safe: with ``onnx_threads=1`` several threads encoding
        their own batches use one core each (what ``embed_pool`` in-process does).
    onnx_threads : int, optional
        ONNX Runtime intra-op threads (default: :func:`torch.get_num_threads` when the session is made).
    """

    def __init__(self, extractor: FeatureExtractor, *, pool: int = 1, pca: tuple[np.ndarray, np.ndarray] | None = None,
                 max_side: int | None = None, device: str | None = None, batch_size: int = 16,
                 runtime: str | None = None, onnx_threads: int | None = None) -> None:
        self.device = device or auto_device()
        self.runtime = runtime or trunk_runtime(extractor.name, self.device)
        if self.runtime not in RUNTIMES or (self.runtime == "onnxruntime" and self.device != "cpu"):
            raise ValueError(f"runtime {self.runtime!r} on {self.device}: expected torch, or onnxruntime on cpu")
        self.extractor = extractor.eval().to(self.device)
        self._onnx: OnnxTrunk | None = None
        self.onnx_threads = onnx_threads
        self._lock = threading.Lock()
        # under PyTorch, the EfficientNet-Lite0 trunk (depthwise convolutions) runs ~20% faster on CPU in channels-last
        # memory; its output is the same (to the bit on one thread; within thread-order rounding, as any run, on more)
        self.channels_last = (self.runtime == "torch" and self.device == "cpu"
                              and extractor.name.startswith("efficientnet-lite0"))
        if self.channels_last:
            self.extractor = self.extractor.to(memory_format=torch.channels_last)
        self.pool, self.max_side, self.batch_size = int(pool), max_side, batch_size
        self.pca = None
        if pca is not None:
            mean, comp = (torch.as_tensor(np.asarray(a, np.float32), device=self.device) for a in pca)
            self.pca = (mean, comp)  # C, C×D

    @property
    def dim(self) -> int:
        return int(self.pca[1].shape[1]) if self.pca is not None else self.extractor.dim

    @property
    def cell_stride(self) -> int:
        """Resized-image pixels per stored cell."""
        return self.extractor.stride * self.pool

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        if not self.max_side:
            return h, w
        s = self.max_side / max(h, w)
        return max(1, round(h * s)), max(1, round(w * s))

    def onnx_trunk(self) -> OnnxTrunk:
        """The ONNX Runtime session of the backbone (exported on first use, once, whichever thread asks)."""
        with self._lock:
            if self._onnx is None:
                self._onnx = OnnxTrunk(self.extractor, threads=self.onnx_threads)
            elif self.onnx_threads and self._onnx.threads != self.onnx_threads:  # re-threaded: same graph
                self._onnx = self._onnx.with_threads(self.onnx_threads)
            return self._onnx

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float in [0, 1] (already resized) -> B×D×h×w float32 region grid."""
        x = x.to(self.device)
        if self.runtime == "onnxruntime":
            f = self.onnx_trunk()(x)  # B×C×h'×w' float32
        else:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = self.extractor(x).float().contiguous()  # B×C×h'×w'
        if self.pool > 1:
            f = F.avg_pool2d(f, self.pool, self.pool, ceil_mode=True)  # B×C×h×w
        if self.pca is not None:
            mean, comp = self.pca
            f = torch.einsum("bchw,cd->bdhw", f - mean.view(1, -1, 1, 1), comp)  # B×D×h×w
        return f

    def encode_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None, *,
                     half: bool = False) -> list[FeatureMap]:
        """uint8 H×W×3 images (any sizes) -> one FeatureMap each (D×h×w, float32 or with ``half`` float16 as
        stored; strides in original pixels).

        Images of the same (resized) size go through the backbone together, ``batch_size`` at a time; no padding,
        so an image's features never depend on its batch-mates.
        """
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(images))]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected a uint8 image of shape [H, W, 3], got {list(img.shape)}")
            groups[img.shape[:2]].append(i)
        out: list[FeatureMap | None] = [None] * len(images)
        for (h, w), members in groups.items():
            nh, nw = self.resized_shape(h, w)
            sy, sx = self.cell_stride * h / nh, self.cell_stride * w / nw
            for j in range(0, len(members), self.batch_size):
                chunk = members[j:j + self.batch_size]
                x = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device)  # B×H×W×3 uint8
                x = x.permute(0, 3, 1, 2).float().div_(255)  # B×3×H×W
                if (nh, nw) != (h, w):
                    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
                f = self.forward(x)
                f = (f.half() if half else f).cpu().numpy()  # B×D×h×w (fp16 cast on the device: fast, less copy)
                for i, fm in zip(chunk, f):
                    out[i] = FeatureMap(ids[i], fm, sy, sx)
        return out  # type: ignore[return-value]

    def encode(self, image: np.ndarray, image_id: str = "") -> FeatureMap:
        """One image -> its FeatureMap (see :meth:`encode_batch`)."""
        return self.encode_batch([image], [image_id])[0]


# ------------------------------------------------------------------------------------------------ building
def store_name(spec: str) -> str:
    """Default feature-store name of a backbone spec: ``"resnet18:/x.pt"`` -> ``resnet18``,
    ``"torchscript:/m/foo.pt"`` -> ``torchscript-foo``."""
    base, path = parse_spec(spec)
    if base == "torchscript" and path:
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in os.path.splitext(os.path.basename(path))[0])
        return f"torchscript-{stem}"
    return base


def _backbone(ws: Workspace, spec: str, checkpoint: str | None, cfg: dict[str, Any]) -> FeatureExtractor:
    return get_backbone(spec, workspace=ws, **({"checkpoint": checkpoint} if checkpoint else {}), **cfg)


def fit_pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """N×C vectors -> (mean C, components C×dim), the top principal axes, signs fixed (largest |entry| > 0)."""
    if dim > x.shape[1]:
        raise UserError(f"pca_dim={dim} exceeds the backbone's {x.shape[1]} channels")
    x = x.astype(np.float64)
    mean = x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(x - mean, rowvar=False))  # ascending
    comp = vecs[:, ::-1][:, :dim]  # C×dim
    comp *= np.sign(comp[np.abs(comp).argmax(0), np.arange(dim)])
    return mean.astype(np.float32), comp.astype(np.float32)


def _save_pca(ws: Workspace, rel: str, mean: np.ndarray, comp: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, mean=mean, components=comp)
    ws.write_bytes(rel, buf.getvalue())


def _load_pca(ws: Workspace, rel: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(ws.read_bytes(rel)), allow_pickle=False) as z:
        return z["mean"], z["components"]


def load_region_encoder(ws: Workspace | str, model: str, *, device: str | None = None,
                        batch_size: int = 16) -> RegionEncoder:
    """The exact encoder that produced ``features/<model>/`` (backbone, weights, pooling, PCA, max_side).

    Raises
    ------
    WorkspaceError
        No features for ``model``, or the backbone's weights changed since (``weights_id`` differs).
    """
    ws = Workspace(ws) if isinstance(ws, (str, os.PathLike)) else ws
    meta = feature_meta(ws, model)
    ext = _backbone(ws, meta["backbone"], meta.get("checkpoint"), meta.get("backbone_cfg") or {})
    if ext.weights_id != meta["weights_id"]:
        raise WorkspaceError(f"features/{model} were made with backbone weights {meta['weights_id']}, but "
                             f"{meta['backbone']} now loads {ext.weights_id}; re-embed into a new store")
    pca = _load_pca(ws, meta["pca"]) if meta.get("pca") else None
    return RegionEncoder(ext, pool=meta["pool"], pca=pca, max_side=meta.get("max_side"), device=device,
                         batch_size=batch_size)


__all__ = ["CELL_STRIDE", "RegionEncoder", "fit_pca", "load_region_encoder", "store_name"]
