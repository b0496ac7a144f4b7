"""``assay cluster up|down|status``: a local Ray head for development, and the Jobs-API client every submit uses.

The local head (:func:`cluster_up`) is ``ray start --head --block`` run in this project's environment (so job
entrypoints find the project's Python), every port bound on 127.0.0.1 and chosen free, the dashboard on 127.0.0.1
(the Jobs API lives there), and Ray token authentication on: Ray's gRPC ports listen on every interface even with the
node address on 127.0.0.1, so the token is what keeps them closed. Its state (addresses, pid, interpreter, token
path) is ``$ASSAY_CLUSTER_DIR/cluster.json`` (default ``~/.assay/cluster``); the token is the cluster's own
(``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` when given, else a new one in the state folder, mode 0600).

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
    """The local head's state when its ``ray start`` process is alive, else None."""
    f = state_dir() / "cluster.json"
    if not f.exists():
        return None
    st = json.loads(f.read_text())
    return st if _alive(st["pid"]) else None


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
    if token:
        env["RAY_AUTH_TOKEN_PATH"] = token
    log = open(folder / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(REPO))
    st = {"pid": proc.pid, "address": f"127.0.0.1:{ports['port']}", "dashboard": f"http://127.0.0.1:"
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
    process group (only the processes this head started) if anything is left after ``timeout_s``."""
    f = state_dir() / "cluster.json"
    if not f.exists():
        return {"stopped": False, "reason": "no local head"}
    st = json.loads(f.read_text())
    pid = st["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        t0 = time.monotonic()
        while _alive(pid) and time.monotonic() - t0 < timeout_s:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGKILL)  # leftovers of this head's session only (start_new_session: pgid == pid)
    except ProcessLookupError:
        pass
    if st.get("temp_dir", "").startswith("/tmp/assay-ray-"):
        shutil.rmtree(st["temp_dir"], ignore_errors=True)  # this head's own session logs and sockets
    f.unlink()
    return {"stopped": True, "pid": pid}


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
    """Say whether the local head runs, where, and how many jobs it has seen."""
    from apps.cli.output import console, emit

    st = local_cluster()
    out: dict[str, Any] = {"running": st is not None, **(st or {})}
    if st:
        client, _ = job_client(st["dashboard"])
        out["jobs"] = len(client.list_jobs())
    emit(out, as_json, lambda r: console.print(
        f"local head: {r['address']} (dashboard {r['dashboard']}, auth {'token' if r['auth'] else 'OFF'}), "
        f"{r['jobs']} jobs" if r["running"] else "no local head", markup=False))


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
