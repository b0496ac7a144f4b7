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
    state = {k: v.clone() for k, v in det.trainable_state().items()}
    det.reset(1)
    det.load_trainable_state(state)  # a checkpoint's weights come back whole
    assert all(torch.equal(v, det.trainable_state()[k]) for k, v in state.items())


def _shift(state, by=0.05):
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def test_warm_start_trains_from_the_given_weights_and_resumes(workspace):
    """warm_start=True keeps the given (here: non-default, narrower) weights as the start; a cold run resets them;
    a killed warm-started run resumes to the uninterrupted result, and other starting weights are refused."""
    from actors.detection.head import DenseHead

    data, cfg = _data(n=4), TrainConfig(epochs=1, batch_size=4, lr=1e-7, warmup=0.0, seed=3)
    base = _det()
    narrow = DenseHead(len(CLASSES), type(base.head.cfg)(**{**base.head.cfg.to_dict(), "width": 8}))
    base.head = narrow  # an architecture the registry does not build (like a pruned head)
    start = _shift(base.trainable_state())
    warm = _det()
    warm.head = DenseHead(len(CLASSES), narrow.cfg)
    warm.load_trainable_state(start)
    train_detector(warm, data, cfg, ws=workspace, ckpt="runs/w/model.pt", warm_start=True)
    got = warm.trainable_state()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in start.items()}  # not re-initialised
    assert all(torch.allclose(got[k].float(), start[k].float(), atol=1e-4) for k in got)  # lr ~ 0: stays put
    assert read_checkpoint(workspace, "runs/w/model.pt")["config"]["init"]
    cold = _det()
    cold.head = DenseHead(len(CLASSES), narrow.cfg)
    cold.load_trainable_state(start)
    train_detector(cold, data, cfg)  # no warm start: the head is re-drawn from the seed
    assert any(not torch.allclose(cold.trainable_state()[k].float(), start[k].float(), atol=1e-2) for k in start)

    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-2, seed=3)

    def fresh():
        d = _det()
        d.load_trainable_state(_shift(_det().trainable_state()))
        return d

    full = fresh()
    train_detector(full, data, cfg, ws=workspace, ckpt="runs/a/model.pt", warm_start=True)

    def kill(epoch, step):
        if (epoch, step) == (1, 0):
            raise Killed()

    with pytest.raises(Killed):
        train_detector(fresh(), data, cfg, ws=workspace, ckpt="runs/b/model.pt", on_step=kill, warm_start=True)
    again = fresh()
    res = train_detector(again, data, cfg, ws=workspace, ckpt="runs/b/model.pt", warm_start=True)
    assert res.resumed_from == 1
    a, b = full.trainable_state(), again.trainable_state()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    other = _det()
    other.load_trainable_state(_shift(_det().trainable_state(), 0.1))
    with pytest.raises(UserError, match="another configuration"):
        train_detector(other, data, cfg, ws=workspace, ckpt="runs/b/model.pt", warm_start=True)


def test_shape_batches_keep_one_shape_per_batch():
    from actors.detection.train import shape_batches

    shapes = [(1, 2), (1, 3), (1, 2), (1, 2), (1, 3), (1, 2)]
    assert shape_batches([(1, 2)] * 5, [4, 0, 3, 1, 2], 2) == [[4, 0], [3, 1], [2]]  # one shape: plain chunks
    got = shape_batches(shapes, range(6), 2)
    assert got == [[0, 2], [1, 4], [3, 5]] and all(len({shapes[i] for i in b}) == 1 for b in got)


def test_train_and_predict_on_maps_of_mixed_sizes():
    """#24 item 1: cached maps of two image sizes train (batched by shape) and predict in their own frames."""
    from actors.detection.train import as_inputs, predict

    a, b = _data(n=4), _data(n=3, h=9, w=12)
    data = DetectionData(as_inputs(list(a.inputs) + list(b.inputs)), a.boxes + b.boxes, a.labels + b.labels,
                         a.sizes + b.sizes, [f"im{i}" for i in range(7)])
    assert isinstance(data.inputs, list) and len(data) == 7
    det = _det()
    res = train_detector(det, data, TrainConfig(epochs=2, batch_size=3, seed=1))
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    out = predict(det, data, batch_size=3)
    assert set(out) == set(data.ids)
    for i, (w, h) in enumerate(data.sizes):
        boxes = out[f"im{i}"]["boxes"]
        assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()


def test_min_steps_raises_the_epochs_of_a_small_labeled_set_only():
    """6 images in batches of 2 are 3 steps an epoch: min_steps=20 needs 7 epochs; a larger epochs count stays."""
    steps: list[tuple[int, int]] = []
    res = train_detector(_det(), _data(), TrainConfig(epochs=2, batch_size=2, min_steps=20),
                         on_step=lambda e, s: steps.append((e, s)))
    assert res.epochs == 7 and len(steps) == 21 and len(res.losses) == 7
    assert TrainConfig(epochs=9, min_steps=20).epochs_for(3) == 9 and TrainConfig(epochs=2).epochs_for(3) == 2
