"""Training: a run killed mid-epoch resumes from its checkpoint to the same result as an uninterrupted one;
checkpoints load with weights_only=True; every registered detector builds, trains a step and predicts."""

from __future__ import annotations

import pytest
import torch

from actors.core.errors import UserError
from actors.detection.models import get_detector, list_detectors
from actors.detection.train import DetectionData, TrainConfig, load_detector, read_checkpoint, train_detector

CLASSES = ["circle", "star", "face"]


def _data(n=6, c=64, h=12, w=16, stride=8):
    g = torch.Generator().manual_seed(0)
    boxes, labels = [], []
    for _ in range(n):
        xy = torch.rand(2, 2, generator=g) * 80
        boxes.append(torch.cat([xy, xy + 16 + torch.rand(2, 2, generator=g) * 20], 1))
        labels.append(torch.randint(0, 3, (2,), generator=g))
    return DetectionData(torch.randn(n, c, h, w, generator=g).half(), boxes, labels, [(w * stride, h * stride)] * n,
                         [f"im{i}" for i in range(n)])


def _det():
    return get_detector("dense-lite0", CLASSES, backbone="assay-small", random_init=True, width=16, depth=1)


class Killed(Exception):
    pass


def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(workspace):
    data, cfg = _data(), TrainConfig(epochs=3, batch_size=2, lr=1e-2, seed=3)
    full = _det()
    train_detector(full, data, cfg, ws=workspace, ckpt="runs/a/model.pt")

    def kill(epoch, step):
        if (epoch, step) == (1, 2):
            raise Killed()

    first = _det()
    with pytest.raises(Killed):
        train_detector(first, data, cfg, ws=workspace, ckpt="runs/b/model.pt", on_step=kill)
    assert read_checkpoint(workspace, "runs/b/model.pt")["epoch"] == 0
    again = _det()  # a fresh process: new model object, state only from the checkpoint
    res = train_detector(again, data, cfg, ws=workspace, ckpt="runs/b/model.pt")
    assert res.resumed_from == 1 and res.epochs == 2
    a, b = full.trainable_state(), again.trainable_state()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    ck = read_checkpoint(workspace, "runs/b/model.pt")
    assert set(ck) >= {"model", "optimizer", "scheduler", "epoch", "config"} and ck["epoch"] == 2


def test_checkpoint_config_mismatch_and_corrupt_file(workspace):
    data = _data()
    train_detector(_det(), data, TrainConfig(epochs=1, batch_size=3), ws=workspace, ckpt="m.pt")
    with pytest.raises(UserError, match="another configuration"):
        train_detector(_det(), data, TrainConfig(epochs=1, batch_size=3, lr=0.5), ws=workspace, ckpt="m.pt")
    workspace.write_bytes("bad.pt", b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable detector checkpoint"):
        load_detector(workspace, "bad.pt")


@pytest.mark.parametrize("name", list_detectors())
def test_every_detector_trains_a_step_and_predicts(name):
    det = get_detector(name, CLASSES, backbone="assay-small", random_init=True, image_size=(128, 96))
    images = torch.rand(2, 3, 96, 128)
    x = det.inputs(images)
    boxes = [torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([[50.0, 20.0, 90.0, 70.0]])]
    labels = [torch.tensor([0]), torch.tensor([2])]
    det.train()
    loss = sum(det.loss(x, boxes, labels).values())
    loss.backward()
    assert torch.isfinite(loss)
    det.eval()
    out = det.predict(x, [(128, 96)] * 2)
    assert len(out) == 2
    for r in out:
        assert r["boxes"].shape[1] == 4 and r["probs"].shape[1] == len(CLASSES)
        assert torch.allclose(r["probs"].sum(1), torch.ones(len(r["probs"])), atol=1e-4)
