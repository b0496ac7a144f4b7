"""`assay app` as a real process: stopping it by its pid stops the Streamlit server it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP_DEADLINE_S = 300  # a safety net for a stuck start on a loaded machine, not a measurement


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_serving(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while not _serving(port):
        if proc.poll() is not None:
            pytest.fail(f"assay app exited with {proc.returncode} before serving: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail("assay app never served its port")
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_assay_app_by_its_pid_stops_the_streamlit_server(tmp_path, sig):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli.main", "app", "-w", str(tmp_path), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: the cleanup reaches a stray server
    try:
        _wait_until_serving(proc, port)
        os.kill(proc.pid, sig)  # the assay process only, as `kill PID` does
        proc.wait(timeout=STARTUP_DEADLINE_S)
        assert not _serving(port)  # the server was stopped and waited for before assay exited
        assert proc.returncode == 0  # stopped on request
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
