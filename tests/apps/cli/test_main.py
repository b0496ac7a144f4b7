"""The `assay` entry point's error contract: usage mistakes give click's short message and exit code 2."""

from __future__ import annotations

import pytest

from actors.core.errors import UserError
from actors.core.workspace import WorkspaceError
from apps.cli.main import main
from estimators.errors import EstimatorInputError


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


def _command_raising(monkeypatch, exc: BaseException) -> list[str]:
    """argv for a throwaway command that raises ``exc`` (on the real app, for this test only)."""
    from typer.models import CommandInfo

    from apps.cli import main as cli_main

    def boom() -> None:
        raise exc

    commands = [*cli_main.app.registered_commands, CommandInfo(name="raise-for-test", callback=boom)]
    monkeypatch.setattr(cli_main.app, "registered_commands", commands)
    return ["raise-for-test"]


def test_a_bare_valueerror_is_a_bug_traceback_and_exit_1_not_a_user_error(monkeypatch, capsys):
    assert main(_command_raising(monkeypatch, ValueError("internal shape mismatch"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: internal shape mismatch" in err


def test_a_bare_filenotfounderror_is_a_bug_exit_1(monkeypatch, capsys):
    assert main(_command_raising(monkeypatch, FileNotFoundError("/x/y"))) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [UserError("m.csv: row 3: field 'uri' is empty"),
                                 WorkspaceError("ws/index/m/manifest.json: not found"),
                                 EstimatorInputError("curve 'a': row 2: field 'n' is -1")])
def test_only_assays_own_user_errors_exit_2_with_one_line(monkeypatch, capsys, exc):
    assert main(_command_raising(monkeypatch, exc)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == f"error: {exc}"


def test_error_messages_keep_square_brackets_and_never_parse_markup(monkeypatch, capsys):
    msg = "class [person] in a[0] of [/x] and [bold]x[/bold]"
    assert main(_command_raising(monkeypatch, UserError(msg))) == 2
    assert capsys.readouterr().err.strip() == f"error: {msg}"


def test_results_print_user_text_in_brackets_literally(capsys):
    from apps.cli.output import console, table

    console.print(table("[title]", ["[col]"], [["[/x] [red]cat[/red]"]]))
    out = capsys.readouterr().out
    assert "[title]" in out and "[col]" in out and "[/x] [red]cat[/red]" in out


def test_a_missing_command_module_is_an_error_not_a_silently_missing_command(monkeypatch):
    import pytest

    import typer

    import apps.cli.main as m

    monkeypatch.setattr(m, "app", typer.Typer())  # a scratch app: the real one keeps its commands once
    monkeypatch.setattr(m, "COMMAND_MODULES", m.COMMAND_MODULES + ("apps.cli.no_such_group",))
    with pytest.raises(ModuleNotFoundError, match="no_such_group"):
        m._register_all()
