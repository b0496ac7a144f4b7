"""compression: a trained detector made smaller and faster, with proof. BN folding, the device latency LUT,
latency-aware (knapsack) structured pruning on Torch-Pruning's dependency graph, feature distillation of a pruned
trunk back to the original's map (unlabeled images), int8 quantization (ONNX Runtime
static QDQ; SPIQ-style data-free), export (ONNX + state dict) and the before/after report."""

from actors.core.lazy import lazy_exports

_PUBLIC = {
    "FoldReport": "fold",
    "fold_batchnorm": "fold",
    "folded_copy": "fold",
    "DenseNet": "net",
    "tensor_module": "net",
    "decode": "net",
    "measure_latency": "latency",
    "LatencyLUT": "latency",
    "build_lut": "latency",
    "device_key": "latency",
    "solve_knapsack": "prune",
    "PrunePlan": "prune",
    "plan_pruning": "prune",
    "apply_plan": "prune",
    "magnitude_prune": "prune",
    "latency_aware_prune": "prune",
    "finetune": "finetune",
    "finetune_on_ray": "ray_finetune",
    "CompressedDetector": "detector",
    "FinetuneConfig": "finetune",
    "evaluate_outputs": "finetune",
    "list_importances": "prune",
    "quantize_static": "quantize",
    "spiq_ranges": "quantize",
    "fake_quantize": "quantize",
    "export_onnx": "export",
    "save_compressed": "export",
    "load_compressed": "export",
    "DistillConfig": "distill",
    "distill_trunk": "distill",
    "head_convs": "net",
    "compress_run": "report",
    "CompressConfig": "report",
    "accuracy_warnings": "verdict",
    "drop_warning": "verdict",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
