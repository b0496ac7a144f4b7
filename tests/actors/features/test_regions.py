"""actors/features/regions.py: one box vector for assay-small's training head and the matcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from actors.features.regions import box_vectors, centre_normalize, region_vectors
from actors.features.small import RoiCosineHead
from actors.selection.match import box_template


def test_box_vectors_average_the_box_in_cell_units():
    f = torch.zeros(2, 4, 6, 6)  # 2 maps, stride 8 -> 48×48 px
    f[0, :, 2:4, 2:4] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)
    f[1, :, 0:2, 0:2] = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(4, 1, 1)
    v = box_vectors(f, torch.tensor([[16.0, 16.0, 32.0, 32.0], [0.0, 0.0, 16.0, 16.0]]), 8, 8)  # 2×4
    assert torch.allclose(v, torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]), atol=1e-5)
    n = centre_normalize(v, torch.full((4,), 2.5))
    assert torch.allclose(n.norm(dim=1), torch.ones(2)) and float(n[0] @ n[1]) == pytest.approx(-1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        box_vectors(f, torch.zeros(3, 4), 8, 8)


@pytest.mark.parametrize("box", [(20.0, 12.0, 30.0, 21.0), (3.0, 5.0, 44.0, 40.0), (16.0, 16.0, 24.0, 24.0)])
def test_training_head_and_matcher_compute_one_and_the_same_box_vector(box):
    torch.manual_seed(0)
    c = 6
    f = torch.randn(1, c, 6, 7)  # a trunk output: stride 8 -> 56×48 px
    head = RoiCosineHead(nn.Identity(), c, c, stride=8, scale=1.0)
    with torch.no_grad():
        head.prototypes.copy_(torch.eye(c))  # logits = the head's box vector itself
        trained_on = head(f, torch.tensor([box]))[0]  # what training compares
    matched = box_template(f[0], box, 8.0, 8.0, image_size=(56, 48), center=f.mean(dim=(0, 2, 3))).vector
    assert torch.allclose(trained_on, matched, atol=1e-5)
    assert torch.allclose(matched, region_vectors(f, torch.tensor([box]), 8, 8, f.mean(dim=(0, 2, 3)))[0])
