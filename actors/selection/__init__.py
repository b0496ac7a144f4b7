"""selection: targeted selection. The FAISS region/global index (single, or sharded over Ray actors), the
template-matching kernels (pure torch), the fine-stage matcher and its Ray actor, and mining (coarse FAISS search ->
dense re-rank -> selections)."""

from actors.core.lazy import lazy_exports

_PUBLIC = {
    "build_index": "index",
    "add_to_index": "index",
    "load_index": "index",
    "IndexManifest": "index",
    "ShardedIndex": "sharded",
    "index_region": "sharded_build",
    "open_sharded": "sharded_build",
    "box_template": "match",
    "pooled_match": "match",
    "Hit": "match",
    "Matcher": "matcher",
    "MatchActor": "actor",
    "mine": "mine",
    "mine_batch": "mine",
    "more_like": "mine",
    "Query": "mine",
    "Selection": "mine",
    "Selector": "mine",
    "rerank_hits": "rerank",
    "CropEmbedder": "rerank",
    "export_selection": "export",
    "export_bytes": "export",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
