"""The FAISS install story: exactly one FAISS wheel, chosen by the `cpu` or `gpu` extra."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from actors.core import runtime
from actors.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs):
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs}


def test_faiss_only_in_extras_and_extras_exclusive():
    project = PYPROJECT["project"]
    assert not {n for n in _names(project["dependencies"]) if n.startswith("faiss")}
    extras = project["optional-dependencies"]
    assert _names(extras["cpu"]) == {"faiss-cpu"}
    assert {n for n in _names(extras["gpu"]) if n.startswith("faiss")} == {"faiss-gpu-cu12"}
    assert not any(n.startswith("faiss") for n in _names(extras["dev"]))


def test_this_environment_has_exactly_one_faiss():
    assert runtime.check_faiss_install() in runtime.FAISS_DISTRIBUTIONS
    import faiss

    assert faiss.IndexFlatIP(4).d == 4


def test_two_faiss_wheels_are_refused(monkeypatch):
    monkeypatch.setattr(runtime, "faiss_distributions", lambda: ["faiss-cpu", "faiss-gpu-cu12"])
    with pytest.raises(UserError, match="clash"):
        runtime.check_faiss_install()
    monkeypatch.setattr(runtime, "faiss_distributions", lambda: [])
    with pytest.raises(UserError, match="not installed"):
        runtime.check_faiss_install()


def _registry_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _registry_reachable(), reason="package registry not reachable")
def test_gpu_extra_resolves_without_faiss_cpu(tmp_path):
    """`pip install ".[gpu]"` must resolve here (Linux x86-64) and must not bring faiss-cpu along."""
    report = tmp_path / "report.json"
    gpu = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--only-binary=:all:", "--report", str(report), *gpu]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    installed = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "faiss-gpu-cu12" in installed
    assert "faiss-cpu" not in installed


def test_requires_python_covers_tomllib_which_the_tests_import():
    spec = PYPROJECT["project"]["requires-python"]
    assert spec.replace(" ", "") == ">=3.11", f"tests import tomllib (Python 3.11+), but requires-python is {spec}"
    assert "Python 3.11+" in (ROOT / "README.md").read_text()


def test_ray_floor_is_the_first_version_with_token_auth():
    ray_req = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray"))
    assert ray_req.split(">=")[1].split(",")[0].strip() == "2.52", ray_req
