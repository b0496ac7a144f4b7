"""selection: targeted selection. The FAISS region/global index, the template-matching kernels (pure torch), the
fine-stage matcher and its Ray actor, and mining (coarse FAISS search -> dense re-rank -> selections)."""

_PUBLIC = {
    "build_index": "index",
    "add_to_index": "index",
    "load_index": "index",
    "IndexManifest": "index",
    "box_template": "match",
    "pooled_match": "match",
    "Hit": "match",
    "Matcher": "matcher",
    "MatchActor": "actor",
    "mine": "mine",
    "mine_batch": "mine",
    "Query": "mine",
    "Selection": "mine",
    "Selector": "mine",
}


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch/ray until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
