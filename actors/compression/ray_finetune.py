"""Ray Train wrapper: a pruned network's fine-tuning in the detector training loop, inside a ``TorchTrainer``.

:func:`finetune_on_ray` is :func:`actors.compression.finetune.finetune` on Ray Train: the pruned network becomes
an end-to-end :class:`~actors.compression.detector.CompressedDetector` and goes through
:func:`actors.detection.ray_train.train_on_ray` with ``warm_start=True``. Each worker rebuilds the *pruned*
architecture from its weights (:func:`~actors.compression.detector.build_end_to_end`; the registry would build the
unpruned one), and the teacher for distillation from the teacher's weights. Rank 0 writes the checkpoint to the
workspace after every epoch; calling again with the same ``ckpt`` and the same pruned start resumes after the last
finished epoch (the checkpoint records a fingerprint of the starting weights and refuses another start).

Why Ray and local fine-tuning gave different weights (only ~16% of the elements agreed): not seeding, data order
or threads (the loop seeds shuffling/flips per epoch from ``cfg.seed`` on both sides and the test ran locally with
one thread, as the worker). The worker rebuilds the *unfolded* pruned network from its spec
(:func:`~actors.compression.net.build_net`), and the rebuild replaced every narrowed timm ``BatchNormAct2d`` by a
plain ``BatchNorm2d``, silently dropping its ReLU6: the worker trained another function. Fixed in
``actors.compression.net._narrow`` (BN layers are narrowed in place); ``tests/actors/compression/test_export.py``
checks that an unfolded pruned network rebuilds with equal outputs. Since the fix, a Ray fine-tune that resumes a
local checkpoint ends at the uninterrupted local run's weights (measured: all but 0.0003% of the elements within 1e-5,
max 1.02e-5; ``tests/actors/compression/test_finetune.py`` asserts 1e-4).
"""

from __future__ import annotations

import functools
from typing import Any

import torch.nn as nn

from actors.compression.finetune import FinetuneConfig, Split, detection_data


def finetune_on_ray(ws: Any, net: nn.Module, source: Any, data: Split, ckpt: str, cfg: FinetuneConfig | None = None,
                    *, teacher: nn.Module | None = None, num_workers: int = 1, use_gpu: bool = False,
                    storage_path: str | None = None) -> dict[str, Any]:
    """Fine-tune ``net`` (made from detector ``source``) in place on Ray Train; returns {"epochs", "metrics",
    "loop"}. ``ckpt`` is workspace-relative. Needs a running Ray (``actors.core.runtime.init_ray``)."""
    from actors.compression.detector import build_end_to_end, from_net
    from actors.compression.net import net_spec
    from actors.detection.ray_train import train_on_ray
    from actors.detection.train import read_checkpoint

    cfg = cfg or FinetuneConfig()
    dd = detection_data(data)
    if not len(dd) or cfg.epochs <= 0:
        return {"epochs": 0, "metrics": {}, "loop": "none"}
    distill = cfg.distill if teacher is not None else 0.0
    det = from_net(net, source, end_to_end=True, teacher=teacher, distill=distill)
    build = functools.partial(
        build_end_to_end, net_spec(net, source, folded=False),
        net_spec(teacher, source, folded=False) if teacher is not None else None,
        {k: v.detach().cpu() for k, v in teacher.state_dict().items()} if teacher is not None else None, distill)
    metrics = train_on_ray(ws, det, dd, cfg.train_config(), ckpt, num_workers=num_workers, use_gpu=use_gpu,
                           storage_path=storage_path, warm_start=True, build=build)
    net.eval().requires_grad_(False)
    return {"epochs": int(read_checkpoint(ws, ckpt)["epoch"]) + 1, "metrics": metrics,
            "loop": "actors.detection.ray_train.train_on_ray (TorchTrainer)"}


__all__ = ["finetune_on_ray"]
