"""Backbones: convolutional trunks that turn an image into a grid of region features.

A :class:`FeatureExtractor` maps B×3×H×W floats in [0, 1] to a B×C×h×w feature map (normalization is inside) and
carries ``name``, ``dim`` (C), ``stride`` (input pixels per output cell) and ``weights_id`` (a hash of the weights
file, so a feature store can tell when its backbone changed).

Backbones come from a small registry (``register_backbone`` / ``list_backbones`` / ``get_backbone``):

* every torchvision classification trunk in :data:`TORCHVISION_ARCHS`, truncated at a stage (``layer="layer2"``) or
  at an output stride (``stride=8``, the default); weights from a local checkpoint (``"resnet18:/path/ckpt.pt"`` or
  ``checkpoint=``) or from a file already in the torch hub cache. Assay never downloads;
* ``"torchscript:/path/model.pt"``: any scripted module; ``dim`` and ``stride`` come from a dry run;
* ``"assay-small"``: Assay's own compact net (5 convs, stride 8, 64 channels, receptive field 63 px, sized for
  10–45 px objects), trained on the workspace's labels by :func:`train_backbone` and loaded from
  ``models/assay-small.pt`` (:mod:`actors.features.small`);
* more builders register themselves from their own modules, listed in :data:`_BUILDER_MODULES`.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn

from actors.core.errors import UserError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "mobilenet_v3_small",
                     "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "regnet_x_400mf")
_DRY_SIDE = 128


class FeatureExtractor(nn.Module):
    """A trunk plus input normalization: B×3×H×W in [0, 1] -> B×dim×ceil(H/stride)×ceil(W/stride) (about).

    Parameters
    ----------
    body : nn.Module
        The trunk; takes normalized images. A tuple/list/dict output is reduced to its last tensor.
    name : str
    dim, stride : int, optional
        Output channels and input pixels per output cell; inferred by a dry run on a 128×128 input when omitted.
    normalize : bool
        Subtract the ImageNet mean and divide by its std before the trunk.
    weights_id : str
        Short hash of the weights the trunk was loaded from (``"random-init"`` when none).
    """

    def __init__(self, body: nn.Module, *, name: str, dim: int | None = None, stride: int | None = None,
                 normalize: bool = True, weights_id: str = "random-init") -> None:
        super().__init__()
        self.body, self.name, self.normalize, self.weights_id = body, name, normalize, weights_id
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if dim is None or stride is None:
            dim, stride = probe(self)
        self.dim, self.stride = int(dim), int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(x.shape)}")
        if self.normalize:
            x = (x - self.mean) / self.std  # B×3×H×W
        out = self.body(x)
        if isinstance(out, dict):
            out = list(out.values())[-1]
        elif isinstance(out, (list, tuple)):
            out = out[-1]
        return out  # B×C×h×w


@torch.no_grad()
def probe(extractor: nn.Module, side: int = _DRY_SIDE) -> tuple[int, int]:
    """(dim, stride) of an extractor from one forward pass on a side×side input in eval mode."""
    was = extractor.training
    extractor.eval()
    out = extractor(torch.zeros(1, 3, side, side))  # 1×C×h×w
    extractor.train(was)
    if out.ndim != 4:
        raise ValueError(f"backbone must return a B×C×h×w feature map, got shape {list(out.shape)}")
    return int(out.shape[1]), max(1, round(side / out.shape[-1]))


# ------------------------------------------------------------------------------------------------ registry
_BACKBONES: dict[str, Callable[..., FeatureExtractor]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Decorator: register a builder ``fn(**cfg) -> FeatureExtractor`` under ``name``."""
    def deco(fn: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        _BACKBONES[name] = fn
        return fn
    return deco


# modules whose import registers more builders; loaded on first use of the registry (not at import: no cycles)
_BUILDER_MODULES = ("actors.features.small", "actors.features.lite0")


def _load_builders() -> None:
    import importlib

    for name in _BUILDER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    _load_builders()
    return sorted(_BACKBONES)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"resnet18:/ckpt.pt"`` -> ``("resnet18", "/ckpt.pt")``; ``"assay-small"`` -> ``("assay-small", None)``."""
    name, sep, path = spec.partition(":")
    return name, (path or None) if sep else None


def get_backbone(name: str, **cfg: Any) -> FeatureExtractor:
    """Build a registered backbone in eval mode.

    Parameters
    ----------
    name : str
        A registered name, optionally with a weights path: ``"resnet18:/path/ckpt.pt"``, ``"torchscript:/m.pt"``.
    **cfg
        Builder options: ``checkpoint`` (local weights file), ``workspace`` (for ``assay-small``),
        ``random_init`` (skip weights; tests), ``layer`` / ``stride`` (torchvision truncation), ``normalize``.

    Raises
    ------
    ValueError
        Unknown name or a truncation that does not exist.
    FileNotFoundError
        No weights available locally (the message says where they were looked for).
    """
    base, path = parse_spec(name)
    _load_builders()
    if base not in _BACKBONES:
        raise UserError(f"unknown backbone {base!r}; known: {', '.join(list_backbones())}")
    if path:
        cfg["path" if base == "torchscript" else "checkpoint"] = path
    return _BACKBONES[base](**cfg).eval()


# ------------------------------------------------------------------------------------------------ weights I/O
def _weights_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Load a local checkpoint with ``weights_only=True``; returns (state_dict, weights_id).

    Accepts a bare state_dict or a dict holding one under ``"model"`` or ``"state_dict"``; a ``module.``
    prefix (DataParallel) is stripped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"backbone checkpoint {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    return _state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), path), _weights_id(data)


def checkpoint_bytes(checkpoint: str | os.PathLike | None, workspace: Any, rel: str, *, label: str,
                     train_cmd: str) -> bytes:
    """The bytes of a trained backbone's weights: the local file ``checkpoint`` when given, else ``rel`` in
    ``workspace`` (a :class:`~actors.core.workspace.Workspace` or its URI). A missing file is a one-line
    :class:`UserError` naming the path and ``train_cmd``, the command that writes it."""
    from actors.core.workspace import Workspace

    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise UserError(f"{label} checkpoint {os.fspath(checkpoint)} does not exist")
        with open(checkpoint, "rb") as f:
            return f.read()
    ws = Workspace(workspace) if isinstance(workspace, (str, os.PathLike)) else workspace
    if ws is None or not ws.exists(rel):
        where = ws.path(rel) if ws is not None else rel
        raise UserError(f"no {label} weights at {where}; run `{train_cmd}` first (or pass another --backbone)")
    return ws.read_bytes(rel)


def _state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{where}: not a state_dict (nor a dict with 'model'/'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def hub_weights_path(arch: str) -> str:
    """Where torchvision's default weights for ``arch`` would be in the torch hub cache (may not exist)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


# ------------------------------------------------------------------------------------------------ torchvision
def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A classification net's trunk as named sequential stages (parameter-name prefixes)."""
    if hasattr(model, "layer1"):  # resnet / resnext / wide_resnet
        return [(n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")]
    if hasattr(model, "trunk_output"):  # regnet
        return [("stem", model.stem)] + [(f"trunk_output.{n}", m) for n, m in model.trunk_output.named_children()]
    if hasattr(model, "features"):  # mobilenet, efficientnet, convnext, vgg …
        return [(f"features.{n}", m) for n, m in model.features.named_children()]
    raise UserError(f"{type(model).__name__}: cannot find its convolutional stages")


@torch.no_grad()
def _cut(stages: list[tuple[str, nn.Module]], layer: str | None, stride: int) -> int:
    """Number of stages to keep: through ``layer``, else the deepest prefix whose stride is <= ``stride``."""
    names = [n for n, _ in stages]
    if layer is not None:
        matches = [i for i, n in enumerate(names) if n == layer or n.split(".")[-1] == layer]
        if not matches:
            raise UserError(f"layer {layer!r} not found; stages are {names}")
        return matches[0] + 1
    x, keep = torch.zeros(1, 3, _DRY_SIDE, _DRY_SIDE), 0
    for i, (_, m) in enumerate(stages):
        x = m.eval()(x)
        if round(_DRY_SIDE / x.shape[-1]) > stride:
            break
        keep = i + 1
    if keep == 0:
        raise UserError(f"no stage has stride <= {stride}")
    return keep


def _torchvision_backbone(arch: str, *, checkpoint: str | None = None, random_init: bool = False,
                          layer: str | None = None, stride: int = 8, normalize: bool = True,
                          **_: Any) -> FeatureExtractor:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    weights_id = "random-init"
    if not random_init:
        if checkpoint is None:
            checkpoint = hub_weights_path(arch)
            if not os.path.isfile(checkpoint):
                raise UserError(
                    f"no weights for {arch}: {checkpoint} is not in the torch hub cache and Assay never downloads; "
                    f"pass a local checkpoint as '{arch}:/path/to/ckpt.pt' or put the file there")
        sd, weights_id = read_checkpoint(checkpoint)
    stages = _stages(model)
    keep = _cut(stages, layer, stride)
    if not random_init:
        missing, _ = model.load_state_dict(sd, strict=False)
        kept = tuple(f"{n}." for n, _ in stages[:keep])
        lost = [k for k in missing if k.startswith(kept)]
        if lost:
            raise UserError(f"{checkpoint}: checkpoint does not fit {arch}; missing e.g. {lost[:3]}")
    body = nn.Sequential(*[m for _, m in stages[:keep]])
    return FeatureExtractor(body, name=arch, normalize=normalize, weights_id=weights_id)


for _arch in TORCHVISION_ARCHS:
    register_backbone(_arch)(partial(_torchvision_backbone, _arch))


@register_backbone("torchscript")
def _torchscript_backbone(*, path: str | None = None, checkpoint: str | None = None, normalize: bool = True,
                          **_: Any) -> FeatureExtractor:
    path = path or checkpoint
    if not path or not os.path.isfile(path):
        raise UserError(f"TorchScript backbone file {path!r} does not exist (use 'torchscript:/path.pt')")
    with open(path, "rb") as f:
        data = f.read()
    body = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return FeatureExtractor(body, name="torchscript", normalize=normalize, weights_id=_weights_id(data))
