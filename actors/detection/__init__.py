"""detection: a registry of detectors on Assay backbones (a cached-feature dense head for CPUs, torchvision FCOS and
Faster R-CNN end to end), the seeded, resumable training loop (+ its Ray Train wrapper) and COCO evaluation."""

from actors.core.lazy import lazy_exports

_PUBLIC = {
    "get_detector": "models",
    "list_detectors": "models",
    "register_detector": "models",
    "TrainConfig": "train",
    "train_detector": "train",
    "load_detector": "train",
    "predict": "train",
    "evaluate_detections": "evaluate",
    "EvalReport": "evaluate",
    "FeatureCache": "data",
    "train_on_ray": "ray_train",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
