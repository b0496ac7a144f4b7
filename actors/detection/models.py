"""Registry of detectors on Assay backbones: ``register_detector`` / ``list_detectors`` / ``get_detector``.

Every detector answers the same three calls, so training, scoring and evaluation never ask which one it is:

* ``inputs(images)``: what the detector consumes for a batch of B×3×H×W images in [0, 1]. For a *cached*
  detector this is the frozen trunk's feature map (computed once per image and cached by the caller); for an
  end-to-end one, the images themselves;
* ``loss(inputs, boxes, labels) -> dict`` of scalar losses (train mode);
* ``predict(inputs, sizes) -> list of dict(boxes M×4, scores M, labels M, probs M×K)`` (eval mode).

Registered:

``dense-lite0`` (default): the ImageNet EfficientNet-Lite0 trunk, frozen, its stride-8 map fused with the upsampled
stride-16 map (152 channels), under the light FCOS-style :class:`~actors.detection.head.DenseHead`. Cached: only
the head trains, so a round trains in seconds to minutes on 2 CPU cores.

``fcos-lite0``: torchvision's FCOS on the same fused Lite0 trunk, trained end to end (single-stage; for GPUs).

``fasterrcnn-lite0``: torchvision's Faster R-CNN on the Lite0 stride-16 trunk (one level, anchors 16–64 px),
trained end to end (for GPUs).

The backbone is a registry spec (``backbone="assay-small"``, ``"efficientnet-lite0"``, ``"resnet18:/ckpt.pt"``…).
torchvision detectors return only the winning class's score, so their ``probs`` put ``score`` on the label and
spread the rest evenly (entropy from them is a proxy; ``dense-lite0`` gives the full distribution).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from actors.detection.head import DenseHead, HeadConfig

_DETECTORS: dict[str, Callable[..., "Detector"]] = {}
DEFAULT_DETECTOR = "dense-lite0"


def register_detector(name: str) -> Callable[[Callable[..., "Detector"]], Callable[..., "Detector"]]:
    """Decorator: register a builder ``fn(classes, **cfg) -> Detector`` under ``name``."""
    def deco(fn: Callable[..., "Detector"]) -> Callable[..., "Detector"]:
        _DETECTORS[name] = fn
        return fn
    return deco


def list_detectors() -> list[str]:
    """Registered detector names, sorted."""
    return sorted(_DETECTORS)


def get_detector(name: str, classes: Sequence[str], **cfg: Any) -> "Detector":
    """Build a registered detector for ``classes`` (cfg: ``backbone``, ``random_init``, head options …).

    Raises ValueError for an unknown name.
    """
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(list_detectors())}")
    torch.manual_seed(0)  # the randomly initialised parts start the same in every process
    return _DETECTORS[name](list(classes), **cfg)


def _trunk(backbone: str, random_init: bool, **opts: Any) -> nn.Module:
    import actors.features.lite0  # noqa: F401  (registers efficientnet-lite0)
    from actors.features.backbones import get_backbone

    return get_backbone(backbone, random_init=random_init, **opts)


class Detector(nn.Module):
    """Common shape: ``classes``, ``cached``, ``config`` (what rebuilds it), and the three calls above."""

    cached = False

    def __init__(self, classes: list[str], config: dict) -> None:
        super().__init__()
        self.classes, self.config = classes, config

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint must hold."""
        return self.state_dict()

    def reset(self, seed: int) -> None:
        """Back to the untrained state (pretrained trunk, fresh heads drawn from ``seed``)."""
        raise NotImplementedError

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(sd)


class CachedDenseDetector(Detector):
    """Frozen trunk (features cached by the caller) + trainable :class:`DenseHead`."""

    cached = True

    def __init__(self, classes: list[str], trunk: nn.Module, head_cfg: HeadConfig, config: dict) -> None:
        super().__init__(classes, config)
        self.trunk = trunk.eval().requires_grad_(False)
        self.head = DenseHead(len(classes), head_cfg)

    def train(self, mode: bool = True) -> "CachedDenseDetector":
        super().train(mode)
        self.trunk.eval()  # frozen BatchNorm statistics
        return self

    @torch.no_grad()
    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images).to(torch.float16)  # B×C×h×w, cached as fp16

    def loss(self, inputs: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        return self.head.loss(self.head(inputs), boxes, labels)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
        return self.head.decode(self.head(inputs), sizes)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.head.state_dict()

    def reset(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.head = DenseHead(len(self.classes), self.head.cfg)

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict(sd)


@register_detector("dense-lite0")
def _dense(classes: list[str], *, backbone: str = "efficientnet-lite0", random_init: bool = False,
           fuse: bool = True, image_size: Any = None, **head: Any) -> CachedDenseDetector:
    opts = {"fuse": fuse} if backbone.startswith("efficientnet-lite0") else {}
    trunk = _trunk(backbone, random_init, **opts)
    cfg = HeadConfig(**{**head, "in_channels": trunk.dim, "stride": trunk.stride})
    config = {"name": "dense-lite0", "backbone": backbone, "fuse": fuse, "head": cfg.to_dict(),
              "weights_id": trunk.weights_id}
    return CachedDenseDetector(classes, trunk, cfg, config)


# ------------------------------------------------------------------------------------------ torchvision
class _Body(nn.Module):
    def __init__(self, fe: nn.Module) -> None:
        super().__init__()
        self.fe, self.out_channels = fe, fe.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fe(x)


class TorchvisionDetector(Detector):
    """A torchvision detection model trained end to end; labels are shifted by one (0 is its background)."""

    def __init__(self, classes: list[str], model: nn.Module, config: dict) -> None:
        super().__init__(classes, config)
        self.model = model
        self._initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def reset(self, seed: int) -> None:
        self.model.load_state_dict(self._initial)  # the pretrained trunk; heads as built (seeded in get_detector)
        torch.manual_seed(seed)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def loss(self, inputs: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        targets = [{"boxes": b.float().reshape(-1, 4), "labels": lab.long() + 1} for b, lab in zip(boxes, labels)]
        return self.model(list(inputs.float()), targets)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
        return [from_torchvision(r, len(self.classes)) for r in self.model(list(inputs.float()))]


def from_torchvision(r: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """A torchvision detection result (labels 1..K, 0 the background) as Assay's: labels 0..K-1 and a class
    distribution per detection (its score on its class, the rest spread evenly), what the entropy score reads."""
    lab = (r["labels"] - 1).clamp(0, k - 1)
    s = r["scores"]
    probs = ((1 - s) / max(1, k - 1))[:, None].repeat(1, k) if k > 1 else torch.ones(len(s), 1)
    probs[torch.arange(len(s)), lab] = s if k > 1 else 1.0
    return {"boxes": r["boxes"], "scores": s, "labels": lab, "probs": probs}


def _transform_kw(image_size: tuple[int, int]) -> dict:
    w, h = image_size
    return {"min_size": min(w, h), "max_size": max(w, h), "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


@register_detector("fcos-lite0")
def _fcos(classes: list[str], *, backbone: str = "efficientnet-lite0", random_init: bool = False,
          image_size: tuple[int, int] = (512, 384), **_: Any) -> TorchvisionDetector:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    opts = {"fuse": True} if backbone.startswith("efficientnet-lite0") else {}
    body = _Body(_trunk(backbone, random_init, **opts))
    model = FCOS(body, num_classes=len(classes) + 1, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
                 detections_per_img=50, **_transform_kw(image_size))
    return TorchvisionDetector(classes, model, {"name": "fcos-lite0", "backbone": backbone,
                                                "image_size": list(image_size)})


@register_detector("fasterrcnn-lite0")
def _faster(classes: list[str], *, backbone: str = "efficientnet-lite0", random_init: bool = False,
            image_size: tuple[int, int] = (512, 384), **_: Any) -> TorchvisionDetector:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    opts = {"stride": 16} if backbone.startswith("efficientnet-lite0") else {}
    body = _Body(_trunk(backbone, random_init, **opts))
    model = FasterRCNN(body, num_classes=len(classes) + 1,
                       rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
                       box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_detections_per_img=50,
                       **_transform_kw(image_size))
    return TorchvisionDetector(classes, model, {"name": "fasterrcnn-lite0", "backbone": backbone,
                                                "image_size": list(image_size)})


from actors.detection import cached_heads  # noqa: E402,F401  (registers the torchvision-head peers)

__all__ = ["DEFAULT_DETECTOR", "Detector", "CachedDenseDetector", "TorchvisionDetector", "register_detector",
           "list_detectors", "get_detector", "from_torchvision"]
