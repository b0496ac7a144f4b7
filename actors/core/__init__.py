"""core: where Assay runs and keeps state. Workspace I/O (atomic writes, local or pyarrow.fs URIs), resumable
sharded datasets, the Ray runtime (init, auth, devices, resources), image decoding from any workspace-readable URI,
and the user-error type the CLI reports as a one-line message."""

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


def __getattr__(name: str):  # PEP 562: hand on public names without importing torch/ray until one is used
    import importlib

    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
