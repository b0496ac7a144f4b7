"""``assay schedule run|once|list``: standing data-mining pipelines on a cron schedule (see :mod:`apps.schedule`)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from apps.cli.options import JsonOpt

schedule_app = typer.Typer(help="Scheduled pipelines (platform/pipelines/*.toml): run, once, list.",
                           no_args_is_help=True)
SpecArg = Annotated[str, typer.Argument(help="Pipeline spec (TOML), e.g. platform/pipelines/standing-queries.toml")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run the steps in this process instead of as Ray jobs.")]
AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="Jobs API address; default $RAY_ADDRESS, else the local head.")]


def _scheduler(spec: str, local: bool, address: str | None):
    from apps.schedule import LocalRunner, RayJobRunner, Scheduler, load_pipeline

    p = load_pipeline(spec)
    return Scheduler(p, LocalRunner() if local else RayJobRunner(address))


def _tick_json(t) -> dict:
    return {"busy": t.busy, "ran": [_row(r) for r in t.ran], "skipped": [w.isoformat() for w in t.skipped],
            "recovered": [_row(r) for r in t.recovered]}


def _row(r: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else json.loads(v) if k == "counts" else v)
            for k, v in r.items()}


def _render_tick(t: dict) -> None:
    from apps.cli.output import console

    if t["busy"]:
        console.print("another run of this pipeline holds the lease; nothing done")
    for w in t["skipped"]:
        console.print(f"skipped {w} (catch-up policy)", markup=False)
    for r in t["recovered"]:
        console.print(f"settled {r['run_id']} attempt {r['attempt']} left by a stopped scheduler", markup=False)
    for r in t["ran"]:
        console.print(f"{r['run_id']} attempt {r['attempt']}: {r['status']} {r['counts']} {r['error']}", markup=False)
    if not (t["busy"] or t["ran"] or t["skipped"]):
        console.print("nothing due")


@schedule_app.command("once")
def once_cmd(spec: SpecArg, local: LocalOpt = False, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """One scheduler pass: settle crashed runs, record skipped windows, run what is due, then exit."""
    from apps.cli.output import emit

    emit(_tick_json(_scheduler(spec, local, address).tick()), as_json, _render_tick)


@schedule_app.command("run")
def run_cmd(spec: SpecArg, local: LocalOpt = False, address: AddressOpt = None,
            poll: Annotated[float, typer.Option("--poll", help="Seconds between checks at most.")] = 30.0,
            ticks: Annotated[Optional[int], typer.Option("--ticks", help="Stop after this many passes.")] = None,
            as_json: JsonOpt = False) -> None:
    """Run the scheduler: a pass at every window of the cron expression (Ctrl-C stops it; a restart resumes)."""
    from apps.cli.output import console, emit

    s = _scheduler(spec, local, address)
    console.print(f"scheduling {s.p.name} ({s.p.cron} UTC, catch-up {s.p.catch_up}); next window "
                  f"{s.next_window().isoformat()}", markup=False)
    s.run_forever(poll_s=poll, max_ticks=ticks, on_tick=lambda t: emit(_tick_json(t), as_json, _render_tick))


@schedule_app.command("list")
def list_cmd(spec: SpecArg, as_json: JsonOpt = False) -> None:
    """The pipeline's run ledger, the windows due now and the next window."""
    from apps.cli.output import console, emit, table
    from apps.schedule import Lease, Scheduler, LocalRunner, load_pipeline, read_ledger

    p = load_pipeline(spec)
    s = Scheduler(p, LocalRunner())
    rows = read_ledger(s.ws, p)
    out = {"pipeline": p.name, "workspace": p.workspace, "cron": p.cron, "catch_up": p.catch_up,
           "runs": [_row(r) for r in rows], "due": [w.isoformat() for w in s.due(rows)],
           "next": s.next_window().isoformat(), "lease": Lease(s.ws, p, "", s.clock).holder()}

    def render(o: dict) -> None:
        console.print(table(f"runs of {o['pipeline']} ({o['cron']} UTC) in {o['workspace']}",
                            ["run", "attempt", "status", "job", "counts", "error"],
                            [(r["run_id"], r["attempt"], r["status"], r["job_id"], json.dumps(r["counts"]),
                              (r["error"] or "")[:60]) for r in o["runs"]]))
        console.print(f"due now: {', '.join(o['due']) or 'none'}; next window {o['next']}; "
                      f"lease: {o['lease']['owner'] if o['lease'] else 'free'}", markup=False)

    emit(out, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
