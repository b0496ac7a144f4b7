"""The pipeline scheduler: standing data-mining pipelines run on a cron schedule, restart-safe, one run at a time.

A pipeline spec (``platform/pipelines/*.toml``, :func:`load_pipeline`) names a workspace, a source to ingest, the
steps, standing queries and a cron expression (UTC). :class:`Scheduler` turns the cron expression into windows,
hands each due window to a runner (:class:`RayJobRunner` submits ``python -m apps.jobs pipeline SPEC --run-id R``
as a Ray job; :class:`LocalRunner` runs the same steps in-process) and records every run in the workspace's run
ledger ``pipelines/<name>/ledger.parquet`` (run_id, scheduled_at, attempt, status, job_id, started_at,
finished_at, counts as JSON, error), rewritten atomically after every change.

Contract
--------
* **No repeats.** A window with a row whose status is final (SUCCEEDED, FAILED, STOPPED, skipped) is never run
  again; windows at or before the latest recorded one are never reconsidered.
* **No silent skips (catch-up policy).** Windows missed while no scheduler ran are all recorded. With
  ``catch_up = "latest"`` (default) the latest missed window runs once and the earlier ones are recorded as
  ``skipped`` (a run is incremental, so the latest run covers every image that arrived meanwhile); with
  ``catch_up = "all"`` every missed window runs, oldest first, one per tick. A first start with an empty ledger
  runs the latest window at or before now (nothing was due before the pipeline existed).
* **Crash recovery.** A ``running`` row found by the next scheduler that holds the lease is settled first: the
  runner is asked for the job's state (a Ray job's id is deterministic, ``<run_id>-a<attempt>``): still running ->
  waited for; finished -> its result recorded; unknown (never submitted, or an in-process run that died) ->
  marked ``interrupted`` and the same window runs again as the next attempt. Steps are resumable (finished embed
  shards are skipped, the index only adds new images), so a retried window does no work twice.
* **At most one run of a pipeline at a time**: a lease file ``pipelines/<name>/lease.json`` (owner, expiry) is held
  and renewed while a tick works; another scheduler finding a live lease does nothing that tick (``busy``). A renewal
  is compare-and-renew: only while the file still names this owner; a lease another owner took over (after it
  expired) is never written over, the renewals stop and the tick reports ``lease_lost``. On a local workspace the
  check-and-set is under ``flock``; on object storage it is read-then-write (best effort: pyarrow.fs has no
  conditional put).
* Every time comes from the injected ``clock`` (UTC), so tests drive the scheduler through hours in milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

import pyarrow as pa

from actors.core.errors import UserError
from actors.core.workspace import Workspace

Clock = Callable[[], datetime]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED", "skipped")
CATCH_UP = ("latest", "all")
KNOWN_STEPS = ("ingest", "embed", "index", "mine")
SECTIONS = {"source": {"uri", "split", "check_headers"},
            "embed": {"backbone", "name", "splits", "actors", "batch_size", "num_gpus", "shard_size", "local"},
            "index": {"model", "factory"}}
QUERY_FIELDS = {"name", "image", "boxes", "top_k", "model", "method", "combine"}
LEDGER_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("scheduled_at", pa.timestamp("us", tz="UTC")), ("attempt", pa.int32()),
    ("status", pa.string()), ("job_id", pa.string()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")), ("counts", pa.string()), ("error", pa.string()),
])


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------------------------------------ the spec
@dataclass
class Pipeline:
    """A parsed pipeline spec; see ``platform/pipelines/*.toml`` for an annotated example."""

    name: str
    path: str
    workspace: str
    cron: str
    steps: tuple[str, ...] = KNOWN_STEPS
    source: str | None = None
    split: str | None = "pool"
    check_headers: bool = True
    catch_up: str = "latest"
    lease_s: float = 3600.0
    embed: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    queries: list = field(default_factory=list)

    def ledger_path(self) -> str:
        return f"pipelines/{self.name}/ledger.parquet"


def load_pipeline(path: str) -> Pipeline:
    """Parse and check a pipeline TOML; ``UserError`` naming the file and field when something is wrong."""
    from croniter import croniter

    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such pipeline spec") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None

    def need(key: str, kind: type) -> Any:
        if not isinstance(d.get(key), kind):
            raise UserError(f"{path}: field '{key}' must be a {kind.__name__}, got {d.get(key)!r}")
        return d[key]

    name, ws, cron = need("name", str), need("workspace", str), need("cron", str)
    if not name or set(name) - set("abcdefghijklmnopqrstuvwxyz0123456789-_"):
        raise UserError(f"{path}: field 'name' must be lower-case letters, digits, '-' or '_', got {name!r}")
    if not croniter.is_valid(cron):
        raise UserError(f"{path}: field 'cron' is not a valid cron expression: {cron!r}")
    steps = tuple(d.get("steps", KNOWN_STEPS))
    if bad := [s for s in steps if s not in KNOWN_STEPS]:
        raise UserError(f"{path}: field 'steps' has unknown step(s) {bad}; known: {list(KNOWN_STEPS)}")
    catch_up = d.get("catch_up", "latest")
    if catch_up not in CATCH_UP:
        raise UserError(f"{path}: field 'catch_up' must be one of {CATCH_UP}, got {catch_up!r}")
    source = d.get("source", {})
    if "ingest" in steps and not isinstance(source.get("uri"), str):
        raise UserError(f"{path}: field 'source.uri' (folder or manifest to ingest) is required by step 'ingest'")
    for section, allowed in SECTIONS.items():
        if not isinstance(d.get(section, {}), dict):
            raise UserError(f"{path}: [{section}] must be a table")
        if bad := sorted(set(d.get(section, {})) - allowed):
            raise UserError(f"{path}: unknown field(s) {bad} in [{section}]; known: {sorted(allowed)}")
    queries = d.get("queries", [])
    for n, q in enumerate(queries):
        if not isinstance(q, dict) or "image" not in q or not q.get("boxes"):
            raise UserError(f"{path}: queries[{n}] needs 'image' and 'boxes' ([[x0, y0, x1, y1], …])")
        if bad := sorted(set(q) - QUERY_FIELDS):
            raise UserError(f"{path}: unknown field(s) {bad} in queries[{n}]; known: {sorted(QUERY_FIELDS)}")
    if "mine" in steps and not queries:
        raise UserError(f"{path}: step 'mine' needs at least one [[queries]] entry")
    return Pipeline(name=name, path=os.path.abspath(path), workspace=ws, cron=cron, steps=steps,
                    source=source.get("uri"), split=source.get("split", "pool"),
                    check_headers=source.get("check_headers", True), catch_up=catch_up,
                    lease_s=float(d.get("lease_minutes", 60)) * 60, embed=dict(d.get("embed", {})),
                    index=dict(d.get("index", {})), queries=list(queries))


# ------------------------------------------------------------------------------------------------ windows
def cron_windows(cron: str, after: datetime | None, now: datetime) -> list[datetime]:
    """Cron times ``t`` with ``after < t <= now`` (UTC), oldest first; with no ``after``, the latest ``t <= now``."""
    from croniter import croniter

    if after is None:
        prev = croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)
        return [prev] if prev <= now else []
    it, out = croniter(cron, after), []
    while (t := it.get_next(datetime)) <= now:
        out.append(t)
    return out


def run_id_for(p: Pipeline, when: datetime) -> str:
    return f"{p.name}-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


# ------------------------------------------------------------------------------------------------ ledger and lease
def read_ledger(ws: Workspace, p: Pipeline) -> list[dict]:
    """The ledger rows, oldest first ([] before the first run)."""
    if not ws.exists(p.ledger_path()):
        return []
    return ws.read_table(p.ledger_path()).cast(LEDGER_SCHEMA).to_pylist()


def _write_ledger(ws: Workspace, p: Pipeline, rows: list[dict]) -> None:
    ws.write_table(p.ledger_path(), pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA))


class Lease:
    """``pipelines/<name>/lease.json``: who may run the pipeline now, until when (see module doc)."""

    def __init__(self, ws: Workspace, p: Pipeline, owner: str, clock: Clock) -> None:
        self.ws, self.rel, self.owner, self.clock, self.ttl = ws, f"pipelines/{p.name}/lease.json", owner, clock, p.lease_s
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when a renewal found the lease held by another owner
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        """The live lease (owner, expires_at), or None when free or expired."""
        if not self.ws.exists(self.rel):
            return None
        try:
            d = self.ws.read_json(self.rel)
        except UserError:
            return None
        return d if datetime.fromisoformat(d["expires_at"]) > self.clock() else None

    def acquire(self) -> bool:
        with self._mutex():
            cur = self.holder()
            if cur and cur["owner"] != self.owner:
                return False
            self._write()
        ok = (self.holder() or {}).get("owner") == self.owner
        if ok:
            self._thread = threading.Thread(target=self._renew, daemon=True)
            self._thread.start()
        return ok

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._mutex():
            if (self.holder() or {}).get("owner") == self.owner:
                self.ws.delete(self.rel)

    def renew(self) -> bool:
        """Extend the lease by its ttl if this owner still holds it (compare-and-renew under the lock).

        Returns False, writing nothing and setting :attr:`lost`, when the file names another owner or is gone: the
        lease expired and was taken over (or released) meanwhile. A lease of this owner that expired unclaimed is
        extended: under the lock nobody else can have started a run.
        """
        with self._mutex():
            if self._file_owner() != self.owner:
                self.lost.set()
                return False
            self._write()
            return True

    def _file_owner(self) -> str | None:
        """The owner named in the lease file, expired or not (None without a readable file)."""
        if not self.ws.exists(self.rel):
            return None
        try:
            return self.ws.read_json(self.rel).get("owner")
        except UserError:
            return None

    def _write(self) -> None:
        self.ws.write_json(self.rel, {"owner": self.owner, "expires_at": (self.clock() + timedelta(
            seconds=self.ttl)).isoformat(), "host": socket.gethostname(), "pid": os.getpid()})

    def _renew(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl / 3)):
            if not self.renew():
                return

    def _mutex(self):
        import contextlib

        if not self.ws.is_local:
            return contextlib.nullcontext()
        import fcntl

        self.ws.makedirs(os.path.dirname(self.rel))
        f = open(self.ws.local_path(self.rel + ".lock"), "a")

        @contextlib.contextmanager
        def locked():
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
        return locked()


# ------------------------------------------------------------------------------------------------ runners
@dataclass
class RunResult:
    status: str  # SUCCEEDED | FAILED | STOPPED
    counts: dict = field(default_factory=dict)
    error: str = ""


class Runner(Protocol):
    def run(self, p: Pipeline, run_id: str, scheduled_at: datetime, job_id: str) -> RunResult: ...
    def recover(self, job_id: str) -> RunResult | None: ...


class LocalRunner:
    """Runs the pipeline steps in this process (tests, a single machine); a run that died is unknown (None)."""

    def run(self, p: Pipeline, run_id: str, scheduled_at: datetime, job_id: str) -> RunResult:
        try:
            from apps.jobs import run_pipeline

            out = run_pipeline(p, run_id, scheduled_at=scheduled_at.isoformat())
        except Exception as e:  # recorded in the ledger; the scheduler keeps going
            return RunResult("FAILED", error=f"{type(e).__name__}: {e}"[:2000])
        return RunResult("SUCCEEDED", out["counts"])

    def recover(self, job_id: str) -> RunResult | None:
        return None


class RayJobRunner:
    """Submits ``python -m apps.jobs pipeline SPEC --run-id R`` as a Ray job (submission id = ``job_id``) and
    waits for it; ``recover`` asks the cluster about a job a crashed scheduler had submitted."""

    def __init__(self, address: str | None = None, python: str | None = None, poll_s: float = 2.0) -> None:
        from apps.cli.cluster import job_client

        self.client, self.address = job_client(address)
        self.python, self.poll_s = python, poll_s

    def run(self, p: Pipeline, run_id: str, scheduled_at: datetime, job_id: str) -> RunResult:
        from apps.cli.cluster import entrypoint, runtime_env, submit_once

        spec = _repo_relative(p.path)
        submit_once(self.client, job_id, runtime_env=runtime_env(), entrypoint=entrypoint(
            ["pipeline", spec, "--run-id", run_id, "--scheduled-at", scheduled_at.isoformat()],
            self.python, self.address))
        return self._wait(job_id)

    def recover(self, job_id: str) -> RunResult | None:
        try:
            self.client.get_job_status(job_id)
        except RuntimeError:  # no such job: it was never submitted
            return None
        return self._wait(job_id)

    def _wait(self, job_id: str) -> RunResult:
        import requests

        misses = 0
        while True:
            try:
                st = self.client.get_job_status(job_id)
                misses = 0
            except requests.ConnectionError:  # a busy head drops a poll now and then; a dead one fails below
                misses += 1
                if misses > 10:
                    raise
                time.sleep(self.poll_s)
                continue
            if st.is_terminal():
                break
            time.sleep(self.poll_s)
        logs = self.client.get_job_logs(job_id)
        counts = _last_json(logs).get("counts", {})
        err = "" if st.value == "SUCCEEDED" else (self.client.get_job_info(job_id).message or "")[:2000]
        return RunResult(st.value, counts, err)


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict):
            return d
    return {}


def _repo_relative(path: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


# ------------------------------------------------------------------------------------------------ the scheduler
@dataclass
class Tick:
    """What one :meth:`Scheduler.tick` did."""

    busy: bool = False
    ran: list = field(default_factory=list)  # ledger rows of runs finished this tick
    skipped: list = field(default_factory=list)  # windows recorded as skipped
    recovered: list = field(default_factory=list)  # rows settled from a crashed scheduler
    lease_lost: bool = False  # another owner took the lease over while this tick worked


class Scheduler:
    """Computes a pipeline's due windows and runs them through ``runner`` (see the module doc for the policy)."""

    def __init__(self, p: Pipeline, runner: Runner, *, clock: Clock = utcnow, owner: str | None = None) -> None:
        self.p, self.runner, self.clock = p, runner, clock
        self.ws = Workspace(p.workspace)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def due(self, rows: list[dict] | None = None) -> list[datetime]:
        """Windows not yet recorded, oldest first."""
        rows = read_ledger(self.ws, self.p) if rows is None else rows
        last = max((r["scheduled_at"] for r in rows), default=None)
        return cron_windows(self.p.cron, last, self.clock())

    def next_window(self) -> datetime:
        from croniter import croniter

        return croniter(self.p.cron, self.clock()).get_next(datetime)

    def tick(self) -> Tick:
        """Settle crashed runs, record skipped windows, run what is due; ``busy`` when another run holds the lease."""
        lease = Lease(self.ws, self.p, self.owner, self.clock)
        if not lease.acquire():
            return Tick(busy=True)
        try:
            out = self._tick()
        finally:
            lease.release()
        out.lease_lost = lease.lost.is_set()
        return out

    def _tick(self) -> Tick:
        out = Tick()
        rows = read_ledger(self.ws, self.p)
        retry = []
        for r in [r for r in rows if r["status"] == "running"]:
            res = self.runner.recover(r["job_id"])
            self._settle(rows, r, res or RunResult("interrupted", error="the scheduler stopped during this run"))
            out.recovered.append(dict(r))
            if res is None:
                retry.append(r)
        windows = [(r["scheduled_at"], r["attempt"] + 1) for r in retry]
        due = self.due(rows)
        if due and self.p.catch_up == "latest":
            for w in due[:-1]:
                rows.append(self._row(w, 1, "skipped", error="catch-up policy 'latest': a later window ran"))
                out.skipped.append(w)
            due = due[-1:]
        windows += [(w, 1) for w in due[:1]]
        if out.skipped:
            _write_ledger(self.ws, self.p, rows)
        for when, attempt in windows:
            out.ran.append(self._run(rows, when, attempt))
        return out

    def _run(self, rows: list[dict], when: datetime, attempt: int) -> dict:
        run_id = run_id_for(self.p, when)
        row = self._row(when, attempt, "running", job_id=f"{run_id}-a{attempt}")
        rows.append(row)
        _write_ledger(self.ws, self.p, rows)  # recorded before it starts: a crash now is seen by the next tick
        try:
            res = self.runner.run(self.p, run_id, when, row["job_id"])
        except Exception as e:  # the runner itself failed (cluster unreachable…): recorded, not fatal
            res = RunResult("FAILED", error=f"{type(e).__name__}: {e}"[:2000])
        self._settle(rows, row, res)
        return row

    def _settle(self, rows: list[dict], row: dict, res: RunResult) -> None:
        row.update(status=res.status, counts=json.dumps(res.counts, sort_keys=True), error=res.error,
                   finished_at=self.clock())
        _write_ledger(self.ws, self.p, rows)

    def _row(self, when: datetime, attempt: int, status: str, job_id: str = "", error: str = "") -> dict:
        return {"run_id": run_id_for(self.p, when), "scheduled_at": when, "attempt": attempt, "status": status,
                "job_id": job_id, "started_at": self.clock(), "finished_at": None, "counts": "{}", "error": error}

    def run_forever(self, *, poll_s: float = 30.0, max_ticks: int | None = None,
                    on_tick: Callable[[Tick], None] | None = None) -> None:
        """Tick, then sleep until the next window (at most ``poll_s``); stops after ``max_ticks`` ticks."""
        n = 0
        while max_ticks is None or n < max_ticks:
            t = self.tick()
            if on_tick:
                on_tick(t)
            n += 1
            wait = (self.next_window() - self.clock()).total_seconds()
            time.sleep(min(poll_s, max(0.5, wait)))


__all__ = ["Pipeline", "load_pipeline", "cron_windows", "read_ledger", "Scheduler", "Tick",
           "LocalRunner", "RayJobRunner", "RunResult", "Lease", "LEDGER_SCHEMA"]
