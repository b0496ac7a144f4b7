"""Detection inputs from the workspace: images and labels of the catalog, and the cached trunk features.

A cached detector's frozen trunk runs once per image (and once per mirrored image, for the flip-robustness score);
the maps are kept as fp16 tensors in ``features/detection-<backbone>-<weights id>/<image_id>[.flip].pt`` and read
back with ``torch.load(weights_only=True)``. An end-to-end detector gets the images themselves.
"""

from __future__ import annotations

import io
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from actors.core.workspace import Workspace
from actors.detection.models import Detector
from actors.detection.train import DetectionData, Inputs, as_inputs

Boxes = Mapping[str, tuple[np.ndarray, np.ndarray]]  # image_id -> (boxes n×4, label indices n)


def catalog_rows(ws: Workspace, splits: Sequence[str] | None = None) -> dict[str, dict]:
    """image_id -> catalog row (uri, width, height, split) of readable images, optionally only ``splits``."""
    from actors.catalog.schema import load_images

    rows = load_images(ws, status=None).to_pylist()
    return {r["image_id"]: r for r in rows if r["status"] != "error" and (splits is None or r["split"] in splits)}


def labels_by_image(ws: Workspace, ids: Iterable[str], classes: Sequence[str],
                    sources: Sequence[str] = ("human", "world", "coco")) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Boxes and class indices per image from ``catalog/labels.parquet`` (rows whose source is in ``sources``,
    status ok, category in ``classes``); every id of ``ids`` gets an entry (empty when unlabeled)."""
    from actors.catalog.schema import load_labels

    wanted, index = set(ids), {c: i for i, c in enumerate(classes)}
    acc: dict[str, list] = {i: [] for i in wanted}
    for r in load_labels(ws).to_pylist():
        src = r.get("source") or "human"
        if r["image_id"] in wanted and r["category"] in index and _source_ok(src, sources):
            acc[r["image_id"]].append(([r["x0"], r["y0"], r["x1"], r["y1"]], index[r["category"]]))
    return {i: (np.array([b for b, _ in v], np.float32).reshape(-1, 4), np.array([c for _, c in v], np.int64))
            for i, v in acc.items()}


def _source_ok(src: str, sources: Sequence[str]) -> bool:
    return src in sources or ("human" in sources and src != "pseudo")


class FeatureCache:
    """Trunk maps of a cached detector, computed once per (image, mirrored) and stored in the workspace."""

    def __init__(self, ws: Workspace, det: Detector) -> None:
        self.ws, self.det = ws, det
        key = f"{det.config['backbone']}{'-fused' if det.config.get('fuse') else ''}-{det.config['weights_id']}"
        self.dir = "features/detection-" + key.replace(":", "_").replace("/", "_")
        self.memo: dict[tuple[str, bool], torch.Tensor] = {}
        self._onnx = None  # the trunk under ONNX Runtime, exported on first use (see _onnx_trunk)

    def _rel(self, image_id: str, mirrored: bool) -> str:
        return f"{self.dir}/{image_id}{'.flip' if mirrored else ''}.pt"

    def get(self, rows: Sequence[dict], mirrored: bool = False, batch_size: int = 8) -> Inputs:
        """fp16 maps of ``rows`` (catalog rows) as :class:`DetectionData` inputs: N×C×h×w when the images share a
        size, else a list of C×h×w (see :meth:`maps`)."""
        return as_inputs(self.maps(rows, mirrored, batch_size))

    def maps(self, rows: Sequence[dict], mirrored: bool = False, batch_size: int = 8) -> list[torch.Tensor]:
        """One C×h×w fp16 map per row of ``rows`` (catalog rows), computing and storing the missing ones."""
        from actors.core.images import load_image

        missing = [r for r in rows if (r["image_id"], mirrored) not in self.memo]
        todo = []
        for r in missing:
            rel = self._rel(r["image_id"], mirrored)
            if self.ws.exists(rel):
                self.memo[(r["image_id"], mirrored)] = torch.load(io.BytesIO(self.ws.read_bytes(rel)),
                                                                  weights_only=True)
            else:
                todo.append(r)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for r, f in zip(chunk, self._trunk([load_image(r["uri"]) for r in chunk], mirrored)):
                f = f.clone()
                buf = io.BytesIO()
                torch.save(f, buf)
                self.ws.write_bytes(self._rel(r["image_id"], mirrored), buf.getvalue())
                self.memo[(r["image_id"], mirrored)] = f
        return [self.memo[(r["image_id"], mirrored)] for r in rows]

    def _trunk(self, images: list[np.ndarray], mirrored: bool) -> list[torch.Tensor]:
        out = []
        same = len({im.shape for im in images}) == 1
        groups = [images] if same else [[im] for im in images]
        dev = next(self.det.parameters()).device  # the trunk runs where the detector lives (GPU actors)
        onnx = self._onnx_trunk(dev)
        for g in groups:
            x = torch.from_numpy(np.stack(g)).permute(0, 3, 1, 2).float() / 255.0  # B×3×H×W in [0, 1]
            if mirrored:
                x = x.flip(-1)
            out += list(onnx(x).to(torch.float16) if onnx is not None else self.det.inputs(x.to(dev)).cpu())
        return out

    def _onnx_trunk(self, dev: torch.device):
        """The frozen trunk under ONNX Runtime where :func:`~actors.features.onnx_trunk.trunk_runtime` picks it
        (the Lite0 trunks on CPU: ~4× faster than PyTorch; maps agree to ~1e-4, below their fp16 storage), else
        None (the detector's own ``inputs``)."""
        from actors.features.onnx_trunk import OnnxTrunk, trunk_runtime

        trunk = getattr(self.det, "trunk", None)
        if trunk is None or trunk_runtime(str(self.det.config.get("backbone", "")), dev.type) != "onnxruntime":
            return None
        if self._onnx is None:
            self._onnx = OnnxTrunk(trunk)
        return self._onnx


def images_tensor(rows: Sequence[dict], mirrored: bool = False) -> Inputs:
    """Float images in [0, 1], an end-to-end detector's inputs: B×3×H×W when they share a size, else a list of
    3×H×W."""
    from actors.core.images import load_image

    xs = [torch.from_numpy(load_image(r["uri"])).permute(2, 0, 1).float() / 255.0 for r in rows]  # 3×H×W each
    return as_inputs([x.flip(-1) if mirrored else x for x in xs])


def build_data(det: Detector, rows: Sequence[dict], labels: Boxes | None = None, *,
               cache: FeatureCache | None = None, mirrored: bool = False) -> DetectionData:
    """DetectionData for catalog ``rows`` (labels optional: inference only)."""
    if det.cached:
        if cache is None:
            raise ValueError("a cached detector needs a FeatureCache")
        x = cache.get(rows, mirrored)
    else:
        x = images_tensor(rows, mirrored)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    lab = [labels.get(r["image_id"], empty) if labels is not None else empty for r in rows]
    return DetectionData(inputs=x, boxes=[torch.from_numpy(np.asarray(b, np.float32)) for b, _ in lab],
                         labels=[torch.from_numpy(np.asarray(c, np.int64)) for _, c in lab],
                         sizes=[(int(r["width"]), int(r["height"])) for r in rows],
                         ids=[r["image_id"] for r in rows])


__all__ = ["FeatureCache", "build_data", "catalog_rows", "labels_by_image", "images_tensor"]
