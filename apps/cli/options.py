"""Options shared by every `assay` command, declared once (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

from actors.core.workspace import DEFAULT_WORKSPACE

WorkspaceOpt = Annotated[
    str,
    typer.Option("--workspace", "-w", envvar="ASSAY_WORKSPACE",
                 help="Workspace directory or pyarrow.fs URI (env ASSAY_WORKSPACE)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]

__all__ = ["DEFAULT_WORKSPACE", "WorkspaceOpt", "JsonOpt", "SeedOpt"]
