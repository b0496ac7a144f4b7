"""features: image -> region-grid vectors. The backbone registry (assay-small, torchvision, TorchScript, ImageNet
EfficientNet-Lite0), the region encoder, the box vector (regions), the feature store (shards, row reads) and the
Ray Data embedding pipeline."""

from actors.core.lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
