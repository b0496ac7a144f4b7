"""Feature distillation of a pruned trunk: it brings the trunk's map back toward the original's, resumes after a
kill to the uninterrupted result, and refuses a student whose map has other channels or a checkpoint of another
start."""

from __future__ import annotations

import copy

import pytest
import torch

from actors.compression.distill import DistillConfig, crop_size, distill_trunk
from actors.compression.latency import build_lut, macs_timer
from actors.compression.net import final_layers, head_convs, tensor_module
from actors.core.errors import UserError
from tests.actors.compression.test_finetune import Killed


@pytest.fixture(scope="module")
def nets():
    from actors.compression.prune import latency_aware_prune
    from actors.detection.models import get_detector

    torch.manual_seed(0)
    det = get_detector("dense-lite0", ["a", "b"], random_init=True, width=16)
    base = tensor_module(det)
    net = copy.deepcopy(base)
    x = torch.rand(1, 3, 64, 96)
    lut = build_lut(net, (64, 96), fractions=(0.25, 0.5, 1.0), timer=macs_timer)
    plan = latency_aware_prune(net, x, lut, 0.5, ignored=head_convs(net), importance="magnitude")
    assert plan.layers and all(not p.startswith("head.") for p in plan.layers)  # the head's input is kept
    return base, net


def _images(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 64, 96, generator=g) for _ in range(n)]


def _gap(student, teacher, images) -> float:
    """Mean squared difference of the trunk maps per channel, over the teacher's variance of that channel."""
    with torch.no_grad():
        t = [teacher.trunk(x) for x in images]
        var = torch.cat(t).var(dim=(0, 2, 3), keepdim=True) + 1e-4
        return float(sum((((student.trunk(x) - ti) ** 2) / var).mean() for x, ti in zip(images, t)) / len(images))


def test_distillation_brings_the_pruned_trunk_map_toward_the_original_on_unseen_images(nets):
    base, pruned = nets
    student = copy.deepcopy(pruned)
    held_out = _images(4, 1)
    before = _gap(student, base, held_out)
    res = distill_trunk(student, base, _images(8, 0),
                        DistillConfig(steps=20, batch_size=4, crop=(32, 48), lr=1e-2, checkpoint_every=5))
    assert res["steps"] == 20 and res["crop"] == [32, 48] and len(res["losses"]) == 4
    assert res["losses"][-1] < 0.7 * res["losses"][0]
    assert _gap(student, base, held_out) < 0.8 * before  # measured 0.64
    assert not student.training and not any(p.requires_grad for p in student.parameters())
    cls, ltrb, ctr = student(torch.rand(1, 3, 45, 61))  # still a detector on any size
    assert cls.shape[1] == 2 and ltrb.shape[1] == 4


def test_a_killed_distillation_resumes_to_the_uninterrupted_weights(nets, tmp_path):
    from actors.core.workspace import Workspace

    base, pruned = nets
    ws = Workspace(str(tmp_path / "ws"))
    cfg = DistillConfig(steps=6, batch_size=2, crop=(32, 48), checkpoint_every=2)
    images = _images(4, 0)
    whole = copy.deepcopy(pruned)
    distill_trunk(whole, base, images, cfg)

    def kill(step, total, loss):
        if step == 5:
            raise Killed

    part = copy.deepcopy(pruned)
    with pytest.raises(Killed):
        distill_trunk(part, base, images, cfg, ws=ws, ckpt="runs/r/compress/distill.pt", progress=kill)
    again = copy.deepcopy(pruned)
    res = distill_trunk(again, base, images, cfg, ws=ws, ckpt="runs/r/compress/distill.pt")
    assert res["resumed_from"] == 4 and res["steps"] == 2
    for (k, a), b in zip(whole.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    other = copy.deepcopy(pruned)
    with pytest.raises(UserError, match="distill.pt: distillation checkpoint from another start"):
        distill_trunk(other, base, images, DistillConfig(steps=6, batch_size=2, crop=(32, 48), lr=1e-3),
                      ws=ws, ckpt="runs/r/compress/distill.pt")


def test_a_student_whose_map_lost_channels_is_refused_and_crops_fit_every_image(nets):
    from actors.compression.prune import latency_aware_prune

    base, _ = nets
    cut = copy.deepcopy(base)
    lut = build_lut(cut, (64, 96), fractions=(0.25, 0.5, 1.0), timer=macs_timer)
    latency_aware_prune(cut, torch.rand(1, 3, 64, 96), lut, 0.3, ignored=final_layers(cut), importance="magnitude")
    with pytest.raises(ValueError, match="head's input protected"):
        distill_trunk(cut, base, _images(2, 0), DistillConfig(steps=2, batch_size=1))
    assert crop_size([torch.zeros(1, 3, 100, 200), torch.zeros(1, 3, 90, 300)], (192, 256), 16) == (80, 192)
    assert crop_size([torch.zeros(1, 3, 8, 8)], (192, 256), 16) == (16, 16)
