"""Fault tolerance and more than one node, on tiny worlds.

* An embedding actor is killed (SIGKILL to its worker process) after the first shard was written: the step
  finishes, every catalog image is in the store exactly once, and the features equal an in-process run's.
* A local multi-node cluster (``ray.cluster_utils.Cluster``: a head with no CPUs and two worker nodes) runs embed
  and mine with every actor on the worker nodes; one worker node is removed mid-embed; the features and the
  selections equal a single-process run's.

A scenario kills only processes of its own Ray session (descendants of its process), never another session's
``ray::EmbedActor`` on the same machine (a decoy checks it).

Each scenario runs in its own Python process, so its Ray instance never meets the session's ``ray_cluster``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.apps.test_jobs import ROOT, make_images, make_query, random_backbone

pytestmark = [pytest.mark.slow, pytest.mark.long]

COMMON = r"""
import json, os, signal, sys, threading, time
from pathlib import Path
from tests.procs import command, descendants
ws = sys.argv[1]
parts = Path(ws) / "features" / "assay-small"

def n_parts():
    return len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0

def worker_pids(tag):
    # only this script's own Ray workers: its local instance's raylet (a child of this process) starts them; a
    # `ray::<tag>` process of another session on the machine is never touched
    return sorted(pid for pid in descendants(os.getpid()) - {os.getpid()}
                  if command(pid).startswith("ray::") and tag in command(pid))

def when_first_shard(action):
    def watch():
        while n_parts() < 1:
            time.sleep(0.02)
        action()
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th
"""

KILL = COMMON + r"""
from actors.core.runtime import Resources, init_ray
from actors.features.embed import embed_pool

init_ray(num_cpus=2, object_store_memory=200 * 2**20)
killed = {}

def kill():
    pids = worker_pids("EmbedActor")
    killed.update(pids=pids, parts_at_kill=n_parts())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

th = when_first_shard(kill)
rep = embed_pool(ws, model="assay-small", resources=Resources(pool_size=1, num_cpus=0.5, batch_size=1), shard_size=2,
                 progress=False)
th.join(5)
print(json.dumps({"killed": killed, "n_embedded": rep.n_embedded, "shards_written": rep.shards_written,
                  "shards_total": rep.shards_total}))
"""

MULTINODE = COMMON + r"""
import ray
from ray.cluster_utils import Cluster
from actors.core.runtime import Resources, init_ray
from actors.core.workspace import Workspace
from actors.features.embed import embed_pool
from actors.selection.mine import Query, mine_batch
from apps.jobs import index_step

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 120 * 2**20,
                                                       "include_dashboard": False})
workers = [cluster.add_node(num_cpus=2, object_store_memory=120 * 2**20) for _ in range(2)]
cluster.wait_for_nodes()
init_ray(address=cluster.address)
head_id = cluster.head_node.node_id
removed = {}

def remove():
    removed.update(node=workers[1].node_id, parts_at_removal=n_parts())
    cluster.remove_node(workers[1])  # its raylet stops (SIGTERM): the actors on it die mid-batch

th = when_first_shard(remove)
rep = embed_pool(ws, model="assay-small", resources=Resources(pool_size=2, num_cpus=0.5, batch_size=1), shard_size=2,
                 progress=False)
th.join(5)
index_step(ws, model="assay-small")
qs = [Query(q["image"], [tuple(q["box"])], top_k=4, model="assay-small") for q in json.loads(sys.argv[2])]
sels = mine_batch(Workspace(ws), qs, workers=2)
actors = [a for a in ray._private.state.actors().values()]
placed = sorted({(a["ActorClassName"], a["Address"]["NodeID"]) for a in actors})
print(json.dumps({"n_embedded": rep.n_embedded, "shards_written": rep.shards_written, "removed": removed,
                  "head": head_id, "workers": [w.node_id for w in workers], "placed": placed,
                  "selections": [[(h.image_id, h.score) for h in s.hits] for s in sels]}))
ray.shutdown()
cluster.shutdown()
"""


def _decoy(tag: str) -> subprocess.Popen:
    """A process of nobody's Ray session whose title is a Ray worker's (``ray::<tag>``), in its own group."""
    return subprocess.Popen([f"ray::{tag}", "600"], executable="sleep", start_new_session=True)


def test_worker_pids_finds_this_sessions_actors_and_never_another_sessions(tmp_path):
    probe = COMMON + r"""
import subprocess
ours = subprocess.Popen(["ray::EmbedActor", "600"], executable="sleep")
time.sleep(0.2)
found = worker_pids("EmbedActor")
ours.kill()
print(json.dumps({"found": found, "ours": ours.pid}))
"""
    decoy = _decoy("EmbedActor")
    try:
        out = _script(probe, str(tmp_path), timeout=60)
        assert decoy.poll() is None
        assert out["found"] == [out["ours"]], out  # its own worker, not the other session's
    finally:
        decoy.kill()
        decoy.wait()


def _script(code: str, *args: str, timeout: float = 420) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _world(root: Path, name: str, images: Path) -> str:
    """A workspace over ``images`` (every workspace over the same folder has the same image ids)."""
    from apps.jobs import ingest_step

    ws = str(root / name)
    random_backbone(ws)  # seeded: every workspace gets the same weights
    ingest_step(ws, str(images), split="pool")
    return ws


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The scenarios' 16-image pool (320×240: big enough that a kill or removal lands mid-embed) and, once for the
    module, a workspace over it embedded in this process, indexed, and the query's hits: what every scenario's
    results must equal."""
    from actors.core.workspace import Workspace
    from actors.selection.mine import Query, mine_batch
    from apps.jobs import embed_step, index_step

    root = tmp_path_factory.mktemp("multinode")
    images = root / "images"
    make_images(images, 16, size=(320, 240))
    ref = _world(root, "local", images)
    q, box = make_query(root / "q.png")
    embed_step(ref, backbone="assay-small", local=True, shard_size=2)
    index_step(ref, model="assay-small")
    hits = [[(h.image_id, h.score) for h in s.hits]
            for s in mine_batch(Workspace(ref), [Query(q, [box], top_k=4, model="assay-small")])]
    return {"images": images, "ws": ref, "query": (q, box), "hits": hits, "features": _features(ref)}


def _features(ws: str) -> dict[str, np.ndarray]:
    from actors.core.workspace import Workspace
    from actors.features.store import iter_feature_maps

    return {fm.image_id: np.asarray(fm.fmap, np.float32) for fm in iter_feature_maps(Workspace(ws), "assay-small")}


def _stored_ids(ws: str) -> list[str]:
    import pyarrow.parquet as pq

    return [i for p in sorted((Path(ws) / "features" / "assay-small").glob("part-*.parquet"))
            for i in pq.read_table(p, columns=["image_id"])["image_id"].to_pylist()]


def _same_features(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-3, rtol=1e-2)


def test_killing_an_embedding_actor_mid_step_loses_and_duplicates_nothing(tmp_path, reference):
    ws = _world(tmp_path, "ray", reference["images"])
    decoy = _decoy("EmbedActor")  # another session's actor on the same machine: never killed
    try:
        out = _script(KILL, ws)
        assert decoy.poll() is None and decoy.pid not in out["killed"]["pids"]
    finally:
        decoy.kill()
        decoy.wait()
    assert out["killed"]["pids"], "no embedding actor process was found to kill"
    assert out["killed"]["parts_at_kill"] < out["shards_total"] == 8  # killed mid-step, not after it
    assert out["n_embedded"] == 16 and out["shards_written"] == 8
    ids = _stored_ids(ws)
    assert len(ids) == len(set(ids)) == 16  # nothing lost, nothing twice
    _same_features(_features(ws), reference["features"])


def test_two_worker_nodes_one_removed_mid_run_give_the_single_node_results(tmp_path, reference):
    ws = _world(tmp_path, "cluster", reference["images"])
    q, box = reference["query"]
    ref_hits = reference["hits"]

    out = _script(MULTINODE, ws, json.dumps([{"image": q, "box": box}]))
    assert out["removed"]["parts_at_removal"] < 8  # removed mid-embed
    assert out["n_embedded"] == 16 and out["shards_written"] == 8
    ids = _stored_ids(ws)
    assert len(ids) == len(set(ids)) == 16
    _same_features(_features(ws), reference["features"])
    ours = {(cls, node) for cls, node in map(tuple, out["placed"]) if "EmbedActor" in cls or cls == "MatchActor"}
    assert {"MatchActor"} < {cls for cls, _ in ours} and any("EmbedActor" in cls for cls, _ in ours)
    assert all(node in out["workers"] for _, node in ours)  # every embedding and match actor ran on a worker node
    got = out["selections"]
    assert [[i for i, _ in s] for s in got] == [[i for i, _ in s] for s in ref_hits]
    np.testing.assert_allclose([[v for _, v in s] for s in got], [[v for _, v in s] for s in ref_hits], atol=1e-3)
