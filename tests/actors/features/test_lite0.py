"""The ImageNet EfficientNet-Lite0 backbone: weights load with weights_only=True, classify as ImageNet does, cut right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.core.errors import UserError
from actors.features.backbones import get_backbone, list_backbones
from actors.features.lite0 import lite0_classifier


def _photo(name: str) -> torch.Tensor:
    import skimage.data as data
    from PIL import Image

    a = np.array(Image.fromarray(getattr(data, name)()).resize((224, 224), Image.BILINEAR))
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # 1×3×224×224 in [0, 1]


@pytest.fixture(scope="module")
def classifier():
    return lite0_classifier()[0]


@pytest.mark.parametrize("photo, wanted", [("chelsea", {285, 282, 281}), ("coffee", {967, 968})])
def test_classifies_skimage_photos_as_imagenet_does(classifier, photo, wanted):
    with torch.no_grad():
        logits = classifier(_photo(photo) * 2.0 - 1.0)  # these weights expect inputs in [-1, 1]
    top = set(logits.topk(len(wanted)).indices[0].tolist())
    assert top == wanted


def test_weights_load_with_weights_only(monkeypatch):
    seen = []
    real = torch.load

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    lite0_classifier()
    assert seen == [True]


@pytest.mark.parametrize("cfg, dim, stride", [({}, 40, 8), ({"stride": 16}, 112, 16), ({"layer": 5}, 40, 8),
                                              ({"layer": 11}, 112, 16), ({"fuse": True}, 152, 8)])
def test_registered_with_stride_and_layer_options(cfg, dim, stride):
    assert "efficientnet-lite0" in list_backbones()
    fe = get_backbone("efficientnet-lite0", **cfg)
    assert (fe.dim, fe.stride) == (dim, stride)
    out = fe(torch.rand(1, 3, 96, 128))
    assert out.shape == (1, dim, 96 // stride, 128 // stride)
    assert fe.weights_id != "random-init"


def test_bad_options_are_errors():
    with pytest.raises(UserError, match="stride"):
        get_backbone("efficientnet-lite0", stride=4, random_init=True)
    with pytest.raises(UserError, match="layer"):
        get_backbone("efficientnet-lite0", layer=99, random_init=True)
