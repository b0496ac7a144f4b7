"""active: active-learning scores from saved predictions, the acquisition-strategy registry, pseudo-labels, labels
from a labeling team, and the rounds loop (score -> select -> label -> retrain -> curve)."""

from actors.core.lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
