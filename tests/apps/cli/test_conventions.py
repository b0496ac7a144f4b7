"""CLI conventions (#24 item 13): `--json` on every command, errors included (one JSON object on stdout); `-w` on
every command that takes a workspace."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from apps.cli.main import app


def _commands(typer_app=app, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for c in typer_app.registered_commands:
        out.append((prefix + (c.name or c.callback.__name__.replace("_", "-")), c.callback))
    for g in typer_app.registered_groups:
        out += _commands(g.typer_instance, prefix + g.name + " ")
    return out


def _flags(fn, name: str) -> tuple[str, ...]:
    import typing

    info = typing.get_args(typing.get_type_hints(fn, include_extras=True)[name])[1]
    return tuple(d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str))


@pytest.mark.parametrize("name, fn", _commands(), ids=[n for n, _ in _commands()])
def test_every_command_has_json_and_w_where_it_takes_a_workspace(name, fn):
    params = inspect.signature(fn).parameters
    assert "as_json" in params and "--json" in _flags(fn, "as_json"), f"assay {name} has no --json"
    if "workspace" in params:
        assert {"--workspace", "-w"} <= set(_flags(fn, "workspace")), f"assay {name}: no -w"


@pytest.mark.parametrize("argv, code, says", [
    (["index", "-w", "{tmp}/empty"], 2, "no catalog yet"),      # a user error
    (["index", "--bogus"], 2, "--bogus"),                        # a usage error
    (["estimate", "{tmp}/missing.parquet", "--target", "0.5"], 2, "missing.parquet"),
    (["version"], 0, None),
])
def test_json_output_is_one_object_on_stdout_errors_included(tmp_path, argv, code, says):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "apps.cli.main", *argv, "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == code, r.stderr
    doc = json.loads(r.stdout)  # the whole of stdout is one JSON document
    if says:
        assert isinstance(doc, dict) and doc["exit_code"] == code and says in doc["error"]
        assert "\n" not in doc["error"]
