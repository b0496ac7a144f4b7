"""GPU paths of the features capability (skipped without CUDA: ``needs_cuda``; they run where a GPU exists)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.features.backbones import get_backbone
from actors.features.encoder import RegionEncoder
from actors.features.regions import region_vectors

pytestmark = pytest.mark.needs_cuda


def test_cuda_region_encoder_forward_equals_cpu():
    torch.manual_seed(0)
    ext = get_backbone("assay-small", random_init=True)
    images = [np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8) for i in range(3)]
    cpu = RegionEncoder(ext, pool=2, device="cpu").encode_batch(images)
    gpu = RegionEncoder(get_backbone("assay-small", random_init=True), pool=2, device="cuda").encode_batch(images)
    for a, b in zip(cpu, gpu):
        assert a.fmap.shape == b.fmap.shape and (a.stride_y, a.stride_x) == (b.stride_y, b.stride_x)
        np.testing.assert_allclose(b.fmap, a.fmap, rtol=1e-3, atol=1e-3 * float(np.abs(a.fmap).max()))


def test_cuda_box_vectors_equal_cpu():
    f = torch.randn(2, 16, 12, 16)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 70.0], [0.0, 0.0, 8.0, 8.0]])
    center = f.mean(dim=(0, 2, 3))
    want = region_vectors(f, boxes, 8, 8, center)
    got = region_vectors(f.cuda(), boxes.cuda(), 8, 8, center.cuda()).cpu()
    assert torch.allclose(got, want, atol=1e-5)
