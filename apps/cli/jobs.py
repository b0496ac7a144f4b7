"""``assay submit STEP …`` and ``assay jobs list|status|logs|stop``: Assay steps as Ray jobs (Ray's Jobs API).

``assay submit mine -w WS --image q.png --box 10,10,40,40 --wait`` submits ``<python> -m apps.jobs mine …`` (see
:mod:`apps.jobs`) to the cluster :func:`apps.cli.cluster.job_client` finds (``--address``, ``RAY_ADDRESS``, or the
local head of ``assay cluster up``), shipping the repository as the job's ``working_dir``. With ``--wait`` it
follows the job's logs to the end and exits with the job's exit status.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import JsonOpt

AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="Jobs API address (http://HOST:8265); default $RAY_ADDRESS, else the local head.")]
jobs_app = typer.Typer(help="Ray jobs on the cluster: list, status, logs, stop.", no_args_is_help=True)
STEPS = ("ingest", "embed", "index", "mine", "learn", "compress", "pipeline")


def submit_job(step: str, args: list[str], *, address: str | None = None, python: str | None = None,
               submission_id: str | None = None) -> tuple[object, str]:
    """Submit ``python -m apps.jobs STEP ARGS`` and return (client, job id)."""
    import uuid

    from apps.cli.cluster import entrypoint, job_client, runtime_env, submit_once

    if step not in STEPS:
        raise UserError(f"unknown step {step!r}; one of {', '.join(STEPS)}")
    client, url = job_client(address)
    job_id = submit_once(client, submission_id or f"assay-{step}-{uuid.uuid4().hex[:12]}",
                         entrypoint=entrypoint([step, *args], python, url), runtime_env=runtime_env())
    return client, job_id


def follow(client, job_id: str, out=sys.stdout) -> int:
    """Print the job's logs as they come until it ends; returns its exit status (0 when it SUCCEEDED)."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(0.5)
    return exit_status(client, job_id)


def exit_status(client, job_id: str) -> int:
    info = client.get_job_info(job_id)
    if info.status.value == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def submit(ctx: typer.Context,
           step: Annotated[str, typer.Argument(help=f"One of {', '.join(STEPS)}; its options follow.")],
           address: AddressOpt = None,
           wait: Annotated[bool, typer.Option("--wait", help="Follow the logs; exit with the job's status.")] = False,
           python: Annotated[Optional[str], typer.Option(
               "--python", help="Interpreter on the cluster (default: the local head's, $ASSAY_JOB_PYTHON, "
                                "or `python`).")] = None,
           submission_id: Annotated[Optional[str], typer.Option("--submission-id", help="Job id to use.")] = None,
           as_json: JsonOpt = False) -> None:
    """Submit an Assay step as a Ray job: `assay submit mine -w WS --image Q --box x0,y0,x1,y1 --wait`."""
    from apps.cli.output import console, emit

    t0 = time.monotonic()
    client, job_id = submit_job(step, list(ctx.args), address=address, python=python, submission_id=submission_id)
    if not wait:
        emit({"job_id": job_id, "submit_s": round(time.monotonic() - t0, 2)}, as_json,
             lambda r: console.print(f"submitted {r['job_id']} (`assay jobs logs {r['job_id']}`)", markup=False))
        return
    print(f"submitted {job_id}; following its logs", file=sys.stderr)
    code = follow(client, job_id)
    st = client.get_job_status(job_id).value
    print(f"job {job_id}: {st} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if code:
        raise typer.Exit(code)


@jobs_app.command("list")
def list_cmd(address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs the cluster knows, newest first."""
    from apps.cli.cluster import job_client
    from apps.cli.output import console, emit, table

    client, _ = job_client(address)
    rows = [{"job_id": j.submission_id or j.job_id, "status": j.status.value, "entrypoint": j.entrypoint,
             "start_time": j.start_time, "end_time": j.end_time} for j in client.list_jobs()]
    rows.sort(key=lambda r: r["start_time"] or 0, reverse=True)
    emit(rows, as_json, lambda rs: console.print(table("jobs", ["job", "status", "entrypoint"], [
        (r["job_id"], r["status"], r["entrypoint"][-70:]) for r in rs])))


@jobs_app.command("status")
def status_cmd(job_id: str, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """A job's status and message."""
    from apps.cli.cluster import job_client
    from apps.cli.output import console, emit

    client, _ = job_client(address)
    info = client.get_job_info(job_id)
    out = {"job_id": job_id, "status": info.status.value, "message": info.message, "entrypoint": info.entrypoint,
           "exit_code": getattr(info, "driver_exit_code", None)}
    emit(out, as_json, lambda r: console.print(f"{r['job_id']}: {r['status']} {r['message'] or ''}", markup=False))


@jobs_app.command("logs")
def logs_cmd(job_id: str, address: AddressOpt = None,
             follow_: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the job ends.")] = False,
             as_json: JsonOpt = False) -> None:
    """A job's logs (stdout and stderr of its entrypoint). With --json: {"job_id", "logs"} (with --follow, once the
    job has ended, plus its "exit_status")."""
    import io

    from apps.cli.cluster import job_client
    from apps.cli.output import print_json

    client, _ = job_client(address)
    if not as_json:
        if follow_:
            raise typer.Exit(follow(client, job_id))
        sys.stdout.write(client.get_job_logs(job_id))
        return
    out: dict = {"job_id": job_id}
    if follow_:
        out["exit_status"] = follow(client, job_id, out=io.StringIO())
    out["logs"] = client.get_job_logs(job_id)
    print_json(out)
    if out.get("exit_status"):
        raise typer.Exit(out["exit_status"])


@jobs_app.command("stop")
def stop_cmd(job_id: str, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the cluster to stop a job."""
    from apps.cli.cluster import job_client
    from apps.cli.output import console, emit

    client, _ = job_client(address)
    emit({"job_id": job_id, "stop_requested": client.stop_job(job_id)}, as_json,
         lambda r: console.print(f"{r['job_id']}: stop {'requested' if r['stop_requested'] else 'not needed'}"))


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(submit)
    app.add_typer(jobs_app, name="jobs")
