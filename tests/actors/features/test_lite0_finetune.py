"""Fine-tuning the pretrained Lite0 trunk with assay-small's ROI prototype loss (toy catalog, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from actors.core.errors import UserError
from actors.features.backbones import get_backbone
from actors.features.lite0 import finetuned_checkpoint
from actors.features.small import train_backbone
from tests.actors.features.test_backbones import make_toy_catalog


def _bn_stats(ext: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in ext.modules() if isinstance(m, nn.BatchNorm2d)]


def test_finetuned_lite0_trains_by_steps_saves_and_loads(workspace, tmp_path):
    make_toy_catalog(workspace, tmp_path / "img", splits=(("train", 6), ("val", 2)))
    # a step budget ignores the wall clock: a near-zero max_minutes must not cut it
    rep = train_backbone(workspace, name="efficientnet-lite0", stride=8, steps=3, crop=32, batch_size=8,
                         max_minutes=0.0001, progress=False)
    assert rep.steps == 3 and not rep.stopped_early
    assert rep.checkpoint == finetuned_checkpoint(8) and workspace.exists(rep.checkpoint)
    ft = get_backbone("efficientnet-lite0-ft", workspace=workspace, stride=8)  # torch.load(weights_only=True)
    base = get_backbone("efficientnet-lite0", stride=8)
    assert (ft.dim, ft.stride) == (base.dim, base.stride) == (40, 8)
    assert ft.weights_id not in ("random-init", base.weights_id)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert not torch.allclose(ft(x), base(x))  # the trunk's weights moved
    # BatchNorm statistics are frozen: the pretrained running means are kept
    assert all(torch.equal(a, b) for a, b in zip(_bn_stats(ft), _bn_stats(base)))


def test_finetuned_lite0_errors_name_the_fix(workspace, tmp_path):
    with pytest.raises(UserError, match="assay backbone train"):
        get_backbone("efficientnet-lite0-ft", workspace=workspace, stride=16)
    with pytest.raises(UserError, match="can be trained"):
        train_backbone(workspace, name="resnet18", steps=1, progress=False)
