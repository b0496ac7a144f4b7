"""actors/core/runtime.py: GPU asks that fit the cluster, tokens only for local instances, Ray's logs kept quiet."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from actors.core import runtime
from actors.core.errors import UserError
from actors.core.runtime import Resources, gpu_share

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------------ GPU asks
@pytest.mark.parametrize("actors,gpus,want", [(1, 1, 1.0), (2, 4, 1.0), (4, 1, 0.25), (3, 1, 0.3333), (8, 3, 0.375),
                                              (5, 0, 0.0)])
def test_more_workers_than_gpus_ask_a_fraction_that_fits_instead_of_one_each(actors, gpus, want):
    share = gpu_share(actors, gpus)
    assert share == pytest.approx(want) and actors * share <= gpus + 1e-12


def test_an_explicit_gpu_ask_that_cannot_fit_is_a_clear_error_not_a_hang():
    assert gpu_share(4, 2, 0.5) == 0.5
    with pytest.raises(UserError, match=r"3 workers x 1 GPU each need 3 GPUs but the cluster has 2; ask at most 0\.66"):
        gpu_share(3, 2, 1.0)
    with pytest.raises(UserError, match="no GPU"):
        gpu_share(2, 0, 1.0)
    assert gpu_share(2, 0, 0.0) == 0.0


def test_mine_workers_resources_share_the_cluster_gpus(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.delenv("ASSAY_NUM_GPUS", raising=False)
    assert Resources.auto(pool_size=6, cluster_gpus=2).num_gpus == pytest.approx(0.3333)
    assert Resources.auto(pool_size=2, cluster_gpus=2).num_gpus == 1.0
    monkeypatch.setenv("ASSAY_NUM_GPUS", "1")
    with pytest.raises(UserError, match="6 workers x 1 GPU"):
        Resources.auto(pool_size=6, cluster_gpus=2)


# ------------------------------------------------------------------------------------------------ auth tokens
@pytest.fixture
def fake_ray(monkeypatch, tmp_path):
    """A stand-in ``ray`` module recording ``init`` calls; HOME and the token sources point at tmp_path."""
    calls: list[dict] = []

    class AuthenticationError(RuntimeError):
        pass

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw),
                                 exceptions=types.SimpleNamespace(AuthenticationError=AuthenticationError))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "quiet_native_logs", lambda: None)
    fake.calls = calls
    return fake


def test_joining_a_cluster_through_ray_address_never_creates_a_token(fake_ray, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(UserError, match=r"RAY_ADDRESS=10\.0\.0\.5:6379.*RAY_AUTH_TOKEN=<token>.*auth_token"):
        runtime.init_ray()
    assert not (tmp_path / ".ray" / "auth_token").exists() and fake_ray.calls == []


def test_joining_a_cluster_uses_the_token_it_is_given(fake_ray, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-clusters-token")
    runtime.init_ray(address="10.0.0.5:6379")
    assert fake_ray.calls[0]["address"] == "10.0.0.5:6379" and not (tmp_path / ".ray").exists()


def test_a_cluster_that_rejects_us_says_how_to_give_its_token(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    def reject(**kw):
        raise fake_ray.exceptions.AuthenticationError("Authentication failed\nmore")

    fake_ray.init = reject
    with pytest.raises(UserError, match=r"cannot join .*Authentication failed\).*RAY_AUTH_TOKEN"):
        runtime.init_ray(address="10.0.0.5:6379")


def test_a_local_instance_gets_a_private_token_when_none_exists(fake_ray, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    runtime.init_ray(num_cpus=1)
    token = tmp_path / ".ray" / "auth_token"
    assert token.exists() and oct(token.stat().st_mode & 0o777) == "0o600"
    assert fake_ray.calls[0]["address"] == "local" and fake_ray.calls[0]["log_to_driver"] is False


def test_no_private_ray_api_where_a_public_one_exists():
    # ray._raylet.Config.initialize (re-read RAY_AUTH_MODE after import) and ray._private.ray_constants (Ray's
    # single-machine mode, which keeps a local instance on loopback: runtime.loopback_only) have no public equivalent
    for path in [*(ROOT / "actors").rglob("*.py"), *(ROOT / "apps" / "cli").rglob("*.py")]:
        for line in path.read_text().splitlines():
            if (("ray._private" in line and "import ray_constants" not in line)
                    or ("ray._raylet" in line and "import Config" not in line)):
                pytest.fail(f"{path.relative_to(ROOT)}: {line.strip()}")


# ------------------------------------------------------------------------------------------------ Ray's own logs
def test_ray_core_worker_error_lines_stay_out_of_the_terminal(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, ray
        from actors.core.runtime import init_ray
        init_ray(num_cpus=1, object_store_memory=80 * 2**20)

        @ray.remote(max_restarts=1)
        class A:  # constructor arguments in the object store + max_restarts > 0: core_worker.cc logs an error
            def __init__(self, x):
                self.n = len(x)
            def n_(self):
                return self.n

        print(ray.get(A.remote(np.zeros(1_000_000, np.uint8)).n_.remote()))
        ray.shutdown()
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    env.pop("ASSAY_VERBOSE", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1000000"
    assert "core_worker.cc" not in out.stderr and "max_restarts" not in out.stderr, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ loopback only
LOCAL_INSTANCE = textwrap.dedent("""
    import json, os, sys, ray
    from actors.core.runtime import init_ray
    init_ray(num_cpus=1, object_store_memory=80 * 2**20)

    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote()) == 1  # a worker runs (and listens) too
    node = ray.nodes()[0]
    print(json.dumps({"node_ip": node["NodeManagerAddress"], "metrics_port": node["MetricsExportPort"],
                      "auth_mode": os.environ["RAY_AUTH_MODE"]}), flush=True)
    sys.stdin.read()  # until the test has looked at the sockets
    ray.shutdown()
""")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_local_instance_listens_on_loopback_only_metrics_exporter_included(tmp_path):
    import json
    import os
    import time

    from tests.procs import beyond_loopback, descendants, listening

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    for k in ("RAY_ADDRESS", "ASSAY_VERBOSE", "RAY_AUTH_MODE"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_INSTANCE], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:] if proc.poll() is not None else "no output"
        info = json.loads(line)
        ours = descendants(proc.pid)
        deadline = time.monotonic() + 60
        while info["metrics_port"] not in {p for _, _, p in listening(ours)} and time.monotonic() < deadline:
            time.sleep(0.5)  # the agent's Prometheus exporter comes up a moment after init
            ours = descendants(proc.pid)
        ports = listening(ours)
        assert info["node_ip"] == "127.0.0.1" and info["auth_mode"] == "token"  # token auth stays on
        assert info["metrics_port"] in {p for _, _, p in ports}, ports
        assert len(ports) >= 4, ports  # GCS, raylet, driver, worker, agents: all of them seen
        assert beyond_loopback(ours) == []
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def test_choose_path_in_process_for_small_jobs_ray_to_join_or_large(monkeypatch):
    import actors.core.runtime as rt

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(rt, "ray_running", lambda: None)
    local, why = rt.choose_path(120, None, below=2500)
    assert local and why.startswith("in-process: 120 images < 2,500")
    local, why = rt.choose_path(2500, None, below=2500)
    assert not local and "new local Ray instance" in why
    assert rt.choose_path(10**6, True) == (True, "in-process (asked for with --local)")
    assert rt.choose_path(3, False)[0] is False
    monkeypatch.setattr(rt, "ray_running", lambda: "127.0.0.1:6379")
    local, why = rt.choose_path(3, None)
    assert not local and why == "on Ray, joining 127.0.0.1:6379"


def test_ray_running_reads_the_environment_without_importing_ray(monkeypatch):
    import sys

    import actors.core.runtime as rt

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        assert rt.ray_running() == "this process"
        return
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert rt.ray_running() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert rt.ray_running() == "10.0.0.5:6379"
