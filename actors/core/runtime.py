"""Where work runs: Ray connection, device choice, resource asks.

One code path for laptop and cluster (DESIGN.md, Execution):

* ``init_ray()`` connects to ``RAY_ADDRESS`` when it is set, else starts a local instance on loopback only (node
  address 127.0.0.1; its gRPC servers, metrics exporters and agents listen on 127.0.0.1, see :func:`loopback_only`)
  with the dashboard off unless asked. A local instance runs with ``RAY_AUTH_MODE=token`` (a token is created when
  none exists); joining a cluster uses the cluster's token (``RAY_AUTH_TOKEN`` or the token file) and never creates
  one.
  Ray's own log lines stay out of the terminal unless ``assay --verbose`` (``ASSAY_VERBOSE=1``).
* ``device()`` is ``cuda`` when torch sees a GPU, else ``cpu``; ``ASSAY_DEVICE`` overrides it.
* ``Resources`` carries the per-actor asks (``num_gpus``, ``num_cpus``, pool size, batch size) from config or the
  environment, never hard-coded at the call site.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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

    ``num_gpus`` (from :meth:`auto`) is 1 per actor while there are at least as many GPUs as actors, a fraction when
    actors share GPUs, and 0 without CUDA; ``num_cpus`` is fractional by default so that on small machines the read
    tasks are not starved by the actor pool (DESIGN.md).
    """

    pool_size: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    batch_size: int = 16

    @classmethod
    def auto(cls, *, cluster_gpus: float | None = None, **overrides: Any) -> "Resources":
        """Asks for this machine: one actor per GPU (batch 64), or on CPU one actor per core up to 8 cores and
        one per two cores above (batch 16): single-threaded torch actors use the cores better than one actor
        with intra-op threads (``bench/embed.py``). ``ASSAY_POOL_SIZE``, ``ASSAY_NUM_GPUS``,
        ``ASSAY_BATCH_SIZE`` and then ``overrides`` (None = keep) win.

        The GPU ask per actor is :func:`gpu_share` of the pool size and ``cluster_gpus`` (default: the connected
        Ray cluster's GPUs, else this machine's): more actors than GPUs share them (fractional asks) instead of
        waiting forever for a GPU each; an explicit ask that cannot fit raises ``UserError``.
        """
        gpus = 1.0 if cuda_available() else 0.0
        env = {
            "pool_size": int(os.environ.get("ASSAY_POOL_SIZE", 0)) or None,
            "num_gpus": float(os.environ["ASSAY_NUM_GPUS"]) if "ASSAY_NUM_GPUS" in os.environ else None,
            "batch_size": int(os.environ.get("ASSAY_BATCH_SIZE", 0)) or None,
        }
        cores = cpu_count()
        kw: dict[str, Any] = {"num_gpus": None, "batch_size": 64 if gpus else 16,
                              "pool_size": gpu_count() if gpus else max(1, cores if cores <= 8 else cores // 2)}
        kw.update({k: v for k, v in env.items() if v is not None})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        total = cluster_gpu_count() if cluster_gpus is None else cluster_gpus
        kw["num_gpus"] = gpu_share(kw["pool_size"], total, kw["num_gpus"])
        return cls(**kw)


def gpu_share(actors: int, cluster_gpus: float, asked: float | None = None) -> float:
    """GPUs to ask per actor so that ``actors`` actors fit on ``cluster_gpus`` GPUs at once.

    Without an explicit ask: 0 on a cluster without GPUs, else ``min(1, cluster_gpus / actors)`` rounded down to
    1/10,000 (Ray's granularity), e.g. 3 workers on 1 GPU ask 0.3333 each. An explicit ``asked`` is kept when
    ``actors × asked`` fits, else ``UserError`` says what would fit (Ray would otherwise wait forever).
    """
    if actors < 1:
        raise UserError(f"need at least one worker, got {actors}")
    if asked is None:
        if cluster_gpus <= 0:
            return 0.0
        return min(1.0, math.floor(cluster_gpus / actors * 10_000) / 10_000)
    if asked < 0:
        raise UserError(f"GPUs per actor must be >= 0, got {asked:g}")
    if asked > 0 and actors * asked > cluster_gpus + 1e-9:
        fit = math.floor(cluster_gpus / actors * 10_000) / 10_000
        hint = (f"ask at most {fit:g} GPU per actor (ASSAY_NUM_GPUS / --num-gpus) or use fewer workers"
                if fit > 0 else "this cluster has no GPU: ask 0 GPUs (ASSAY_NUM_GPUS=0)")
        raise UserError(f"{actors} workers x {asked:g} GPU each need {actors * asked:g} GPUs but the cluster has "
                        f"{cluster_gpus:g}; {hint}")
    return float(asked)


def cluster_gpu_count() -> float:
    """GPUs of the connected Ray cluster (all nodes), else of this machine (0 without CUDA)."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0))
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    if not cuda_available():
        return 0.0
    import torch

    return float(torch.cuda.device_count())


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


def auth_token_path() -> Path:
    """Where Ray reads its auth token from a file: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def auth_token_available() -> bool:
    """True when Ray will find a token: ``$RAY_AUTH_TOKEN`` or the token file."""
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or auth_token_path().exists()


def ensure_auth_token() -> None:
    """Make sure a token exists for a *local* Ray instance that this process starts (never for a cluster it joins).

    A local instance listens on loopback only (:func:`loopback_only`), and token auth stays on all the same: every
    user and process of this machine reaches loopback. A new random token (mode 0600) is written to
    :func:`auth_token_path` when none is configured. A cluster joined through
    ``RAY_ADDRESS`` has its own token, which a fresh random one could never match: see :func:`init_ray`.
    """
    if auth_token_available():
        return
    path = auth_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)


def cluster_token_hint(address: str) -> str:
    """How to give this process the token of the cluster at ``address``."""
    return (f"the Ray cluster at {address} uses token auth: give this process the cluster's token, either "
            f"RAY_AUTH_TOKEN=<token> or the token in {auth_token_path()} (RAY_AUTH_TOKEN_PATH); on the head node "
            "`ray get-auth-token` prints it")


def _refresh_ray_config() -> None:
    """Make an already-imported Ray see the current ``RAY_AUTH_MODE`` (Ray caches its config at import).

    Ray has no public API for this; it is a no-op when ``RAY_AUTH_MODE`` was set before Ray was imported.
    """
    try:
        from ray._raylet import Config  # private: no public equivalent exists

        Config.initialize("")
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


# Ray's switch for its single-machine mode (on by default only on macOS/Windows): node address 127.0.0.1 stays
# 127.0.0.1 instead of being replaced by this machine's network address.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray instance starts in this process: keep it on loopback.

    Ray replaces a node address of 127.0.0.1 by this machine's network address unless it runs in its
    single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); with the network address its gRPC servers
    (GCS, raylet, workers) listen on ``*`` and its Prometheus exporters on 0.0.0.0. With the node on 127.0.0.1,
    Ray binds all of them to 127.0.0.1. Ray reads that variable once, at import, so the constant it was read into is
    set for the start and restored after (private: no public equivalent); the processes Ray starts get the node
    address on their command lines and need nothing else.
    """
    try:
        from ray._private import ray_constants  # private: no public equivalent
    except ImportError:  # pragma: no cover - other Ray versions
        yield
        return
    old = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


def verbose_requested() -> bool:
    """``assay --verbose`` (or ``ASSAY_VERBOSE=1``): show Ray's own logs in the terminal."""
    return os.environ.get("ASSAY_VERBOSE", "").lower() in ("1", "true", "yes")


_NATIVE_LOG: Path | None = None


def quiet_native_logs() -> Path | None:
    """Send what Ray's C++ core writes straight to file descriptor 2 (``core_worker.cc … max_restarts > 0`` and
    the like) to a log file, while Python's ``sys.stderr`` (errors, progress bars) keeps the terminal.

    Only when ``sys.stderr`` is the process's real stderr (not under a test's capture); returns the log path, or
    None when nothing was changed. Idempotent.
    """
    global _NATIVE_LOG
    if _NATIVE_LOG is not None:
        return _NATIVE_LOG
    if sys.stderr is not sys.__stderr__:
        return None
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    import tempfile

    path = Path(tempfile.gettempdir()) / f"assay-{os.getuid() if hasattr(os, 'getuid') else 0}-ray-native.log"
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    _NATIVE_LOG = path
    return path


def init_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
             object_store_memory: int | None = None, verbose: bool | None = None) -> None:
    """Connect to (or start) Ray once per process; later calls are no-ops.

    Parameters
    ----------
    address : str, optional
        Cluster address; default ``$RAY_ADDRESS``, else a new local instance listening on 127.0.0.1 only.
    num_cpus : int, optional
        CPUs for a new local instance (default: all).
    dashboard : bool
        Start the dashboard of a new local instance (bound to 127.0.0.1).
    verbose : bool, optional
        Show Ray's own log lines (driver and workers) in the terminal; default :func:`verbose_requested`.
        Otherwise Ray logs errors only to its log files.

    Raises
    ------
    UserError
        Joining a cluster in token mode without a token: Assay never invents one for a cluster it joins (it could not
        match); the message says how to provide the cluster's token.
    """
    import ray

    if ray.is_initialized():
        return
    verbose = verbose_requested() if verbose is None else verbose
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        _join(ray, address, verbose)
        quiet_ray_data(verbose)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"].lower() == "token":
        ensure_auth_token()
    _refresh_ray_config()
    if not verbose:
        quiet_native_logs()
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.ERROR)
    with loopback_only():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            _node_ip_address="127.0.0.1",  # private, but the only way to name the node's address
            dashboard_host="127.0.0.1",
            object_store_memory=object_store_memory,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=verbose,
            configure_logging=True,
        )
    quiet_ray_data(verbose)


# Below this many images, with no Ray instance to join, a job runs in-process: a cold local Ray start (the instance,
# its workers, each actor's model load) costs more than Ray's actors (one process per core) win back per image.
# bench/embed.py measures both paths on the default backbone (2,000 images, 2 cores) and records the break-even
# (``summary.break_even_images``): 6,753-8,936 images over its 3 rounds; this sits below all of them.
IN_PROCESS_BELOW = 5000


def ray_running() -> str | None:
    """What a job can join without a cold start: ``"this process"`` when Ray is initialised here, the address in
    ``$RAY_ADDRESS`` (other than ``local``), else None. Never imports Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return "this process"
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address and address != "local" else None


def choose_path(n_images: int, local: bool | None, *, below: int = IN_PROCESS_BELOW) -> tuple[bool, str]:
    """(run in-process?, one line saying which path runs and why) for a job over ``n_images`` images.

    ``local`` True / False forces in-process / Ray. None (the default): Ray when there is one to join
    (:func:`ray_running`), else in-process below ``below`` images, else a new local Ray instance.
    """
    if local is True:
        return True, "in-process (asked for with --local)"
    joined = ray_running()
    if local is False:
        return False, "on Ray (asked for with --ray)" + (f", joining {joined}" if joined else "")
    if joined:
        return False, f"on Ray, joining {'the Ray instance of ' if joined == 'this process' else ''}{joined}"
    if n_images >= below:
        return False, (f"on a new local Ray instance: {n_images:,} images >= {below:,}, where Ray's start-up pays "
                       "for itself (--local runs in-process)")
    return True, (f"in-process: {n_images:,} images < {below:,} and no running Ray to join, so a cold Ray start "
                  "would cost more than it wins (--ray forces Ray)")


def quiet_ray_data(verbose: bool = False) -> None:
    """Ray Data without its console chatter: no progress bars (ours replace them), no execution-start banner, and
    (unless ``verbose``) its console handler raised to ERROR, so INFO lines such as ``streaming_executor … Dataset …
    execution finished`` stay in the session's ``ray-data.log`` instead of the terminal."""
    try:
        from ray.data import DataContext  # importing ray.data installs its logging config (a console handler)

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # pragma: no cover - older Ray
        return
    for handler in logging.getLogger("ray.data").handlers:
        if "File" not in type(handler).__name__:  # the console, not ray-data.log
            handler.setLevel(logging.INFO if verbose else logging.ERROR)


def _join(ray: Any, address: str, verbose: bool) -> None:
    """Join the cluster at ``address``: with its token, never a new one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not auth_token_available():
        raise UserError(f"no auth token for RAY_ADDRESS={address}: {cluster_token_hint(address)}")
    if "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    _refresh_ray_config()
    if not verbose:
        quiet_native_logs()
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.ERROR)
    auth_error = getattr(ray.exceptions, "AuthenticationError", None) or RuntimeError
    # a head on loopback (`assay cluster up`) is joined on loopback: without this Ray swaps 127.0.0.1 for the
    # machine's network address, where nothing listens
    loop = address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    try:
        with loopback_only() if loop else contextlib.nullcontext():
            ray.init(address=address, logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose,
                     **({"_node_ip_address": "127.0.0.1"} if loop else {}))
    except auth_error as e:
        raise UserError(f"cannot join RAY_ADDRESS={address} ({str(e).splitlines()[0]}): "
                        f"{cluster_token_hint(address)}") from e


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
