"""`assay cluster up|down|status` as a user types them (each its own process): a stale state file never gets
another process signalled, status without a head is one line and exit 2, and the head listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import fake_head, start_time

ROOT = Path(__file__).resolve().parents[3]
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")


def assay(*args: str, folder: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN", "ASSAY_DEBUG"))}
    env.update(ASSAY_CLUSTER_DIR=str(folder), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "apps.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def impostor(tmp_path):
    """A process that looks like a head from its command line but is only a sleeper, as a reused pid or a head's
    stale file would name it."""
    proc, temp = fake_head(tmp_path)
    yield proc, temp
    proc.kill()
    proc.wait()


def write_state(folder: Path, pid: int, temp: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "auth_token").write_text("not-a-real-token")
    st = {"pid": pid, "address": "127.0.0.1:1", "dashboard": "http://127.0.0.1:1", "python": sys.executable,
          "auth": True, "token_path": str(folder / "auth_token"), "temp_dir": temp, "log": str(folder / "head.log"),
          **extra}
    (folder / "cluster.json").write_text(json.dumps(st))
    return folder / "cluster.json"


@linux_only
def test_cluster_down_never_signals_a_pid_that_is_no_longer_the_head(tmp_path, impostor):
    proc, temp = impostor
    folder = tmp_path / "cluster"
    # the head's file, its pid now reused by a process started later (another start time)
    state = write_state(folder, proc.pid, temp, start_time=start_time(proc.pid) - 1)
    out = assay("cluster", "down", "--json", folder=folder)
    assert out.returncode == 0, out.stderr
    assert proc.poll() is None, "cluster down signalled a process that is not the head"
    res = json.loads(out.stdout)
    assert res["stopped"] is False and "another process" in res["reason"] and not state.exists()


@linux_only
def test_cluster_down_never_signals_a_process_whose_command_is_not_a_ray_head(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        folder = tmp_path / "cluster"
        write_state(folder, sleeper.pid, "/tmp/assay-ray-1")  # an old file: no start time recorded
        out = assay("cluster", "down", folder=folder)
        assert out.returncode == 0, out.stderr
        assert sleeper.poll() is None, "cluster down signalled a process that is not the head"
        assert "no local head" in out.stdout
    finally:
        sleeper.kill()
        sleeper.wait()


def test_cluster_status_without_a_head_is_one_line_and_exit_2(tmp_path):
    out = assay("cluster", "status", folder=tmp_path / "none")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: no local head"), out.stderr


@linux_only
def test_cluster_status_with_a_head_that_does_not_answer_is_one_line_and_exit_2(tmp_path, impostor):
    proc, temp = impostor
    folder = tmp_path / "cluster"
    write_state(folder, proc.pid, temp, start_time=start_time(proc.pid))  # alive, but no Jobs API answers
    out = assay("cluster", "status", folder=folder)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.count("\n") == 1 and "does not answer at http://127.0.0.1:1" in out.stderr, out.stderr


@linux_only
@pytest.mark.slow
def test_cluster_up_listens_on_loopback_only_and_down_stops_it(tmp_path):
    from tests.procs import beyond_loopback, command, descendants, listening

    folder = tmp_path / "cluster"
    up = assay("cluster", "up", "--num-cpus", "1", "--json", folder=folder, timeout=420)
    st = json.loads((folder / "cluster.json").read_text()) if (folder / "cluster.json").exists() else {}
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        head = descendants(st["pid"])
        ports = listening(head)
        assert len(ports) >= 6, ports  # GCS, raylet, agents, metrics exporters, dashboard: all seen
        assert beyond_loopback(head) == []
        assert st["auth"] is True and Path(st["token_path"]).exists()  # token auth stays on
        status = assay("cluster", "status", "--json", folder=folder)
        assert status.returncode == 0 and json.loads(status.stdout)["jobs"] == 0, status.stderr[-3000:]
    finally:
        down = assay("cluster", "down", "--json", folder=folder)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True, down.stderr[-3000:]
    assert gone(head), [command(p) for p in head if running(p)]


def running(pid: int) -> bool:
    """``pid`` exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gone(pids: set[int], timeout_s: float = 20.0) -> bool:
    """True once none of ``pids`` runs (SIGKILLed processes take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(running(p) for p in pids)
