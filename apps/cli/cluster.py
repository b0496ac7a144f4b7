"""``assay cluster up|down|status``: a local Ray head for development, and the Jobs-API client every submit uses.

The local head (:func:`cluster_up`) is ``ray start --head --block`` run in this project's environment (so job
entrypoints find the project's Python), in Ray's single-machine mode so that the node address stays 127.0.0.1 and
every port (GCS, raylet, agents, metrics exporters, dashboard with the Jobs API) listens on 127.0.0.1 only, each
chosen free; Ray token authentication stays on (every local user reaches loopback). Its state (addresses, pid and
start time, interpreter, token path) is ``$ASSAY_CLUSTER_DIR/cluster.json`` (default ``~/.assay/cluster``); the
token is the cluster's own (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` when given, else a new one in the state
folder, mode 0600). A pid in that file is trusted only while the process with that pid is still that head (same
start time, a ``ray start --head`` command line with the head's temp dir): a stale file never gets another process
signalled.

:func:`job_client` finds a cluster in this order: ``--address``, ``RAY_ADDRESS``, the local head's state. It turns
token auth on unless that cluster was started with ``--no-auth``, and uses the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH``, the local head's token file, or Ray's ``~/.ray/auth_token``); it never makes one up.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from actors.core.errors import UserError
from actors.core.runtime import SINGLE_MACHINE_ENV
from apps.cli.options import JsonOpt

REPO = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv/", ".git/", "assay-workspace/", "bench/out/", "*.egg-info/", "__pycache__/", ".pytest_cache/"]
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
              "object-manager-port")

cluster_app = typer.Typer(help="A local Ray head for development (127.0.0.1, token auth on).", no_args_is_help=True)


# ------------------------------------------------------------------------------------------------ local head state
def state_dir() -> Path:
    return Path(os.environ.get("ASSAY_CLUSTER_DIR") or Path.home() / ".assay" / "cluster").expanduser()


def local_cluster() -> dict | None:
    """The local head's state when its ``ray start`` process is alive and still that head, else None."""
    st = _read_state()
    return st if st and head_mismatch(st) is None else None


def _read_state() -> dict | None:
    f = state_dir() / "cluster.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: not a readable head state ({e}); delete it if no head runs") from None


def head_mismatch(st: dict) -> str | None:
    """None when pid ``st["pid"]`` is the head that ``st`` describes; else why not (gone, or another process now:
    a different start time, or a command line that is not this head's ``ray start --head``)."""
    pid = st["pid"]
    if not _alive(pid):
        return f"pid {pid} is not running"
    started = _start_time(pid)
    if st.get("start_time") is not None and started is not None and started != st["start_time"]:
        return f"pid {pid} is another process (started at {started} ticks, the head at {st['start_time']})"
    cmd = _cmdline(pid)
    if cmd is not None and not _is_head_command(cmd, st):
        return f"pid {pid} is another process ({' '.join(cmd)[:120]!r})"
    return None


def _is_head_command(cmd: list[str], st: dict) -> bool:
    """``cmd`` is ``… ray start --head … --temp-dir=<this head's temp dir>``."""
    has_ray = any(Path(a).name == "ray" for a in cmd[:2])
    return has_ray and "start" in cmd and "--head" in cmd and f"--temp-dir={st.get('temp_dir')}" in cmd


def _cmdline(pid: int) -> list[str] | None:
    """The arguments of ``pid`` (None where the OS does not say)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``); None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _token_path(folder: Path, auth: bool) -> str | None:
    if not auth or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    path = folder / "auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return str(path)


def cluster_up(*, num_cpus: int | None = None, num_gpus: int | None = None, auth: bool = True,
               timeout_s: float = 180.0, tries: int = 2) -> dict:
    """Start the local head (see module doc) and wait until ``ray start`` reported success and its Jobs API
    answers; returns its state. A head that fails to start (Ray gives its raylet 30 s, which a loaded machine can
    miss) is stopped and started again on fresh ports, up to ``tries`` times."""
    if st := local_cluster():
        raise UserError(f"a local head is already running (pid {st['pid']}, {st['dashboard']}); "
                        "`assay cluster down` first")
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    token = _token_path(folder, auth)
    t0 = time.monotonic()
    for attempt in range(1, tries + 1):
        proc, st = _start_head(folder, token, auth, num_cpus, num_gpus)
        why = _wait_ready(proc, st, timeout_s)
        if why is None:
            st["startup_s"] = round(time.monotonic() - t0, 1)
            return st
        cluster_down()
        if attempt == tries:
            raise RuntimeError(f"the Ray head did not come up ({why}); see {folder / 'head.log'}")
    raise AssertionError("unreachable")


def _start_head(folder: Path, token: str | None, auth: bool, num_cpus: int | None,
                num_gpus: int | None) -> tuple[subprocess.Popen, dict]:
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    temp = Path("/tmp") / f"assay-ray-{ports['port']}"  # short: Ray's unix sockets live under it
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats",
           *[f"--{k}={v}" for k, v in ports.items()]]
    cmd += [f"--num-cpus={num_cpus}"] if num_cpus is not None else []
    cmd += [f"--num-gpus={num_gpus}"] if num_gpus is not None else []
    env = dict(os.environ, RAY_AUTH_MODE="token" if auth else "disabled",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env[SINGLE_MACHINE_ENV] = "0"  # node address 127.0.0.1 kept (not replaced by the network address): loopback only
    if token:
        env["RAY_AUTH_TOKEN_PATH"] = token
    log = open(folder / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(REPO))
    st = {"pid": proc.pid, "start_time": _start_time(proc.pid), "address": f"127.0.0.1:{ports['port']}", "dashboard": f"http://127.0.0.1:"
          f"{ports['dashboard-port']}", "python": sys.executable, "auth": auth, "token_path": token,
          "temp_dir": str(temp), "log": str(folder / "head.log"), "started_at": time.time()}
    _atomic_json(folder / "cluster.json", st)
    return proc, st


def _wait_ready(proc: subprocess.Popen, st: dict, timeout_s: float) -> str | None:
    """None once ``ray start`` said "Ray runtime started" and the Jobs API answers; else why not."""
    t0, err = time.monotonic(), "no answer"
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            return f"`ray start` exited with {proc.returncode}"
        if "Ray runtime started" in Path(st["log"]).read_text(errors="replace"):
            try:
                job_client(st["dashboard"])
                return None
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - not up yet
                err = str(e).splitlines()[0] if str(e) else type(e).__name__
        time.sleep(1.0)
    return f"not ready after {timeout_s:.0f} s: {err}"


def cluster_down(timeout_s: float = 60.0) -> dict:
    """Stop the local head: SIGTERM to its ``ray start`` process (which stops what it started), then SIGKILL to its
    process group (only the processes this head started) if anything is left after ``timeout_s``.

    The pid comes from a file, so it is checked first (:func:`head_mismatch`): when that process is no longer this
    head (it died, and the pid may now be someone else's), nothing is signalled and only the stale file is removed.
    """
    f = state_dir() / "cluster.json"
    st = _read_state()
    if st is None:
        return {"stopped": False, "reason": "no local head"}
    pid = st["pid"]
    if why := head_mismatch(st):
        f.unlink()
        return {"stopped": False, "pid": pid, "reason": f"no local head: {why}; removed the stale {f}"}
    _terminate(pid, timeout_s)
    try:
        os.killpg(pid, signal.SIGKILL)  # leftovers of this head's session only (start_new_session: pgid == pid)
    except ProcessLookupError:
        pass
    if st.get("temp_dir", "").startswith("/tmp/assay-ray-"):
        shutil.rmtree(st["temp_dir"], ignore_errors=True)  # this head's own session logs and sockets
    f.unlink()
    return {"stopped": True, "pid": pid}


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM to ``pid``, then wait (reaping it when it is our child) until it is gone or ``timeout_s`` passed."""
    os.kill(pid, signal.SIGTERM)
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < timeout_s:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.3)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ Jobs API client
def resolve_address(address: str | None) -> tuple[str, dict | None]:
    """(dashboard URL or address for JobSubmissionClient, the local head's state when it is that cluster)."""
    local = local_cluster()
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        if not local:
            raise UserError("no cluster: pass --address, set RAY_ADDRESS, or start one with `assay cluster up`")
        return local["dashboard"], local
    if local and address in (local["address"], local["dashboard"], f"ray://{local['address']}"):
        return local["dashboard"], local
    return address, None


def join_local_head() -> dict | None:
    """Point this process's Ray at the running local head (``assay cluster up``), with its token, when
    ``RAY_ADDRESS`` names no cluster and Ray is not initialised here: a job then joins it instead of paying a cold
    start. Returns the head's state, or None (nothing changed)."""
    from actors.core.runtime import ray_running

    if ray_running() or os.environ.get("RAY_ADDRESS"):  # RAY_ADDRESS=local: the user asked for a new instance
        return None
    local = local_cluster()
    if local is None:
        return None
    os.environ["RAY_ADDRESS"] = local["address"]
    _auth_env(local)
    return local


def _auth_env(local: dict | None) -> None:
    """Make Ray's client send the cluster's token (never invents one); must run before Ray reads its config."""
    if local is not None and not local.get("auth", True):
        os.environ["RAY_AUTH_MODE"] = "disabled"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    if local and local.get("token_path") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = local["token_path"]
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not Path(path).exists():
        raise UserError(f"token authentication is on but no token was found ({path}); set RAY_AUTH_TOKEN or "
                        "RAY_AUTH_TOKEN_PATH to the cluster's token (`ray get-auth-token` on the head prints it)")
    try:  # Ray caches its config at import; make it see the mode set above
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        pass


def job_client(address: str | None = None):
    """(JobSubmissionClient, address) for the cluster :func:`resolve_address` finds, with its auth."""
    url, local = resolve_address(address)
    _auth_env(local)
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url), url


def submit_once(client, submission_id: str, *, tries: int = 3, **kw: Any) -> str:
    """``client.submit_job`` under a fixed ``submission_id``, retried when the connection drops (a loaded head's
    dashboard can): the id makes a retry idempotent, and a job that did get through is never submitted twice."""
    import requests

    for attempt in range(1, tries + 1):
        try:
            return client.submit_job(submission_id=submission_id, **kw)
        except requests.ConnectionError:
            if attempt == tries:
                raise
            time.sleep(2.0 * attempt)
            try:
                client.get_job_status(submission_id)
                return submission_id  # the first try reached the head
            except Exception:  # noqa: BLE001 - not there: submit again
                continue
    raise AssertionError("unreachable")


def runtime_env() -> dict:
    """Ship the project: the repository as ``working_dir`` in a source checkout, nothing when Assay is installed
    (an image built from ``platform/docker/Dockerfile``)."""
    env: dict[str, Any] = {"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                        "RAY_DEDUP_LOGS": "0"}}
    if (REPO / "pyproject.toml").exists() and (REPO / "apps" / "jobs.py").exists():
        env.update(working_dir=str(REPO), excludes=EXCLUDES)
    return env


def entrypoint(args: Sequence[str], python: str | None = None, address: str | None = None) -> str:
    """``<python> -m apps.jobs ARGS`` with the interpreter named: ``python``, ``$ASSAY_JOB_PYTHON``, the local
    head's interpreter when submitting there, else ``python`` (an image's own)."""
    if not python:
        local = local_cluster()
        python = os.environ.get("ASSAY_JOB_PYTHON") or (
            local["python"] if local and address in (None, local["dashboard"]) else "python")
    return " ".join(shlex.quote(a) for a in [python, "-m", "apps.jobs", *args])


# ------------------------------------------------------------------------------------------------ commands
@cluster_app.command("up")
def up_cmd(num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", help="CPUs the head offers.")] = None,
           num_gpus: Annotated[Optional[int], typer.Option("--num-gpus", help="GPUs the head offers.")] = None,
           no_auth: Annotated[bool, typer.Option(
               "--no-auth", help="Turn Ray token authentication off. UNSAFE: Ray's gRPC ports listen on every "
                                 "interface; anyone who reaches this machine can run code on it.")] = False,
           as_json: JsonOpt = False) -> None:
    """Start a local Ray head bound to 127.0.0.1 (free ports, dashboard on 127.0.0.1, token auth on)."""
    from apps.cli.output import console, emit

    if no_auth:
        print("warning: token authentication is OFF; Ray's ports are open to anyone who reaches this machine",
              file=sys.stderr)
    st = cluster_up(num_cpus=num_cpus, num_gpus=num_gpus, auth=not no_auth)
    emit(st, as_json, lambda s: console.print(
        f"Ray head up in {s['startup_s']} s: address {s['address']}, dashboard/Jobs API {s['dashboard']} "
        f"(auth {'token' if s['auth'] else 'OFF'}); submit with `assay submit STEP …`", markup=False))


@cluster_app.command("down")
def down_cmd(as_json: JsonOpt = False) -> None:
    """Stop the local head started by `assay cluster up` (only its processes)."""
    from apps.cli.output import console, emit

    emit(cluster_down(), as_json, lambda r: console.print("stopped" if r["stopped"] else r["reason"]))


@cluster_app.command("status")
def status_cmd(as_json: JsonOpt = False) -> None:
    """Say where the local head runs and how many jobs it has seen; exit 2 with one line when none answers."""
    from apps.cli.output import console, emit

    emit(cluster_status(), as_json, lambda r: console.print(
        f"local head: {r['address']} (dashboard {r['dashboard']}, auth {'token' if r['auth'] else 'OFF'}), "
        f"{r['jobs']} jobs", markup=False))


def cluster_status() -> dict:
    """The running local head's state and its number of jobs.

    Raises
    ------
    UserError
        No local head (no state, or a stale one naming a process that is no longer the head), or a head whose Jobs
        API does not answer; the message says which and what to do.
    """
    st = _read_state()
    if st is None:
        raise UserError(f"no local head ({state_dir() / 'cluster.json'} does not exist): start one with "
                        "`assay cluster up`")
    if why := head_mismatch(st):
        raise UserError(f"no local head: {why} (stale {state_dir() / 'cluster.json'}); `assay cluster down` "
                        "removes it, `assay cluster up` starts a head")
    try:
        client, _ = job_client(st["dashboard"])
        jobs = client.list_jobs()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - requests/Ray raise several types for a head that does not answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the local head (pid {st['pid']}) does not answer at {st['dashboard']}: {first}; "
                        "`assay cluster down` then `assay cluster up`") from None
    return {"running": True, **st, "jobs": len(jobs)}


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
