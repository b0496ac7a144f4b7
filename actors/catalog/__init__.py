"""catalog: which images and boxes the workspace knows. The tables' schemas and ids, ingest from a folder, a
Parquet/CSV manifest or COCO JSON, and the embedded offline world (default data)."""

_PUBLIC = {
    "IMAGES": "schema",
    "LABELS": "schema",
    "IMAGE_SCHEMA": "schema",
    "LABEL_SCHEMA": "schema",
    "image_id": "schema",
    "normalize_uri": "schema",
    "load_images": "schema",
    "load_labels": "schema",
    "catalog_summary": "schema",
    "ingest": "ingest",
    "IngestReport": "ingest",
    "recheck_errors": "recheck",
    "RecheckReport": "recheck",
    "read_coco": "coco",
    "make_world": "world",
    "WorldConfig": "world",
}


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch/ray until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
