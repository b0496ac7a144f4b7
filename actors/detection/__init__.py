"""detection: a registry of detectors on Assay backbones (a cached-feature dense head for CPUs, torchvision FCOS and
Faster R-CNN end to end), the seeded, resumable training loop (+ its Ray Train wrapper) and COCO evaluation."""

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


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch/ray until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
