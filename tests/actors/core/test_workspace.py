from __future__ import annotations

import os

import pyarrow as pa
import pytest

from actors.core.errors import UserError
from actors.core.shards import ShardedDataset
from actors.core.workspace import Workspace, WorkspaceError


def test_atomic_table_roundtrip_and_no_temp_left(workspace):
    t = pa.table({"a": [1, 2, 3]})
    workspace.write_table("catalog/x.parquet", t)
    assert workspace.read_table("catalog/x.parquet").equals(t)
    assert os.listdir(workspace.local_path("catalog")) == ["x.parquet"]


def test_failed_write_keeps_old_file(workspace, monkeypatch):
    workspace.write_json("plans/p.json", {"v": 1})

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        workspace._atomic("plans/p.json", boom)
    assert workspace.read_json("plans/p.json") == {"v": 1}
    assert workspace.listdir("plans") == ["p.json"]
    assert sorted(os.listdir(workspace.local_path("plans"))) == ["p.json"]


def test_paths_cannot_escape(workspace):
    with pytest.raises(ValueError, match="inside the workspace"):
        workspace.path("../etc/passwd")
    with pytest.raises(ValueError):
        workspace.path("/etc/passwd")


def test_missing_file_error_names_it(workspace):
    with pytest.raises(WorkspaceError, match="nothing.parquet"):
        workspace.read_table("nothing.parquet")


def test_file_uri_and_pickle(tmp_path):
    import pickle

    ws = Workspace(f"file://{tmp_path}/w")
    ws.write_json("a.json", {"k": [1]})
    ws2 = pickle.loads(pickle.dumps(ws))
    assert ws2.read_json("a.json") == {"k": [1]}


def test_shards_resume_and_incremental_plan(workspace):
    ds = ShardedDataset(workspace, "features/m")
    shards = ds.plan([f"id{i:03d}" for i in range(10)], shard_size=4, meta={"model": "m"})
    assert [len(s.keys) for s in shards] == [4, 4, 2]
    ds.write_shard(shards[0], pa.table({"image_id": shards[0].keys}))
    # a "crash" here: shard 1 and 2 never written
    again = ShardedDataset(workspace, "features/m")
    assert [s.index for s in again.pending()] == [1, 2]
    # planning again with the same keys in another order changes nothing
    assert [s.keys for s in again.plan(reversed([f"id{i:03d}" for i in range(10)]), 4, {"model": "m"})] == \
        [s.keys for s in shards]
    # new keys go to new shards, old shards are untouched
    more = again.plan([f"id{i:03d}" for i in range(13)], 4, {"model": "m"})
    assert len(more) == 4 and more[3].keys == ["id010", "id011", "id012"]
    assert ds.read().num_rows == 4


def test_shards_refuse_mixed_settings(workspace):
    ds = ShardedDataset(workspace, "features/m")
    ds.plan(["a"], 4, meta={"model": "m", "grid": 8})
    with pytest.raises(UserError, match="existing shards were made with"):
        ds.plan(["b"], 4, meta={"model": "m", "grid": 16})


def test_relative_workspace_pickles_as_absolute_and_is_not_re_resolved_in_another_cwd(tmp_path, monkeypatch):
    import pickle

    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    ws = Workspace("rel-ws")
    ws.write_json("x.json", {"a": 1})
    assert ws.uri == str(tmp_path / "here" / "rel-ws")
    blob = pickle.dumps(ws)
    monkeypatch.chdir(tmp_path / "elsewhere")  # an actor's working directory
    back = pickle.loads(blob)
    assert back.base == str(tmp_path / "here" / "rel-ws") and back.read_json("x.json") == {"a": 1}
