"""Ray Train wrapper: the detector training loop of :mod:`actors.detection.train` in a ``TorchTrainer``.

Same code on a laptop and a cluster: ``num_workers=1`` CPU worker here, N GPU workers there
(``use_gpu=True``). The driver saves the training inputs once to the workspace (``<ckpt>.data.pt``); every worker
reads them through the workspace URI (never the driver's disk), trains its shard of each batch under DDP when
``num_workers > 1`` (via ``ray.train.torch.prepare_model``), and rank 0 writes the per-epoch checkpoint to the
workspace and reports ``{"epoch", "loss"}`` to Ray Train. Resume after a kill: run it again; the loop continues
from the workspace checkpoint.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import torch

from actors.core.workspace import Workspace
from actors.detection.models import Detector
from actors.detection.train import DetectionData, TrainConfig


def _save_data(ws: Workspace, rel: str, data: DetectionData) -> None:
    buf = io.BytesIO()
    torch.save({"inputs": data.inputs, "boxes": data.boxes, "labels": data.labels,
                "sizes": [list(s) for s in data.sizes], "ids": list(data.ids)}, buf)
    ws.write_bytes(rel, buf.getvalue())


def _load_data(ws: Workspace, rel: str) -> DetectionData:
    d = torch.load(io.BytesIO(ws.read_bytes(rel)), map_location="cpu", weights_only=True)
    return DetectionData(d["inputs"], d["boxes"], d["labels"], [tuple(s) for s in d["sizes"]], d["ids"])


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    from actors.detection.models import get_detector
    from actors.detection.train import train_detector

    ws = Workspace(config["workspace"])
    data = _load_data(ws, config["data"])
    det = get_detector(config["detector"], config["classes"], **config["detector_cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world > 1:  # each worker trains on its shard; gradients are averaged by DDP
        keep = list(range(rank, len(data), world))
        data = DetectionData(data.inputs[keep], [data.boxes[i] for i in keep], [data.labels[i] for i in keep],
                             [data.sizes[i] for i in keep], [data.ids[i] for i in keep])
        target = det.head if det.cached else det.model
        wrapped = ray.train.torch.prepare_model(target, move_to_device=True)
        if det.cached:
            det.head = wrapped
        else:
            det.model = wrapped
    train_detector(det, data, TrainConfig(**config["train"]), ws=ws if rank == 0 else None,
                   ckpt=config["ckpt"] if rank == 0 else None,
                   on_epoch=lambda e, loss: ray.train.report({"epoch": e, "loss": loss}))


def train_on_ray(ws: Workspace, det: Detector, data: DetectionData, cfg: TrainConfig, ckpt: str, *,
                 detector_cfg: dict[str, Any] | None = None, num_workers: int = 1, use_gpu: bool = False,
                 storage_path: str | None = None) -> dict[str, Any]:
    """Train ``det``'s registry twin on ``data`` with Ray Train; returns the last reported metrics.

    ``det`` is rebuilt on each worker from ``det.config`` (plus ``detector_cfg``); after training its weights are
    loaded back from the checkpoint. Needs a running Ray (``actors.core.runtime.init_ray``).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.detection.train import read_checkpoint

    _save_data(ws, ckpt + ".data.pt", data)
    dcfg = dict(detector_cfg or {"backbone": det.config["backbone"]})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"workspace": ws.uri, "data": ckpt + ".data.pt", "ckpt": ckpt, "classes": list(det.classes),
                           "detector": det.config["name"], "detector_cfg": dcfg, "train": asdict(cfg)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage_path or str(ws.local_path("runs/_ray")), name="detector"))
    result = trainer.fit()
    det.load_trainable_state(read_checkpoint(ws, ckpt)["model"])
    ws.delete(ckpt + ".data.pt")
    return dict(result.metrics or {})


__all__ = ["train_on_ray"]
