"""One option spec for `assay` and `python -m apps.jobs` (#24 item 11): a job step takes every option of its
`assay` command and calls the same function with the same values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apps import jobs
from apps.cli.argspec import Param, params
from apps.cli.main import main as assay


class Called(Exception):
    """Raised by the recording stand-in once it has the values (no work done)."""


def _sample(p: Param) -> tuple[list[str], object]:
    """argv for a non-default value of ``p``, and that value."""
    if p.type is bool:
        return ([p.negative[0]], False) if p.default is True else ([p.flags[0]], True)
    one = {int: ("7", 7), float: ("0.5", 0.5)}.get(p.type, (f"{p.name}-x", f"{p.name}-x"))
    if not p.flags:
        return [one[0]], one[1]
    if p.multiple:
        return [p.flags[0], one[0], p.flags[-1], one[0] + "2"], [one[1], one[0] + "2" if p.type is str else one[1]]
    return [p.flags[-1], one[0]], one[1]


def _record(monkeypatch, step: str) -> list[dict]:
    import importlib

    module, _, run = jobs.CLI_STEPS[step]
    calls: list[dict] = []

    def stand_in(**kw):
        calls.append(kw)
        raise Called

    monkeypatch.setattr(importlib.import_module(module), run, stand_in)
    return calls


def _argv_with_every_option(step: str, tmp_path) -> tuple[list[str], dict]:
    argv, want = [], {}
    for p in params(jobs.cli_functions(step)[0]):
        if p.name == "as_json":
            continue
        if p.name == "workspace":
            a, v = ["-w", str(tmp_path / "ws")], str(tmp_path / "ws")
        elif p.name == "queries":  # a file the job reads (for remote images) before calling
            (tmp_path / "q.json").write_text('[{"image": "q.png", "boxes": [[1, 2, 3, 4]], "name": "n"}]')
            a, v = ["--queries", str(tmp_path / "q.json")], str(tmp_path / "q.json")
        else:
            a, v = _sample(p)
        if p.multiple and p.type is int:
            v = [7, 7]
        argv += a
        want[p.name] = v
    return argv, want


@pytest.mark.parametrize("step", sorted(jobs.CLI_STEPS))
def test_a_job_step_takes_every_option_of_its_command_and_calls_the_same_function_with_the_same_values(
        step, tmp_path, monkeypatch, capsys):
    argv, want = _argv_with_every_option(step, tmp_path)
    calls = _record(monkeypatch, step)
    assert assay([step, *argv, "--json"]) == 1  # the stand-in raised after recording
    assert jobs.main([step, *argv]) == 1
    assert len(calls) == 2 and calls[0] == calls[1]
    got = calls[0]
    for name, value in want.items():
        assert got[name] == value, name


@pytest.mark.parametrize("step", sorted(jobs.CLI_STEPS))
def test_a_job_step_without_options_gets_the_commands_defaults(step, tmp_path, monkeypatch, capsys):
    calls = _record(monkeypatch, step)
    monkeypatch.setenv("ASSAY_WORKSPACE", str(tmp_path / "env-ws"))
    assay([step, "--json"])
    jobs.main([step])
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0]["workspace"] == str(tmp_path / "env-ws")


@pytest.mark.parametrize("argv", [["embed", "--stride", "8", "--pca-dim", "16"], ["index", "--shards", "2"],
                                  ["mine", "--rerank", "0", "--negative-box", "1,2,3,4", "--image", "q.png"],
                                  ["ingest", "--recheck"]])
def test_options_the_job_cli_refused_are_parsed_in_a_real_job_process(argv, tmp_path):
    """`python -m apps.jobs embed --stride 8` and `index --shards 2` failed with `unrecognized arguments`."""
    r = subprocess.run([sys.executable, "-m", "apps.jobs", *argv, "-w", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=300)
    assert "unrecognized arguments" not in r.stderr and "usage:" not in r.stderr
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:"), r.stderr
