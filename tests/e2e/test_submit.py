"""End to end on Ray's Jobs API: `assay cluster up` (127.0.0.1, free ports, token auth) -> `assay submit mine --wait`
on a tiny world -> SUCCEEDED, selections in the workspace, logs readable -> `assay cluster down`.

Every command runs as its own process (as a user would type it), so this test never touches the session's Ray
instance or its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.apps.test_jobs import ROOT, make_images, make_query, random_backbone

pytestmark = [pytest.mark.slow, pytest.mark.long]


def assay(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_mine_to_a_local_head_and_wait(tmp_path):
    from apps.jobs import embed_step, index_step, ingest_step

    ws = str(tmp_path / "ws")
    make_images(tmp_path / "in", 12)
    random_backbone(ws)
    ingest_step(ws, str(tmp_path / "in"), split="pool")
    embed_step(ws, backbone="assay-small", local=True, shard_size=4)  # random weights, fast (the default
    index_step(ws, model="assay-small")  # backbone's own flow: tests/apps/cli/test_embed.py)
    q, box = make_query(tmp_path / "q.png")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
    env.update(ASSAY_CLUSTER_DIR=str(tmp_path / "cluster"), PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    up = assay("cluster", "up", "--num-cpus", "1", "--json", env=env)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        st = json.loads(up.stdout)
        assert st["address"].startswith("127.0.0.1:") and st["dashboard"].startswith("http://127.0.0.1:")
        assert st["auth"] and oct(os.stat(st["token_path"]).st_mode & 0o777) == "0o600"
        t_up = time.monotonic() - t0

        # a job started on this machine joins the running head (no cold Ray start) and says so
        emb = assay("embed", "-w", ws, "-b", "assay-small", "--name", "via-head", "--json", env=env)
        assert emb.returncode == 0, emb.stderr[-3000:]
        rep = json.loads(emb.stdout)
        assert (rep["mode"], rep["path"], rep["n_embedded"]) == ("ray", f"on Ray, joining {st['address']}", 12)

        # token auth is on: a client with another token is refused
        bad = assay("jobs", "list", env=dict(env, RAY_AUTH_TOKEN="0" * 64))
        assert bad.returncode != 0

        t1 = time.monotonic()
        sub = assay("submit", "mine", "-w", ws, "-m", "assay-small", "--image", q, "--box", ",".join(map(str, box)),
                    "-k", "4", "--run-id", "e2e", "--wait", env=env)
        t_job = time.monotonic() - t1
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        out = json.loads(sub.stdout.strip().splitlines()[-1])  # the job's final JSON line, followed live
        qid = out["selections"][0]["query_id"]
        assert out["selections"][0]["hits"] == 4
        assert (tmp_path / "ws" / "selections" / f"{qid}.parquet").exists()
        assert (tmp_path / "ws" / "selections" / f"{qid}.e2e.parquet").exists()

        jl = assay("jobs", "list", "--json", env=env)
        job = json.loads(jl.stdout)[0]
        assert job["status"] == "SUCCEEDED" and "-m apps.jobs mine" in job["entrypoint"]
        assert job["entrypoint"].startswith(sys.executable)  # the head's interpreter is named
        logs = assay("jobs", "logs", job["job_id"], env=env)
        assert logs.returncode == 0 and qid in logs.stdout

        failing = assay("submit", "index", "-w", str(tmp_path / "nothing-here"), "--wait", env=env)
        assert failing.returncode == 2  # the job's own exit status (a user error)

        # the scheduler submits a due pipeline run as a Ray job with a deterministic id and records it
        spec = tmp_path / "standing.toml"
        spec.write_text(f'name = "standing"\nworkspace = "{ws}"\ncron = "* * * * *"\nsteps = ["index", "mine"]\n'
                        f'[index]\nmodel = "assay-small"\n'
                        f'[[queries]]\nimage = "{q}"\nboxes = [{list(box)}]\ntop_k = 4\n')
        t2 = time.monotonic()
        once = assay("schedule", "once", str(spec), "--json", env=env)
        t_pipe = time.monotonic() - t2
        assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
        run = json.loads(once.stdout)["ran"][0]
        assert run["status"] == "SUCCEEDED" and run["job_id"] == f"{run['run_id']}-a1", run
        assert run["counts"] == {"indexed": 0, "index_images": 12, "queries": 1, "hits": 4}
        assert (tmp_path / "ws" / "selections" / f"{qid}.{run['run_id']}.parquet").exists()
        probe = subprocess.run([sys.executable, "-c", "from apps.schedule import RayJobRunner; "
                                "print(RayJobRunner().recover('never-submitted-a1'))"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert probe.stdout.strip() == "None", probe.stderr[-2000:]  # unknown job: the window is retried
        print(f"head up {t_up:.1f} s; submit mine --wait {t_job:.1f} s; schedule once (Ray job) {t_pipe:.1f} s")
    finally:
        down = assay("cluster", "down", "--json", env=env)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"]
    pid = st["pid"]
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
