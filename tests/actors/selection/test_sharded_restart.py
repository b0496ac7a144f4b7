"""A shard actor killed mid-build (real Ray, SIGKILL of its process) restarts and reloads its last committed
generation: the driver must notice the images it lost, and a build must add them again (#24 item 4)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from actors.selection._faiss import faiss
from actors.selection.shard_plan import shard_of
from tests.actors.selection.test_sharded import DIM, toy_images


def _kill_and_wait(idx, shard: int) -> None:
    """SIGKILL shard ``shard``'s actor process and wait until Ray has restarted it (a new pid answers)."""
    old = idx.pids()[shard]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if idx.pids()[shard] != old:
                return
        except Exception:  # noqa: BLE001 - the call that met the dying actor; the next one waits for its restart
            pass
        time.sleep(0.2)
    raise AssertionError(f"shard {shard}'s actor did not restart")


def test_save_after_a_shard_actor_restart_names_the_images_it_lost(ray_cluster, workspace):
    from actors.selection.sharded import ShardedIndex, ShardImagesLost, batches

    ids, counts, xb, rows, cols = toy_images(40)
    cut = int(counts[:20].sum())
    idx = ShardedIndex.create(workspace, "toy", faiss.IndexFlatIP(DIM), n_shards=2, factory="Flat")
    try:
        idx.add(batches(ids[:20], xb[:cut], counts[:20], rows[:cut], cols[:cut]))
        idx.flush()  # shard 0 holds its first images in memory only (nothing committed yet)
        _kill_and_wait(idx, 0)
        idx.add(batches(ids[20:], xb[cut:], counts[20:], rows[cut:], cols[cut:]))
        with pytest.raises(ShardImagesLost) as e:
            idx.save()
        lost = [i for i, s in zip(ids[:20], shard_of(ids[:20], 2)) if s == 0]
        assert e.value.shards == [0] and sorted(e.value.image_ids) == sorted(lost)
        assert str(e.value).count("\n") == 0
        # adding the lost images again completes the index: every image in it once
        again = [ids.index(i) for i in lost]
        ends = np.cumsum(counts)
        idx.add((ids[k], xb[ends[k] - counts[k]:ends[k]], rows[ends[k] - counts[k]:ends[k]],
                 cols[ends[k] - counts[k]:ends[k]]) for k in again)
        idx.save()
        st = idx.stats()
        assert sum(s["images"] for s in st) == 40 and sum(s["n"] for s in st) == len(xb)
    finally:
        idx.close()


def test_build_sharded_re_adds_the_images_of_a_shard_actor_killed_mid_build(ray_cluster, workspace, monkeypatch):
    import actors.selection.sharded as sharded
    import actors.selection.sharded_build as sb
    from actors.selection.index import build_index
    from actors.selection.sharded_build import build_sharded, indexed_images
    from tests.actors.selection.test_index import maps, write

    fms = maps([f"im{k:02d}" for k in range(30)], hw=(4, 4))
    write(workspace, fms)
    monkeypatch.setattr(sharded, "ADD_BATCH", 16)  # a flush every few images: the kill lands between flushes
    real_iter, state = sb.iter_feature_maps, {"seen": 0, "killed": False}
    created = []
    real_create = sharded.ShardedIndex.create.__func__

    def create(cls, *a, **kw):
        created.append(real_create(cls, *a, **kw))
        return created[-1]

    def iter_and_kill(ws, model, image_ids=None):
        for fm in real_iter(ws, model, image_ids=image_ids):
            state["seen"] += bool(created)  # the add pass (the centre's sample is read before the actors start)
            if state["seen"] == 20 and not state["killed"]:  # two thirds through the first pass
                state["killed"] = True
                _kill_and_wait(created[0], 0)
            yield fm

    monkeypatch.setattr(sharded.ShardedIndex, "create", classmethod(create))
    monkeypatch.setattr(sb, "iter_feature_maps", iter_and_kill)
    out = build_sharded(workspace, "toy", n_shards=2, factory="Flat", cell_pool=1, progress=False)
    assert state["killed"]
    assert out["images"] == 30 and indexed_images(workspace, "toy") == {f.image_id for f in fms}
    single = build_index(workspace, "toy", factory="Flat", cell_pool=1, progress=False)
    assert out["n"] == single.n  # every vector once: nothing lost, nothing twice
