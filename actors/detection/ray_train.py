"""Ray Train wrapper: the detector training loop of :mod:`actors.detection.train` in a ``TorchTrainer``.

Same code on a laptop and a cluster: ``num_workers=1`` CPU worker here, N GPU workers there
(``use_gpu=True``). The driver saves the training inputs once to the workspace (``<ckpt>.data.pt``); every worker
reads them through the workspace URI (never the driver's disk), trains its shard of each batch under DDP when
``num_workers > 1`` (via ``ray.train.torch.prepare_model``), and rank 0 writes the per-epoch checkpoint to the
workspace and reports ``{"epoch", "loss"}`` to Ray Train. Resume after a kill: run it again; the loop continues
from the workspace checkpoint.

Warm start (``warm_start=True``): the driver also saves ``det``'s trainable weights to the workspace
(``<ckpt>.init.pt``); each worker builds the architecture (the registry twin, or ``build(init_state)`` for one the
registry cannot build, e.g. a pruned model with narrower layers), loads those weights and trains from them
(:func:`actors.detection.train.train_detector` with ``warm_start=True``) — nothing re-initialised.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any, Callable

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


def _save_state(ws: Workspace, rel: str, state: dict[str, torch.Tensor]) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    ws.write_bytes(rel, buf.getvalue())


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    from actors.detection.models import get_detector
    from actors.detection.train import train_detector

    ws = Workspace(config["workspace"])
    data = _load_data(ws, config["data"])
    init = None
    if config.get("init"):
        init = torch.load(io.BytesIO(ws.read_bytes(config["init"])), map_location="cpu", weights_only=True)
    build = config.get("build")
    det = build(init) if build is not None else \
        get_detector(config["detector"], config["classes"], **config["detector_cfg"])
    if init is not None:
        det.load_trainable_state(init)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world > 1:  # each worker trains on its shard; gradients are averaged by DDP
        keep = list(range(rank, len(data), world))
        data = data.subset(keep)
        target = det.head if det.cached else det.model
        wrapped = ray.train.torch.prepare_model(target, move_to_device=True)
        if det.cached:
            det.head = wrapped
        else:
            det.model = wrapped
    train_detector(det, data, TrainConfig(**config["train"]), ws=ws if rank == 0 else None,
                   ckpt=config["ckpt"] if rank == 0 else None,
                   on_epoch=lambda e, loss: ray.train.report({"epoch": e, "loss": loss}),
                   warm_start=init is not None)


def train_on_ray(ws: Workspace, det: Detector, data: DetectionData, cfg: TrainConfig, ckpt: str, *,
                 detector_cfg: dict[str, Any] | None = None, num_workers: int = 1, use_gpu: bool = False,
                 storage_path: str | None = None, warm_start: bool = False,
                 build: Callable[[dict[str, torch.Tensor] | None], Detector] | None = None) -> dict[str, Any]:
    """Train ``det``'s registry twin on ``data`` with Ray Train; returns the last reported metrics.

    ``det`` is rebuilt on each worker from ``det.config`` (plus ``detector_cfg``), or by ``build(init_state)`` (a
    picklable module-level callable) when given; ``warm_start=True`` starts from ``det``'s current weights (see the
    module doc). After training ``det``'s weights are loaded back from the checkpoint; re-running with the same
    ``ckpt`` resumes after the last finished epoch. Needs a running Ray (``actors.core.runtime.init_ray``).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.detection.train import read_checkpoint

    _save_data(ws, ckpt + ".data.pt", data)
    init = None
    if warm_start:
        init = ckpt + ".init.pt"  # a resume must pass the same starting weights (the checkpoint checks them)
        _save_state(ws, init, det.trainable_state())
    dcfg = dict(detector_cfg or {"backbone": det.config.get("backbone")})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"workspace": ws.uri, "data": ckpt + ".data.pt", "ckpt": ckpt, "classes": list(det.classes),
                           "detector": det.config.get("name"), "detector_cfg": dcfg, "train": asdict(cfg),
                           "init": init, "build": build},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage_path or str(ws.local_path("runs/_ray")), name="detector"))
    result = trainer.fit()
    det.load_trainable_state(read_checkpoint(ws, ckpt)["model"])
    ws.delete(ckpt + ".data.pt")
    if init is not None:
        ws.delete(init)
    return dict(result.metrics or {})


__all__ = ["train_on_ray"]
