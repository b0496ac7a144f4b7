"""Data commands: ``assay world`` (make the embedded world), ``assay ingest`` (add a source to the catalog) and
``assay catalog`` (what the catalog holds)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, SeedOpt, WorkspaceOpt
from apps.cli.output import console, emit, table


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like 512x384, got {text!r}") from None
    return w, h


def world(
    out: Annotated[str, typer.Option("--out", help="Folder to write the world into (must not hold one).")],
    seed: SeedOpt = 0,
    images: Annotated[int, typer.Option("--images", help="Number of images.")] = 2000,
    size: Annotated[str, typer.Option("--size", help="Image size WxH.")] = "512x384",
    workers: Annotated[int, typer.Option("--workers", help="Processes (0: one per CPU).")] = 0,
    workspace: Annotated[Optional[str], typer.Option("--workspace", "-w",
                                                     help="Workspace for the catalog (default OUT/workspace).")] = None,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Comma-separated categories, families (emoji, digit, face, shape) or supercategories "
                          "(vehicle, animal, …); default: the 20 emoji categories.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the embedded cluttered-scene detection world (offline, deterministic by seed)."""
    from actors.catalog.world import make_world

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    summary = make_world(out, seed=seed, n_images=images, size=_size(size), workers=workers, workspace=workspace,
                         classes=names)
    emit(asdict(summary), as_json, _render_world)


def _render_world(s: dict[str, Any]) -> None:
    rows = [(k, s["images_per_split"][k], s["objects_per_split"][k]) for k in s["images_per_split"]]
    console.print(table(f"world in {s['out_dir']}", ["split", "images", "objects"], rows))
    console.print(f"{s['n_images']:,} images, {s['n_objects']:,} objects in {s['seconds']:.1f}s; "
                  f"catalog in {s['workspace']}")


def ingest(
    source: Annotated[Optional[str], typer.Argument(help="Folder of images, Parquet/CSV manifest with a 'uri' "
                                                         "column, or COCO JSON.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    split: Annotated[Optional[str], typer.Option("--split", help="Split for every new image (default: a "
                                                 "manifest's split column; a folder's images: pool).")] = None,
    check_headers: Annotated[bool, typer.Option("--check-headers/--no-check-headers",
                                                help="Read each image header (size, truncation).")] = True,
    recheck: Annotated[bool, typer.Option("--recheck", help="Re-read the headers of the catalog's error rows "
                                                            "(files restored since become ok).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add the images (and COCO boxes) of SOURCE to the workspace catalog; failed rows are kept and listed."""
    out = run_ingest(source=source, workspace=workspace, split=split, check_headers=check_headers, recheck=recheck,
                     progress=not as_json)
    emit(out if len(out) > 1 else next(iter(out.values())), as_json, lambda _: _render_both(out, workspace, split))


def run_ingest(*, source: str | None, workspace: str, split: str | None, check_headers: bool, recheck: bool,
               progress: bool, origin: str | None = None) -> dict[str, Any]:
    """What ``assay ingest`` and the ``ingest`` job step run (the options of :func:`ingest`): ``{"ingest": report,
    "recheck": report}`` (each when asked). ``origin``: the URI that ``source`` is a local copy of (jobs)."""
    from actors.catalog.ingest import ingest as run
    from actors.catalog.recheck import recheck_errors

    if source is None and not recheck:
        raise UserError("give a SOURCE to ingest, or --recheck to re-read the catalog's error rows")
    out: dict[str, Any] = {}
    if source is not None:
        out["ingest"] = asdict(run(source, workspace, split=split, check_headers=check_headers, progress=progress,
                                   origin=origin))
    if recheck:
        out["recheck"] = asdict(recheck_errors(workspace))
    return out


def _render_both(out: dict[str, Any], workspace: str, split: str | None) -> None:
    from actors.core.workspace import Workspace
    from apps.cli.steps import next_after

    if "ingest" in out:
        _render_ingest(out["ingest"])
        if out["ingest"]["added"] + out["ingest"]["already_present"] > out["ingest"]["errors"]:
            console.print(next_after("ingest", Workspace(workspace), split=split))
    if "recheck" in out:
        r = out["recheck"]
        console.print(table("recheck of the catalog's error rows", ["", "rows"],
                            [("checked", r["checked"]), ("now ok", r["recovered"]),
                             ("still failing", r["still_failing"]),
                             *((f"  {k}", v) for k, v in r["errors_by_reason"].items())]))


def _render_ingest(r: dict[str, Any]) -> None:
    rows = [(k, r[k]) for k in ("rows_read", "added", "already_present", "duplicates", "errors",
                                "labels_added", "labels_already_present", "label_errors")]
    console.print(table(f"ingest {r['source']} ({r['kind']})", ["", "rows"], rows))
    failed = r["errors"] + r["label_errors"]
    if failed:
        reasons = ", ".join(f"{k} ({v:,})" for k, v in r["errors_by_reason"].items())
        console.print(f"{failed:,} rows failed: {reasons}")
        for line in r["failures"]:
            console.print(f"  {line}", markup=False)
        if failed > len(r["failures"]):
            console.print(f"  … and {failed - len(r['failures']):,} more (status='error' in the catalog)")


def catalog(workspace: WorkspaceOpt = DEFAULT_WORKSPACE, as_json: JsonOpt = False) -> None:
    """Count the catalog's images by split and status, and its labels by category."""
    from actors.catalog.schema import catalog_summary

    emit(catalog_summary(workspace), as_json, _render_catalog)


def _render_catalog(s: dict[str, Any]) -> None:
    statuses = sorted(s["images_by_status"])
    rows = [(split, *(c.get(st, 0) for st in statuses), sum(c.values())) for split, c in s["images_by_split"].items()]
    console.print(table(f"images in {s['workspace']}", ["split", *statuses, "total"], rows))
    if s["errors_by_reason"]:
        console.print(table("errors", ["reason", "images"], s["errors_by_reason"].items()))
    cats = [(c, n) for c, n in s["labels_by_category"].items()]
    console.print(table(f"labels ({s['labels']:,}; by status {s['labels_by_status']})", ["category", "boxes"], cats))


def register(app: typer.Typer) -> None:
    """Add the data commands to the ``assay`` app."""
    app.command()(world)
    app.command()(ingest)
    app.command()(catalog)
