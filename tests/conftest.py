"""Shared fixtures: one session-scoped local Ray cluster, temporary workspaces."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "needs_cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole test session (2 CPUs, 256 MiB object store)."""
    import ray

    from actors.core.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture
def workspace(tmp_path):
    """A fresh, empty workspace in a temporary directory."""
    from actors.core.workspace import Workspace

    return Workspace(tmp_path / "ws")
