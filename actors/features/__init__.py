"""features: image -> region-grid vectors. The backbone registry (assay-small, torchvision, TorchScript, ImageNet
EfficientNet-Lite0), the region encoder, the box vector (regions), the feature store (shards, row reads) and the
Ray Data embedding pipeline."""

_PUBLIC = {
    "FeatureExtractor": "backbones",
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "train_backbone": "small",
    "RegionEncoder": "encoder",
    "load_region_encoder": "encoder",
    "region_vectors": "regions",
    "FeatureMap": "store",
    "FeatureReader": "store",
    "iter_feature_maps": "store",
    "embed_pool": "embed",
    "EmbedReport": "embed",
    "measure_backbone_curve": "curve",
}


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch/ray until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
