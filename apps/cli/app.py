"""``assay app``: start the Streamlit planning app (``apps/planner/app.py``) on a workspace.

The server binds 127.0.0.1 unless ``--host`` is given; usage statistics are off, tracebacks are never sent to the
browser (``client.showErrorDetails=none``), and uploads are capped at 200 MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, WorkspaceOpt

APP = Path(__file__).resolve().parents[1] / "planner" / "app.py"


def streamlit_command(port: int = 8501, host: str = "127.0.0.1", *, headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line that serves the planner (the workspace travels in ``ASSAY_WORKSPACE``)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none",
            "--client.toolbarMode", "minimal",
            "--server.fileWatcherType", "none",
            "--server.maxUploadSize", "200"]


def app_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
            port: Annotated[int, typer.Option("--port", "-p", help="Port to serve on.")] = 8501,
            host: Annotated[Optional[str], typer.Option(
                "--host", help="Address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the app "
                               "to the network, without authentication).")] = None,
            browser: Annotated[bool, typer.Option("--browser/--no-browser", help="Open a browser tab.")] = False,
            as_json: JsonOpt = False) -> None:
    """Start the planning app (data requirements, collection plan, targeted selection, active learning,
    compression) on WORKSPACE in a browser."""
    from actors.core.workspace import Workspace

    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1-65535, got {port}")
    ws = Workspace(workspace)  # validates the URI
    if ws.is_local and Path(ws.uri).exists() and not Path(ws.uri).is_dir():
        raise UserError(f"--workspace {ws.uri}: not a directory")
    uri = str(Path(ws.uri).resolve()) if ws.is_local and "://" not in ws.uri else ws.uri
    env = dict(os.environ, ASSAY_WORKSPACE=uri)
    cmd = streamlit_command(port, host or "127.0.0.1", headless=not browser)
    url = f"http://{host or '127.0.0.1'}:{port}"
    if as_json:  # one JSON line when serving starts (stdout), the server's own output stays on stderr
        print(json.dumps({"url": url, "workspace": uri, "pid": os.getpid()}), flush=True)
    else:
        print(f"Assay planner on {url} (workspace {uri}); Ctrl+C (or kill {os.getpid()}) stops it.",
              file=sys.stderr, flush=True)
    code = serve(cmd, env, quiet_stdout=as_json)
    if code:
        raise typer.Exit(code)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 15.0  # how long a server asked to stop may take before it is killed


def serve(cmd: list[str], env: dict[str, str], *, quiet_stdout: bool = False) -> int:
    """Run the server ``cmd`` until it exits and return its exit code (0 when it stopped because this process was
    asked to stop).

    SIGTERM and SIGINT sent to this process (``kill PID``, Ctrl+C) are passed on to the server, which is then waited
    for (killed after ``GRACE_S`` seconds): when this returns, nothing serves the port any more. ``quiet_stdout``:
    the server's stdout goes to stderr (``--json``: stdout holds only the JSON line).
    """
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr if quiet_stdout else None)
    stopping: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(time.monotonic())
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = _install(forward)
    try:
        code = _wait(proc, stopping)
    finally:
        _install(previous)
        if proc.poll() is None:  # leaving on an exception: never leave the server behind
            proc.kill()
            proc.wait()
    return 0 if stopping else code


def _install(handler) -> dict:
    """Set ``handler`` (one callable, or a dict signal -> handler) for ``STOP_SIGNALS``; the previous handlers.
    Only the main thread may set handlers: elsewhere nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else dict.fromkeys(STOP_SIGNALS, handler)
    return {s: signal.signal(s, h) for s, h in handlers.items()}


def _wait(proc: subprocess.Popen, stopping: list[float]) -> int:
    """``proc``'s exit code; killed once ``GRACE_S`` has passed since the first stop signal."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > GRACE_S:
                proc.kill()


def register(app: typer.Typer) -> None:
    app.command("app")(app_cmd)
