"""``python -m apps.jobs compress --ray …``: the Ray-job entry point of compression passes every option through to
``assay compress`` (including ``--ray``, fine-tuning in a Ray Train ``TorchTrainer``)."""

from __future__ import annotations

import json

import apps.jobs as jobs


def test_compress_job_accepts_ray_and_passes_options_through(tmp_path, capsys, monkeypatch):
    import typing

    import apps.cli.main as cli
    from apps.cli.compress import compress_cmd

    ws, out = str(tmp_path / "ws"), str(tmp_path / "o")
    # `assay compress` has --ray (the real command's failure on a missing run is in tests/apps/test_jobs.py)
    ray = typing.get_type_hints(compress_cmd, include_extras=True)["ray"]
    info = ray.__metadata__[0]  # typer keeps the first declaration of an Annotated option as its `default`
    assert "--ray/--local" in (info.default, *info.param_decls)

    monkeypatch.setattr(cli, "main", lambda argv: print(json.dumps({"argv": argv})) or 0)
    assert jobs.main(["compress", "-w", ws, "--run", "r", "--latency", "0.6", "--int8", "--ray", "--out", out]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == "compress"
    assert last["result"]["argv"] == ["compress", "-w", ws, "--run", "r", "--latency", "0.6", "--int8", "--ray",
                                      "--out", out, "--json"]
