"""The ``assay`` command.

Commands are grouped in small modules, each with a ``register(app)`` that adds its commands to this one Typer app
(flat commands: ``assay world``, ``assay ingest``, ``assay estimate`` …). Each command parses, calls one library
function and prints through :mod:`apps.cli.output`.

User errors — Assay's own types only: :class:`actors.core.errors.UserError` (and its subclasses such as
``WorkspaceError``) and :class:`estimators.errors.EstimatorInputError` — end with a one-line ``error: …`` on stderr
and exit code 2; set ``ASSAY_DEBUG=1`` to see the traceback instead. Any other exception is a bug: its traceback is
printed and the exit code is 1.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from actors.core.errors import UserError
from apps.cli.options import JsonOpt
from apps.cli.output import error
from estimators.errors import EstimatorInputError

app = typer.Typer(
    name="assay",
    help="Assay: targeted selection, data-requirement estimation and model improvement for CV data teams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules; each defines register(app). A module that does not exist yet is skipped.
COMMAND_MODULES = (
    "apps.cli.data",
    "apps.cli.embed",
    "apps.cli.select",
    "apps.cli.estimate",
    "apps.cli.learn",
    "apps.cli.demo",
    "apps.cli.app",
    "apps.cli.jobs",
    "apps.cli.cluster",
    "apps.cli.schedule",
    "apps.cli.compress",
)

# only Assay's own user-error types; a bare ValueError/OSError from anywhere else is a bug and shows its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, EstimatorInputError)


def _register_all() -> None:
    """Register every command group; a missing module is a broken install and raises (never silently skipped)."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines in the terminal.")) -> None:
    """Assay: targeted selection, data-requirement estimation and model improvement for CV data teams."""
    if verbose:
        os.environ["ASSAY_VERBOSE"] = "1"


@app.command()
def version(as_json: JsonOpt = False) -> None:
    """Print Assay's version and the versions of its engines."""
    from importlib.metadata import PackageNotFoundError, version as v

    from apps.cli.output import console, emit, table

    rows = {}
    for dist in ("assay", "torch", "torchvision", "ray", "faiss-cpu", "faiss-gpu-cu12", "pyarrow", "numpy", "scipy"):
        try:
            rows[dist] = v(dist)
        except PackageNotFoundError:
            continue
    emit(rows, as_json, lambda r: console.print(table(None, ["package", "version"], r.items())))


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code.

    With ``--json`` every failure is one JSON object on stdout as well, ``{"error": message, "type": name,
    "exit_code": code}`` (the message as the one-line ``error: …``; a bug's traceback still goes to stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in (args[:args.index("--")] if "--" in args else args)
    try:
        rc = app(args=argv, prog_name="assay", standalone_mode=False)  # typer.Exit(code) comes back as code
    except USER_ERRORS as e:
        if os.environ.get("ASSAY_DEBUG"):
            raise
        return _fail(str(e), type(e).__name__, 2, as_json)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _fail("aborted", "Aborted", 130, as_json)
    except _click_errors() as e:  # usage errors (unknown option, extra argument…): click's one-line message
        if as_json:
            return _fail(e.format_message(), type(e).__name__, e.exit_code, True)
        e.show()
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - a bug: the full traceback, exit 1
        traceback.print_exc()
        if as_json:
            _json_error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, type(e).__name__, 1)
        return 1
    return rc if isinstance(rc, int) else 0


def _fail(message: str, kind: str, code: int, as_json: bool) -> int:
    """Report a failure as ``error: …`` on stderr, and with ``--json`` as one JSON object on stdout; returns code."""
    error(message)
    if as_json:
        _json_error(message, kind, code)
    return code


def _json_error(message: str, kind: str, code: int) -> None:
    import json

    first = message.strip().splitlines()[0] if message.strip() else kind
    sys.stdout.write(json.dumps({"error": first, "type": kind, "exit_code": code}) + "\n")
    sys.stdout.flush()


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's exception base wherever this typer takes click from (typer >= 0.2x vendors it as typer._click)."""
    import importlib

    out = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            out.append(importlib.import_module(name).ClickException)
        except ImportError:
            continue
    return tuple(out)


if __name__ == "__main__":
    sys.exit(main())
