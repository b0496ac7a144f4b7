"""The feature store's random access (FeatureReader) against a plain scan."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from actors.features.store import (FeatureMap, FeatureReader, encode_rows, feature_rows, features_dir, iter_feature_maps,
                             write_feature_shard)
from actors.core.shards import ShardedDataset
from actors.core.workspace import Workspace, WorkspaceError


def _store(ws: Workspace, n: int, row_group_size: int, failed: frozenset = frozenset()) -> dict[str, np.ndarray]:
    """``n`` images in shards of 7, ids deliberately not in sorted order; some of them failed."""
    rng = np.random.default_rng(0)
    maps = {f"img{(i * 37) % n:03d}": rng.standard_normal((4, 3, 5)).astype(np.float16) for i in range(n)}
    ds = ShardedDataset(ws, features_dir("m"))
    for shard in ds.plan(maps, 7, {"model": "m", "dim": 4}):
        items = [(k, "unreadable image") if k in failed else FeatureMap(k, maps[k], 8.0, 8.0)
                 for k in reversed(shard.keys)]
        ds.write_shard(shard, encode_rows(items).sort_by("image_id"), row_group_size=row_group_size)
    return {k: v for k, v in maps.items() if k not in failed}


@pytest.mark.parametrize("row_group_size", [1, 3, 1000])
def test_reader_returns_exactly_the_asked_rows_in_the_asked_order(tmp_path, row_group_size):
    ws = Workspace(tmp_path)
    maps = _store(ws, 30, row_group_size, failed=frozenset({"img004"}))
    reader = FeatureReader(ws, "m", threads=3)
    ask = ["img029", "img004", "img000", "nope", "img013", "img014", "img000"]
    got = reader.get(ask)
    assert [f.image_id for f in got] == ["img029", "img000", "img013", "img014", "img000"]  # failed/unknown skipped
    for f in got:
        np.testing.assert_array_equal(f.fmap, maps[f.image_id])
        assert f.stride_y == 8.0 and f.fmap.dtype == np.float16
    assert len(reader) == 30 and "img004" in reader and "nope" not in reader


def test_iter_feature_maps_by_id_agrees_with_the_scan(tmp_path):
    ws = Workspace(tmp_path)
    _store(ws, 40, 1)
    scanned = {f.image_id: f.fmap for f in iter_feature_maps(ws, "m")}
    few = ["img001", "img039"]  # under a tenth of the store: row-level path
    assert {f.image_id for f in iter_feature_maps(ws, "m", image_ids=few)} == set(few)
    for f in iter_feature_maps(ws, "m", image_ids=few):
        np.testing.assert_array_equal(f.fmap, scanned[f.image_id])
    many = sorted(scanned)[:20]  # half the store: scan path, same answer
    assert sorted(f.image_id for f in iter_feature_maps(ws, "m", image_ids=many)) == many


def test_reader_sees_shards_added_after_refresh_and_refuses_a_tampered_store(tmp_path):
    ws = Workspace(tmp_path)
    _store(ws, 10, 1)
    reader = FeatureReader(ws, "m")
    ds = ShardedDataset(ws, features_dir("m"))
    [new] = [s for s in ds.plan(["img010", "img011", *[f"img{i:03d}" for i in range(10)]], 7) if s.index == 2]
    ds.write_shard(new, encode_rows([FeatureMap(k, np.zeros((4, 3, 5), np.float16), 8.0, 8.0) for k in new.keys]))
    assert reader.get(["img011"]) == []
    reader.refresh()
    assert [f.image_id for f in reader.get(["img011"])] == ["img011"]
    first = ds.shards()[0]  # rewrite shard 0 with its rows in the wrong order
    rows = encode_rows([FeatureMap(k, np.zeros((4, 3, 5), np.float16), 8.0, 8.0) for k in reversed(first.keys)])
    ds.write_shard(first, rows)
    with pytest.raises(WorkspaceError, match="re-embed"):
        reader.get([first.keys[0]])


def test_feature_rows_come_from_the_summaries_and_fall_back_to_old_shards(tmp_path):
    ws = Workspace(tmp_path)
    maps = _store(ws, 20, 1, failed=frozenset({"img003"}))  # written without summaries (a store from before them)
    ds = ShardedDataset(ws, features_dir("m"))
    old = feature_rows(ws, "m", columns=["image_id", "grid_h", "status"])
    assert old.num_rows == 20 and "fmap" not in old.column_names
    first = ds.shards()[0]
    rows = encode_rows([FeatureMap(k, maps[k], 8.0, 8.0) if k in maps else (k, "bad") for k in first.keys])
    write_feature_shard(ds, first, rows)  # rewrite shard 0 the current way: summary + one image per row group
    assert ws.exists(f"{features_dir('m')}/_rows/{first.name}")
    assert [p.split("/")[-1] for p in ds.part_paths()] == [s.name for s in ds.shards()]  # summaries are no parts
    new = feature_rows(ws, "m")
    assert sorted(new["image_id"].to_pylist()) == sorted(old["image_id"].to_pylist())
    assert new.filter(pc.equal(new["status"], "error"))["image_id"].to_pylist() == ["img003"]
    with pytest.raises(ValueError, match="never reads fmap"):
        feature_rows(ws, "m", columns=["fmap"])
