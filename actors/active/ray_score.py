"""Ray Data stage: score the unlabeled pool with a trained detector (batched, GPU when present).

``ray.data.from_items(catalog rows) -> map_batches(ScoreActor, ActorPoolStrategy)``: each actor loads the detector
once from its workspace checkpoint (``torch.load(weights_only=True)``), and for every batch of pool images predicts
on the image and on its horizontal mirror (a cached detector's trunk maps come from, or go to, the workspace's
feature cache through its URI, never the driver's disk), maps the mirror's boxes back (:func:`scores.unflip`) and
computes the per-image uncertainty and flip inconsistency with the kernels of :mod:`actors.active.scores`. This
module holds no math: it moves batches, devices and predictions; the same predictions scored in-process give the
same numbers (``tests/actors/active/test_ray_score.py``).

Devices and sizes come from :class:`actors.core.runtime.Resources` (one actor per GPU with batch 64, else one per
core with batch 16; ``ASSAY_POOL_SIZE`` / ``ASSAY_NUM_GPUS`` / ``ASSAY_BATCH_SIZE`` override).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from actors.active.scores import Detections, inconsistency_scores, uncertainty_scores, unflip
from actors.core.runtime import Resources, init_ray
from actors.core.workspace import Workspace

_KEYS = ("boxes", "scores", "labels", "probs")


def _encode(p: dict[str, np.ndarray]) -> str:
    return json.dumps({k: np.asarray(p[k]).tolist() for k in _KEYS})


def _decode(s: str, k: int) -> dict[str, np.ndarray]:
    d = json.loads(s)
    return {"boxes": np.asarray(d["boxes"], np.float32).reshape(-1, 4), "scores": np.asarray(d["scores"], np.float32),
            "labels": np.asarray(d["labels"], np.int64), "probs": np.asarray(d["probs"], np.float32).reshape(-1, k)}


class ScoreActor:
    """Ray Data callable class: the detector of ``checkpoint`` (workspace-relative) on ``device``; a batch of
    catalog rows (JSON strings in column ``row``) -> image_id, uncertainty, inconsistency, predictions (JSON)."""

    def __init__(self, workspace: str, checkpoint: str, device: str | None = None, flip: bool = True,
                 threads: int | None = None, uncertainty: dict | None = None,
                 inconsistency: dict | None = None) -> None:
        import torch

        from actors.core.runtime import device as auto_device
        from actors.detection.data import FeatureCache
        from actors.detection.train import load_detector

        if threads:
            torch.set_num_threads(threads)
        self.ws = Workspace(workspace)
        self.device = device or auto_device()
        self.det = load_detector(self.ws, checkpoint).to(self.device)
        self.cache = FeatureCache(self.ws, self.det) if self.det.cached else None
        self.flip = flip
        self.ukw, self.ikw = dict(uncertainty or {}), dict(inconsistency or {})

    def _predict(self, rows: list[dict], mirrored: bool) -> dict[str, tuple[Detections, np.ndarray]]:
        import torch

        from actors.detection.data import build_data

        from actors.detection.train import shape_batches

        data = build_data(self.det, rows, cache=self.cache, mirrored=mirrored)
        outs: list[dict] = [{}] * len(rows)
        with torch.no_grad():
            for idx in shape_batches(data.shapes(), range(len(data)), len(data)):  # one call per image size
                for i, o in zip(idx, self.det.predict(data.take(idx).to(self.device), [data.sizes[i] for i in idx])):
                    outs[i] = o
        res = {}
        for r, o in zip(rows, outs):
            d = Detections(*(o[k].detach().cpu().numpy() for k in ("boxes", "scores", "probs")))
            res[r["image_id"]] = (unflip(d, r["width"]) if mirrored else d, o["labels"].detach().cpu().numpy())
        return res

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [json.loads(s) for s in batch["row"]]
        ids = [r["image_id"] for r in rows]
        pl = self._predict(rows, False)
        fl = self._predict(rows, True) if self.flip else {}
        preds, flipped = {i: d for i, (d, _) in pl.items()}, {i: d for i, (d, _) in fl.items()}
        u = uncertainty_scores(preds, ids, **self.ukw)
        r = inconsistency_scores(preds, flipped, ids, **self.ikw) if self.flip else np.zeros(len(ids))
        enc = lambda dl: _encode({"boxes": dl[0].boxes, "scores": dl[0].scores, "labels": dl[1],  # noqa: E731
                                  "probs": dl[0].probs})
        return {"image_id": np.array(ids, object), "uncertainty": u, "inconsistency": r,
                "preds": np.array([enc(pl[i]) for i in ids], object),
                "flipped": np.array([enc(fl[i]) if self.flip else "" for i in ids], object)}


@dataclass
class PoolScores:
    """What :func:`score_pool_on_ray` returns, in the order of the rows given: ``ids``, per-image ``uncertainty``
    and ``inconsistency`` (0 without ``flip``), and the predictions on each image and on its flip (original frame)
    as ``predict`` returns them (numpy boxes, scores, labels, probs)."""

    ids: list[str]
    uncertainty: np.ndarray
    inconsistency: np.ndarray
    preds: dict[str, dict[str, np.ndarray]]
    flipped: dict[str, dict[str, np.ndarray]]


def score_pool_on_ray(ws: Workspace, checkpoint: str, rows: Sequence[dict[str, Any]], num_classes: int, *,
                      flip: bool = True, resources: Resources | None = None, device: str | None = None,
                      threads: int | None = None) -> PoolScores:
    """Predict and score the catalog ``rows`` (pool images) with the detector of ``checkpoint`` on Ray Data.

    ``resources`` default :meth:`Resources.auto` (GPU actors when the cluster has GPUs). Every row comes back once;
    a missing one raises RuntimeError (nothing is dropped silently).
    """
    import ray

    init_ray()
    rows = list(rows)
    if not rows:
        return PoolScores([], np.zeros(0), np.zeros(0), {}, {})
    res = resources or Resources.auto()
    items = [{"row": json.dumps({k: r[k] for k in ("image_id", "uri", "width", "height")})} for r in rows]
    blocks = max(1, len(items) // max(1, res.batch_size))
    ds = (ray.data.from_items(items, override_num_blocks=blocks)  # no more actors than blocks: an idle one only starts
          .map_batches(ScoreActor, compute=ray.data.ActorPoolStrategy(size=min(res.pool_size, blocks)),
                       batch_size=res.batch_size,
                       num_gpus=res.num_gpus, num_cpus=res.num_cpus,
                       fn_constructor_kwargs={"workspace": ws.uri, "checkpoint": checkpoint, "flip": flip,
                                              "device": device or ("cuda" if res.num_gpus > 0 else "cpu"),
                                              "threads": threads}))
    got: dict[str, tuple[float, float, str, str]] = {}
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, u, c, p, f in zip(b["image_id"], b["uncertainty"], b["inconsistency"], b["preds"], b["flipped"]):
            got[str(i)] = (float(u), float(c), str(p), str(f))
    ids = [r["image_id"] for r in rows]
    missing = [i for i in ids if i not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} pool images never came back from the scoring stage (e.g. {missing[0]})")
    return PoolScores(ids, np.array([got[i][0] for i in ids]), np.array([got[i][1] for i in ids]),
                      {i: _decode(got[i][2], num_classes) for i in ids},
                      {i: _decode(got[i][3], num_classes) for i in ids} if flip else {})


__all__ = ["ScoreActor", "PoolScores", "score_pool_on_ray"]
