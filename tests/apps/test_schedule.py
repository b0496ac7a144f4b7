"""The pipeline scheduler with an injected clock: due windows, catch-up, crash recovery, overlapping triggers, and an
incremental second run that embeds only the new images."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from actors.core.errors import UserError
from actors.core.workspace import Workspace
from apps.schedule import (LocalRunner, RunResult, Scheduler, cron_windows, load_pipeline, read_ledger,
                           run_id_for)
from tests.apps.test_jobs import ROOT, make_images, make_query, random_backbone

UTC = timezone.utc


def at(h: int, m: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 6, day, h, m, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeRunner:
    """Records the windows it ran; ``block`` makes a run wait for an event (an overlapping trigger)."""

    def __init__(self, status: str = "SUCCEEDED", block: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.status, self.block, self.started = status, block, threading.Event()

    def run(self, p, run_id, scheduled_at, job_id):
        self.calls.append(run_id)
        self.started.set()
        if self.block:
            self.block.wait(30)
        return RunResult(self.status, {"embedded": 1}, "" if self.status == "SUCCEEDED" else "boom")

    def recover(self, job_id):
        return None


def spec(tmp_path: Path, *, cron: str = "0 * * * *", extra: str = "", steps: str = '["embed"]') -> str:
    path = tmp_path / "p.toml"
    path.write_text(f'name = "tiny"\nworkspace = "{tmp_path / "ws"}"\ncron = "{cron}"\nsteps = {steps}\n'
                    f'lease_minutes = 5\n{extra}')
    return str(path)


def statuses(s: Scheduler) -> list[tuple[str, int, str]]:
    return [(r["run_id"][-7:], r["attempt"], r["status"]) for r in read_ledger(s.ws, s.p)]


# ------------------------------------------------------------------------------------------------ windows
def test_cron_windows_are_the_times_after_the_anchor_up_to_now():
    assert cron_windows("0 * * * *", at(10), at(13, 30)) == [at(11), at(12), at(13)]
    assert cron_windows("0 * * * *", at(10), at(10, 59)) == []
    assert cron_windows("0 * * * *", None, at(13, 30)) == [at(13)]  # first start: the latest window only
    assert cron_windows("0 * * * *", None, at(13)) == [at(13)]  # a window exactly now is due
    assert cron_windows("*/15 * * * *", at(10), at(10, 45)) == [at(10, 15), at(10, 30), at(10, 45)]


def test_due_runs_and_a_missed_window_follow_the_latest_catch_up_policy(tmp_path):
    clock = Clock(at(10, 5))
    runner = FakeRunner()
    s = Scheduler(load_pipeline(spec(tmp_path)), runner, clock=clock)
    t = s.tick()
    assert [r["run_id"] for r in t.ran] == [run_id_for(s.p, at(10))] and not t.skipped
    clock.now = at(10, 40)
    assert s.tick().ran == [] and len(runner.calls) == 1  # nothing new is due: never a repeat
    clock.now = at(13, 30)  # the scheduler was down for 11:00 and 12:00
    t = s.tick()
    assert t.skipped == [at(11), at(12)] and [r["scheduled_at"] for r in t.ran] == [at(13)]
    assert statuses(s) == [("100000Z", 1, "SUCCEEDED"), ("110000Z", 1, "skipped"), ("120000Z", 1, "skipped"),
                           ("130000Z", 1, "SUCCEEDED")]
    assert json.loads(read_ledger(s.ws, s.p)[-1]["counts"]) == {"embedded": 1}
    # a restarted scheduler (new instance, same workspace) repeats nothing
    s2 = Scheduler(load_pipeline(spec(tmp_path)), runner, clock=clock)
    assert s2.due() == [] and s2.tick().ran == [] and len(runner.calls) == 2


def test_catch_up_all_runs_every_missed_window_oldest_first(tmp_path):
    clock = Clock(at(10, 5))
    runner = FakeRunner()
    s = Scheduler(load_pipeline(spec(tmp_path, extra='catch_up = "all"\n')), runner, clock=clock)
    s.tick()
    clock.now = at(12, 30)
    s.tick()
    s.tick()
    s.tick()
    assert runner.calls == [run_id_for(s.p, w) for w in (at(10), at(11), at(12))]
    assert [st for *_, st in statuses(s)] == ["SUCCEEDED"] * 3


def test_a_failed_run_is_recorded_and_not_retried(tmp_path):
    clock = Clock(at(10, 5))
    runner = FakeRunner(status="FAILED")
    s = Scheduler(load_pipeline(spec(tmp_path)), runner, clock=clock)
    s.tick()
    clock.now = at(10, 50)
    s.tick()
    assert statuses(s) == [("100000Z", 1, "FAILED")] and read_ledger(s.ws, s.p)[0]["error"] == "boom"


CRASH = """
import os, signal, sys
from datetime import datetime, timezone
from apps.schedule import Scheduler, load_pipeline

class Crash:
    def run(self, p, run_id, scheduled_at, job_id):
        os.kill(os.getpid(), signal.SIGKILL)  # the scheduler dies mid-run
    def recover(self, job_id):
        return None

Scheduler(load_pipeline(sys.argv[1]), Crash(), clock=lambda: datetime(2026, 6, 1, 10, 5, tzinfo=timezone.utc)).tick()
"""


def test_restart_after_a_crash_mid_run_retries_that_window_once(tmp_path):
    path = spec(tmp_path)
    r = subprocess.run([sys.executable, "-c", CRASH, path], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    clock, runner = Clock(at(10, 7)), FakeRunner()
    s = Scheduler(load_pipeline(path), runner, clock=clock)
    assert statuses(s) == [("100000Z", 1, "running")]
    assert s.tick().busy and runner.calls == []  # the dead scheduler's lease has not expired yet (5 min)
    clock.now = at(10, 11)
    t = s.tick()
    assert [r["attempt"] for r in t.recovered] == [1] and [r["attempt"] for r in t.ran] == [2]
    assert statuses(s) == [("100000Z", 1, "interrupted"), ("100000Z", 2, "SUCCEEDED")]
    clock.now = at(10, 30)
    assert s.tick().ran == [] and runner.calls == [run_id_for(s.p, at(10))]


def test_two_overlapping_triggers_run_the_pipeline_once(tmp_path):
    clock = Clock(at(10, 5))
    gate = threading.Event()
    a_runner, b_runner = FakeRunner(block=gate), FakeRunner()
    a = Scheduler(load_pipeline(spec(tmp_path)), a_runner, clock=clock, owner="a")
    b = Scheduler(load_pipeline(spec(tmp_path)), b_runner, clock=clock, owner="b")
    th = threading.Thread(target=a.tick)
    th.start()
    assert a_runner.started.wait(30)
    assert b.tick().busy and b_runner.calls == []  # a holds the lease while its run is in flight
    gate.set()
    th.join(30)
    assert b.tick().ran == [] and b_runner.calls == [] and a_runner.calls == [run_id_for(a.p, at(10))]
    assert not Path(tmp_path / "ws" / "pipelines" / "tiny" / "lease.json").exists()


def test_a_lease_another_owner_took_over_is_never_renewed_over_it(tmp_path):
    import time

    from apps.schedule import Lease

    p = load_pipeline(spec(tmp_path))
    p.lease_s = 3.0  # renewed every second
    clock, ws = Clock(at(10)), Workspace(p.workspace)
    a = Lease(ws, p, "a", clock)
    assert a.acquire()
    clock.now = at(10, 1)  # a's scheduler stalled past its lease: another one (on another host) took it over
    ws.write_json(f"pipelines/{p.name}/lease.json", {"owner": "b", "expires_at": at(11).isoformat()})
    try:
        time.sleep(2.5)  # a's renewer wakes at least twice
        assert a.holder()["owner"] == "b", "a renewed a lease that b holds"
        assert a.lost.is_set() and not a.renew()
    finally:
        a.release()
    assert a.holder()["owner"] == "b"  # a's release leaves b's lease alone


def test_bad_specs_name_the_file_and_field(tmp_path):
    with pytest.raises(UserError, match="p.toml: field 'cron'"):
        load_pipeline(spec(tmp_path, cron="every hour"))
    with pytest.raises(UserError, match="field 'steps'"):
        load_pipeline(spec(tmp_path, steps='["embed", "teleport"]'))
    with pytest.raises(UserError, match="source.uri"):
        load_pipeline(spec(tmp_path, steps='["ingest"]'))
    with pytest.raises(UserError, match=r"unknown field\(s\) \['actor'\] in \[embed\]"):
        load_pipeline(spec(tmp_path, extra="[embed]\nactor = 2\n"))
    with pytest.raises(UserError, match="no such pipeline spec"):
        load_pipeline(str(tmp_path / "nope.toml"))


def test_incremental_second_run_embeds_only_the_new_images(tmp_path):
    ws = tmp_path / "ws"
    make_images(tmp_path / "incoming", 8)
    random_backbone(str(ws))
    q, box = make_query(tmp_path / "q.png")
    extra = (f'[source]\nuri = "{tmp_path / "incoming"}"\nsplit = "pool"\n'
             f'[embed]\nbackbone = "assay-small"\nlocal = true\nshard_size = 4\n'
             f'[[queries]]\nname = "red-square"\nimage = "{q}"\nboxes = [{list(box)}]\ntop_k = 3\n')
    clock = Clock(at(10, 1))
    s = Scheduler(load_pipeline(spec(tmp_path, steps='["ingest", "embed", "index", "mine"]', extra=extra)),
                  LocalRunner(), clock=clock)
    first = s.tick().ran[0]
    assert first["status"] == "SUCCEEDED", first["error"]
    assert json.loads(first["counts"]) == {"ingested": 8, "ingest_errors": 0, "embedded": 8, "embed_errors": 0,
                                           "shards_written": 2, "indexed": 8, "index_images": 8, "queries": 1,
                                           "hits": 3}
    make_images(tmp_path / "incoming", 4, start=8)  # four images arrive
    clock.now = at(11, 1)
    second = s.tick().ran[0]
    c = json.loads(second["counts"])
    assert second["status"] == "SUCCEEDED" and (c["ingested"], c["embedded"], c["indexed"]) == (4, 4, 4)
    assert c["shards_written"] == 1 and c["index_images"] == 12
    sels = sorted(p.name for p in (ws / "selections").glob("*.parquet"))
    qid = sels[0].split(".")[0]
    assert sels == sorted([f"{qid}.parquet", f"{qid}.{first['run_id']}.parquet", f"{qid}.{second['run_id']}.parquet"])
    ids = json.loads((ws / "features" / "assay-small" / "_manifest.json").read_text())["shards"]
    all_ids = [k for sh in ids for k in sh["keys"]]
    assert len(all_ids) == len(set(all_ids)) == 12


def test_schedule_commands_once_list_and_run(tmp_path, capsys, monkeypatch):
    from apps.cli.main import main
    from apps.cli.output import console

    monkeypatch.setattr(console, "quiet", False)  # an earlier in-process `assay learn` error can leave it quiet

    path = spec(tmp_path, cron="* * * * *", steps='["index"]')  # an empty workspace: the run fails, recorded
    assert main(["schedule", "once", path, "--local", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)["ran"]
    assert len(ran) == 1 and ran[0]["status"] == "FAILED" and "no catalog yet" in ran[0]["error"]  # assay index's hint
    assert main(["schedule", "list", path, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed["runs"]] == [ran[0]["run_id"]] and listed["lease"] is None
    assert listed["next"] > ran[0]["scheduled_at"]
    assert main(["schedule", "run", path, "--local", "--ticks", "1", "--poll", "0.1"]) == 0
    assert "scheduling tiny" in capsys.readouterr().out
    assert main(["schedule", "list", str(tmp_path / "missing.toml")]) == 2
    assert "no such pipeline spec" in capsys.readouterr().err
