"""catalog: which images and boxes the workspace knows. The tables' schemas and ids, ingest from a folder, a
Parquet/CSV manifest or COCO JSON, and the embedded offline world (default data)."""

from actors.core.lazy import lazy_exports

_PUBLIC = {
    "IMAGES": "schema",
    "LABELS": "schema",
    "EMPTY": "schema",
    "IMAGE_SCHEMA": "schema",
    "LABEL_SCHEMA": "schema",
    "image_id": "schema",
    "normalize_uri": "schema",
    "load_images": "schema",
    "load_labels": "schema",
    "catalog_summary": "schema",
    "attach_uris": "schema",
    "ingest": "ingest",
    "IngestReport": "ingest",
    "recheck_errors": "recheck",
    "RecheckReport": "recheck",
    "read_coco": "coco",
    "coco_uris": "coco",
    "make_world": "world",
    "WorldConfig": "world",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
