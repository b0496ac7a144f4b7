"""Fine-tuning a pruned network goes through the detector training loop (warm start: the pruned weights are the
start, nothing re-initialised), checkpoints every epoch, resumes after a kill, and runs the same on Ray Train."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from actors.compression.finetune import FinetuneConfig, Split, finetune
from actors.compression.latency import build_lut, macs_timer
from actors.compression.net import final_layers, tensor_module
from actors.detection.train import read_checkpoint


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def pruned():
    from actors.compression.prune import latency_aware_prune
    from actors.detection.models import get_detector

    torch.manual_seed(0)
    det = get_detector("dense-lite0", ["a", "b"], random_init=True, width=16)
    base = tensor_module(det)
    net = copy.deepcopy(base)
    x = torch.rand(1, 3, 48, 64)
    lut = build_lut(net, (48, 64), fractions=(0.25, 0.5, 1.0), timer=macs_timer)
    latency_aware_prune(net, x, lut, 0.5, ignored=final_layers(net), importance="magnitude")
    return det, base, net


def _split(n=3):
    g = np.random.default_rng(0)
    boxes = [np.array([[8.0, 8.0, 30.0, 28.0]], np.float32) + g.uniform(0, 10) for _ in range(n)]
    return Split([f"i{i}" for i in range(n)], [torch.rand(1, 3, 48, 64) for _ in range(n)], boxes,
                 [np.array([i % 2]) for i in range(n)])


def _same(a, b, atol):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol) for k in sa)


def test_finetune_starts_from_the_pruned_weights_and_resumes(pruned, workspace):
    det, base, net = pruned
    data = _split(2)
    still = copy.deepcopy(net)
    rep = finetune(still, data, FinetuneConfig(epochs=1, lr=1e-9, warmup=0.0, batch_size=2), teacher=base, source=det)
    assert rep["loop"] == "actors.detection.train.train_detector" and rep["epochs"] == 1
    assert _same(still, net, 1e-5)  # lr ~ 0: the pruned weights were the start (a reset would change them)
    cfg = FinetuneConfig(epochs=2, lr=1e-3, batch_size=2)
    full = copy.deepcopy(net)
    finetune(full, data, cfg, teacher=base, source=det, ws=workspace, ckpt="ft/a.pt")
    assert not _same(full, net, 1e-6)

    def kill(epoch, step):
        if (epoch, step) == (1, 0):
            raise Killed()

    with pytest.raises(Killed):
        finetune(copy.deepcopy(net), data, cfg, teacher=base, source=det, ws=workspace, ckpt="ft/b.pt",
                 progress=kill)
    assert read_checkpoint(workspace, "ft/b.pt")["epoch"] == 0
    again = copy.deepcopy(net)
    rep = finetune(again, data, cfg, teacher=base, source=det, ws=workspace, ckpt="ft/b.pt")
    assert rep["resumed_from"] == 1
    assert _same(again, full, 1e-5)


def test_head_only_finetune_trains_the_head_on_cached_maps_and_flips_boxes_in_pixels(pruned):
    from actors.compression.detector import from_net
    from actors.detection.train import _batch, DetectionData

    det, base, net = pruned
    tuned = copy.deepcopy(net)
    rep = finetune(tuned, _split(3), FinetuneConfig(epochs=2, lr=1e-2, batch_size=2, head_only=True), source=det)
    assert rep["epochs"] == 2
    assert _same(tuned.trunk, net.trunk, 0)  # the trunk is frozen: its maps were cached
    assert not _same(tuned.head, net.head, 1e-6)
    cached = from_net(copy.deepcopy(net), det, end_to_end=False)
    maps = cached.inputs(torch.rand(1, 3, 48, 64))  # stride 8: 6×8 cells for a 64-px-wide image
    data = DetectionData(maps, [torch.tensor([[8.0, 8.0, 30.0, 28.0]])], [torch.tensor([0])], [(64, 48)], ["i"])
    _, boxes, _ = _batch(cached, data, torch.tensor([0]), torch.tensor([True]))
    assert boxes[0].tolist() == [[34.0, 8.0, 56.0, 28.0]]  # mirrored in the 64-px image, not in the 8-cell map


@pytest.mark.slow
def test_finetune_on_ray_train_resumes_the_local_checkpoint_to_the_same_weights(pruned, workspace, ray_cluster):
    from actors.compression.ray_finetune import finetune_on_ray

    det, base, net = pruned
    data, cfg = _split(), FinetuneConfig(epochs=2, lr=1e-3, batch_size=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 1-CPU Ray worker: the same reductions, the same floats
    try:
        full = copy.deepcopy(net)
        finetune(full, data, cfg, teacher=base, source=det)
    finally:
        torch.set_num_threads(threads)

    def kill(epoch, step):
        if (epoch, step) == (1, 0):
            raise Killed()

    with pytest.raises(Killed):  # epoch 0 done locally, then killed
        finetune(copy.deepcopy(net), data, cfg, teacher=base, source=det, ws=workspace, ckpt="ft/r.pt",
                 progress=kill)
    remote = copy.deepcopy(net)  # the TorchTrainer worker rebuilds the pruned architecture and resumes epoch 1
    rep = finetune_on_ray(workspace, remote, det, data, "ft/r.pt", cfg, teacher=base)
    assert rep["epochs"] == 2 and "TorchTrainer" in rep["loop"]
    # the worker rebuilt the pruned architecture, resumed the local checkpoint (epoch 1 only) and trained it to the
    # uninterrupted local run's weights (measured: all but 0.0003% of elements within 1e-5, max 1.02e-5; before the
    # BatchNormAct2d rebuild fix only ~16% agreed)
    assert _same(remote, full, 1e-4)
    a, b, s = full.state_dict(), remote.state_dict(), net.state_dict()
    assert {k: v.shape for k, v in b.items()} == {k: v.shape for k, v in s.items()}
    moved = sum(int(((b[k] - s[k]).abs() > 1e-5).sum()) for k in b) / sum(b[k].numel() for k in b)
    assert moved > 0.5 and read_checkpoint(workspace, "ft/r.pt")["config"]["init"]
