"""``assay app``: start the Streamlit planning app (``apps/planner/app.py``) on a workspace.

The server binds 127.0.0.1 unless ``--host`` is given; usage statistics are off, tracebacks are never sent to the
browser (``client.showErrorDetails=none``), and uploads are capped at 200 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import DEFAULT_WORKSPACE, WorkspaceOpt

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
            ) -> None:
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
    print(f"Assay planner on http://{host or '127.0.0.1'}:{port} (workspace {uri}); Ctrl+C stops it.",
          file=sys.stderr, flush=True)
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("app")(app_cmd)
