"""Where work runs: Ray connection, device choice, resource asks.

One code path for laptop and cluster (DESIGN.md, Execution):

* ``init_ray()`` connects to ``RAY_ADDRESS`` when it is set, else starts a local instance bound to 127.0.0.1 with
  the dashboard off unless asked. ``RAY_AUTH_MODE`` defaults to ``token`` (Ray's secure default) and is always set
  explicitly so head and client agree.
* ``device()`` is ``cuda`` when torch sees a GPU, else ``cpu``; ``ASSAY_DEVICE`` overrides it.
* ``Resources`` carries the per-actor asks (``num_gpus``, ``num_cpus``, pool size, batch size) from config or the
  environment, never hard-coded at the call site.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.core.errors import UserError

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False


def device() -> str:
    """``"cuda"`` when a GPU is visible (or ``ASSAY_DEVICE`` says so), else ``"cpu"``."""
    forced = os.environ.get("ASSAY_DEVICE")
    if forced:
        return forced
    return "cuda" if cuda_available() else "cpu"


@dataclass
class Resources:
    """Per-stage resource asks for Ray actor pools.

    ``num_gpus`` defaults to 1 per actor when CUDA is present and 0 otherwise; ``num_cpus`` is fractional by
    default so that on small machines the read tasks are not starved by the actor pool (DESIGN.md).
    """

    pool_size: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    batch_size: int = 16

    @classmethod
    def auto(cls, **overrides: Any) -> "Resources":
        """Asks for this machine: one actor per GPU (batch 64), or on CPU one actor per core up to 8 cores and
        one per two cores above (batch 16): single-threaded torch actors use the cores better than one actor
        with intra-op threads (``bench/embed.py``). ``ASSAY_POOL_SIZE``, ``ASSAY_NUM_GPUS``,
        ``ASSAY_BATCH_SIZE`` and then ``overrides`` (None = keep) win."""
        gpus = 1.0 if cuda_available() else 0.0
        env = {
            "pool_size": int(os.environ.get("ASSAY_POOL_SIZE", 0)) or None,
            "num_gpus": float(os.environ["ASSAY_NUM_GPUS"]) if "ASSAY_NUM_GPUS" in os.environ else None,
            "batch_size": int(os.environ.get("ASSAY_BATCH_SIZE", 0)) or None,
        }
        cores = cpu_count()
        kw: dict[str, Any] = {"num_gpus": gpus, "batch_size": 64 if gpus else 16,
                              "pool_size": gpu_count() if gpus else max(1, cores if cores <= 8 else cores // 2)}
        kw.update({k: v for k, v in env.items() if v is not None})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def gpu_count() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:  # pragma: no cover
        return 1


def ensure_auth_token() -> None:
    """Make sure a Ray auth token exists where Ray looks for one (``~/.ray/auth_token`` by default).

    Ray's gRPC servers listen on every interface even for a "local" instance, so token auth stays on; a new
    random token (mode 0600) is created when none is configured.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)


def _refresh_ray_config() -> None:
    """Make an already-imported Ray see the current ``RAY_AUTH_MODE`` (Ray caches its config at import)."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


def init_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
             object_store_memory: int | None = None) -> None:
    """Connect to (or start) Ray once per process; later calls are no-ops.

    Parameters
    ----------
    address : str, optional
        Cluster address; default ``$RAY_ADDRESS``, else a new local instance on 127.0.0.1.
    num_cpus : int, optional
        CPUs for a new local instance (default: all).
    dashboard : bool
        Start the dashboard of a new local instance (bound to 127.0.0.1).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"].lower() == "token":
        ensure_auth_token()
    _refresh_ray_config()
    address = address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
        object_store_memory=object_store_memory,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    try:  # quieter progress output for CLI use; Ray Data's own bars are replaced by ours
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # pragma: no cover - older Ray
        pass


FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12")


def faiss_distributions() -> list[str]:
    """Names of the installed FAISS wheels (all of them provide the same ``faiss`` module)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in FAISS_DISTRIBUTIONS:
        try:
            version(dist)
        except PackageNotFoundError:
            continue
        found.append(dist)
    return found


def check_faiss_install() -> str:
    """Return the one installed FAISS distribution; raise ``RuntimeError`` for none or several.

    Two FAISS wheels overwrite each other's ``faiss`` module, so whichever was installed last silently wins; Assay
    refuses to guess. Fix: ``pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install -e ".[gpu]"`` (or ``[cpu]``).
    """
    found = faiss_distributions()
    if not found:
        raise UserError('FAISS is not installed: pip install -e ".[cpu]" (or ".[gpu]" on a CUDA machine)')
    if len(found) > 1:
        raise UserError(
            f"several FAISS wheels are installed ({', '.join(found)}); they provide the same module and clash. "
            f'Run: pip uninstall -y {" ".join(found)} && pip install -e ".[gpu]"  (or ".[cpu]")'
        )
    return found[0]
