"""The world's class_weights option: a rare class is rare, other worlds are unchanged, bad weights are refused."""

from __future__ import annotations

import collections

import pytest

from actors.catalog.world import WorldConfig, _config_dict, render_image
from actors.core.errors import UserError


def _counts(cfg: WorldConfig, n: int = 60) -> collections.Counter:
    return collections.Counter(o["category"] for i in range(n) for o in render_image(cfg, i)[1])


def test_rare_class_is_rare_and_uniform_world_is_unchanged():
    base = WorldConfig(seed=2, size=(64, 48), classes=("shape",), object_area=(0.02, 0.05), clutter=(0, 1))
    rare = WorldConfig(**{**base.__dict__, "class_weights": (("star", 0.05),)}).validate()
    c, u = _counts(rare), _counts(base)
    others = [c[k] for k in c if k != "star"]
    assert c["star"] * 5 < min(others), c  # about 1 in 100 objects instead of 1 in 6
    assert u["star"] > 0
    # the default (uniform) world draws exactly as before and records no class_weights
    assert "class_weights" not in _config_dict(base) and _config_dict(rare)["class_weights"] == (("star", 0.05),)
    same = WorldConfig(**{**base.__dict__, "class_weights": None})
    assert (render_image(same, 3)[0] == render_image(base, 3)[0]).all()


@pytest.mark.parametrize("weights", [(("star", 0.0),), (("digit_3", 0.1),)])
def test_bad_class_weights_are_user_errors(weights):
    with pytest.raises(UserError, match="class_weights"):
        WorldConfig(classes=("shape",), class_weights=weights).validate()
