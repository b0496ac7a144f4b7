"""active: active-learning scores from saved predictions, the acquisition-strategy registry, pseudo-labels, labels
from a labeling team, and the rounds loop (score -> select -> label -> retrain -> curve)."""

_PUBLIC = {
    "Detections": "scores",
    "uncertainty_scores": "scores",
    "inconsistency_scores": "scores",
    "cascade_select": "scores",
    "weighted_scores": "scores",
    "Candidates": "strategies",
    "register_strategy": "strategies",
    "list_strategies": "strategies",
    "get_strategy": "strategies",
    "select": "strategies",
    "add_pseudo_labels": "pseudo",
    "remove_pseudo_labels": "pseudo",
    "import_labels": "oracle",
    "LearnConfig": "rounds",
    "run_learning": "rounds",
}


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
