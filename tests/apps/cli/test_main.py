"""The `assay` entry point's error contract: usage mistakes give click's short message and exit code 2."""

from __future__ import annotations

import pytest

from apps.cli.main import main


@pytest.mark.parametrize("argv,says", [
    (["ingest", "a", "b", "-w", "ws"], "unexpected extra argument"),
    (["mine", "--no-such-option"], "No such option"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_short_message_and_exit_2(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "ws").exists()  # nothing written
