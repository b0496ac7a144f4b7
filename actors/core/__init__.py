"""core: where Assay runs and keeps state. Workspace I/O (atomic writes, local or pyarrow.fs URIs), resumable
sharded datasets, the Ray runtime (init, auth, devices, resources), image decoding from any workspace-readable URI,
and the user-error type the CLI reports as a one-line message."""

from .lazy import lazy_exports

_PUBLIC = {
    "UserError": "errors",
    "Workspace": "workspace",
    "WorkspaceError": "workspace",
    "DEFAULT_WORKSPACE": "workspace",
    "ShardedDataset": "shards",
    "Shard": "shards",
    "init_ray": "runtime",
    "Resources": "runtime",
    "device": "runtime",
    "cuda_available": "runtime",
    "load_image": "images",
    "decode_batch": "images",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
