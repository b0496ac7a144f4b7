"""actors/index.py: factory choice, exact agreement, incremental add, global kind, clear errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from actors.core.errors import UserError
from actors.features.store import FeatureMap, encode_rows
from actors.selection.index import (IDS_SCHEMA, IndexManifest, LoadedIndex, add_to_index, block_mean, build_index,
                                    cell_vectors, choose_factory, load_index, normalize)
from actors.core.shards import ShardedDataset
from actors.core.workspace import WorkspaceError


def maps(ids, seed=0, c=8, hw=(3, 4)) -> list[FeatureMap]:
    rng = np.random.default_rng(seed)
    return [FeatureMap(i, rng.normal(size=(c, *hw)).astype(np.float16), 32.0, 32.0) for i in ids]


def write(ws, fms, extra=(), meta=None):
    ds = ShardedDataset(ws, "features/toy")
    shards = ds.plan([f.image_id for f in fms] + [e[0] for e in extra], shard_size=5,
                     meta=meta or {"model": "toy", "dim": 8})
    by_id = {f.image_id: f for f in fms}
    errs = dict(extra)
    for s in ds.pending(shards):
        ds.write_shard(s, encode_rows([by_id.get(k) or (k, errs[k]) for k in s.keys]))


@pytest.mark.parametrize("n,expect", [(10, "Flat"), (999_999, "Flat"), (2_000_000, "IVF"), (20_000_000, "OPQ")])
def test_factory_is_chosen_by_vector_count(n, expect):
    f = choose_factory(n, 64)
    assert f.startswith(expect)
    if n >= 1_000_000:
        assert "PQ32" in f  # dim/2 bytes per vector
    faiss.index_factory(64, f, faiss.METRIC_INNER_PRODUCT)  # a valid factory string


def test_flat_index_agrees_with_exact_search(workspace):
    fms = maps([f"im{k}" for k in range(8)])
    write(workspace, fms, extra=[("broken", "unreadable")])
    man = build_index(workspace, "toy", progress=False, cell_pool=1)
    assert (man.factory, man.n, man.images, man.dim, man.metric) == ("Flat", 8 * 12, 8, 8, "inner_product")
    idx = load_index(workspace, "toy")
    xb = np.concatenate([cell_vectors(f, center=idx.center)[0] for f in fms])  # in shard order = sorted ids
    xq = xb[[3, 40, 77]] + 0.01
    D, I = idx.search(xq, 5)
    sims = (xq / np.linalg.norm(xq, axis=1, keepdims=True)) @ xb.T
    np.testing.assert_array_equal(I, np.argsort(-sims, axis=1)[:, :5])
    np.testing.assert_allclose(D, np.sort(sims, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert idx.lookup(I[:1, :1]) == [("im0", 0, 3)]


def test_add_indexes_only_new_images_and_search_finds_them(workspace):
    write(workspace, maps([f"old{k}" for k in range(4)]))
    first = build_index(workspace, "toy", factory="IVF2,Flat", progress=False, cell_pool=1)
    assert first.trained_on > 0 and first.generation == 1
    new = maps(["new0", "new1"], seed=7)
    write(workspace, maps([f"old{k}" for k in range(4)]) + new)
    man = add_to_index(workspace, "toy", progress=False)
    assert (man.n, man.images, man.generation, man.factory) == (6 * 12, 6, 2, "IVF2,Flat")
    idx = load_index(workspace, "toy")
    assert man.center == first.center  # the pool mean of the first build is kept
    xq = cell_vectors(new[1], center=idx.center)[0][5:6]
    D, I = idx.search(xq, 1)
    assert idx.lookup(I) == [("new1", 1, 1)] and D[0, 0] == pytest.approx(1.0, abs=1e-3)
    assert add_to_index(workspace, "toy", progress=False).generation == 2  # nothing new: no-op
    files = workspace.listdir("index/toy")
    assert files == ["ids-g00002.parquet", "images-g00002.parquet", "index-g00002.faiss",
                     "manifest.json"]  # old generation removed


def test_global_index_has_one_vector_per_image(workspace):
    write(workspace, maps(["a", "b", "c"]))
    man = build_index(workspace, "toy", kind="global", progress=False)
    assert (man.n, man.images) == (3, 3) and workspace.exists("index/toy-global/manifest.json")
    idx = load_index(workspace, "toy", kind="global")
    fms = maps(["a", "b", "c"])  # the same maps as stored
    for fm in fms:
        D, I = idx.search(cell_vectors(fm, "global", idx.center)[0], 3)
        assert idx.lookup(I[:, :1]) == [(fm.image_id, -1, -1)]  # each image finds itself first
        assert D[0, 0] == pytest.approx(1.0, abs=1e-5) and D[0, 1] < 0.999


def test_missing_index_is_a_clear_error(workspace):
    write(workspace, maps(["a"]))
    with pytest.raises(WorkspaceError, match="assay index"):
        load_index(workspace, "toy")


def test_query_on_an_empty_index_is_a_clear_error():
    man = IndexManifest("toy", "region", "Flat", "inner_product", 0, 8, 0, 0)
    idx = LoadedIndex(man, faiss.IndexFlatIP(8), IDS_SCHEMA.empty_table())
    with pytest.raises(UserError, match="empty"):
        idx.search(np.ones((1, 8), np.float32), 3)


def test_no_ok_features_is_a_clear_error(workspace):
    write(workspace, [], extra=[("x", "corrupt")])
    with pytest.raises(UserError, match="no ok feature maps"):
        build_index(workspace, "toy", progress=False)


def test_index_vectors_are_centred_with_the_pool_mean(workspace):
    rng = np.random.default_rng(5)
    offset = rng.normal(size=(8, 1, 1)) * 10  # a large component every cell shares (the "background")
    fms = [FeatureMap(f"im{k}", (rng.normal(size=(8, 3, 4)) + offset).astype(np.float16), 32.0, 32.0)
           for k in range(6)]
    write(workspace, fms)
    man = build_index(workspace, "toy", progress=False, cell_pool=1)
    cells = np.concatenate([f.fmap.astype(np.float32).reshape(8, -1).T for f in fms])
    np.testing.assert_allclose(man.center, cells.mean(0), atol=1e-4)
    idx = load_index(workspace, "toy")
    raw = cell_vectors(fms[0])[0]
    assert (raw @ raw.T).min() > 0.8  # uncentred: every pair of cells looks alike
    xb = cell_vectors(fms[0], center=idx.center)[0]
    assert abs((xb @ xb.T)[~np.eye(len(xb), dtype=bool)]).mean() < 0.5  # centred: they do not
    np.testing.assert_allclose(normalize(cells[:2] - idx.center), xb[:2], atol=1e-5)
    D, I = idx.search(xb[:2], 1)
    assert I[:, 0].tolist() == [0, 1] and np.allclose(D[:, 0], 1.0, atol=1e-3)


def test_block_mean_averages_each_block_and_only_the_cells_a_border_block_holds():
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    got = block_mean(x, 2)  # 3×5 cells -> 2×3 blocks
    assert got.shape == (2, 2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2)))


def test_cell_pooled_index_has_k_squared_fewer_vectors_and_keeps_its_pool_when_adding(workspace):
    write(workspace, maps([f"old{k}" for k in range(4)], hw=(5, 6)))
    man = build_index(workspace, "toy", cell_pool=2, progress=False)
    assert (man.n, man.cell_pool) == (4 * 3 * 3, 2)  # ceil(5/2)·ceil(6/2) blocks per image
    idx = load_index(workspace, "toy")
    fm = maps(["old0"], hw=(5, 6))[0]
    xb, rows, cols = cell_vectors(fm, center=idx.center, cell_pool=2)
    assert (int(rows.max()), int(cols.max())) == (2, 2)
    D, I = idx.search(xb[4:5], 1)  # a block vector finds itself
    assert idx.lookup(I) == [("old0", 1, 1)] and D[0, 0] == pytest.approx(1.0, abs=1e-5)
    write(workspace, maps([f"old{k}" for k in range(4)], hw=(5, 6)) + maps(["new0"], seed=3, hw=(5, 6)))
    added = add_to_index(workspace, "toy", progress=False)
    assert (added.n, added.cell_pool) == (5 * 9, 2)
    assert build_index(workspace, "toy", kind="global", cell_pool=2, progress=False).cell_pool == 1
    with pytest.raises(UserError, match="cell_pool must be >= 1"):
        build_index(workspace, "toy", cell_pool=0, progress=False)


# ------------------------------------------------------------------------- the feature store an index was built from
STORE_A = {"model": "toy", "dim": 8, "backbone": "resnet18", "weights_id": "aaaa", "stride": 8, "pool": 1, "pca": None}


def test_index_manifest_records_the_feature_store_weights_stride_pool_and_pca(workspace):
    write(workspace, maps(["a", "b"]), meta=STORE_A)
    man = build_index(workspace, "toy", progress=False)
    saved = workspace.read_json("index/toy/manifest.json")["store"]
    assert saved == man.store and (saved["weights_id"], saved["stride"], saved["pool"], saved["pca"]) == (
        "aaaa", 8, 1, None)


def test_index_of_a_re_embedded_store_is_refused_by_load_and_add_saying_to_rebuild(workspace):
    write(workspace, maps(["a", "b"]), meta=STORE_A)
    build_index(workspace, "toy", progress=False)
    workspace.delete("features/toy")  # re-embedded with other weights
    write(workspace, maps(["a", "b"], seed=5), meta={**STORE_A, "weights_id": "bbbb"})
    for call in (lambda: load_index(workspace, "toy"), lambda: add_to_index(workspace, "toy", progress=False)):
        with pytest.raises(UserError, match=r"weights_id 'aaaa' -> 'bbbb'.*assay index --model toy --rebuild"):
            call()
    build_index(workspace, "toy", progress=False)  # a rebuild takes the new store
    assert load_index(workspace, "toy").manifest.store["weights_id"] == "bbbb"


def test_index_without_a_recorded_store_is_stale(workspace):
    write(workspace, maps(["a"]), meta=STORE_A)
    build_index(workspace, "toy", progress=False)
    man = workspace.read_json("index/toy/manifest.json")
    workspace.write_json("index/toy/manifest.json", {**man, "store": {}})
    with pytest.raises(UserError, match="does not record its feature store.*--rebuild"):
        load_index(workspace, "toy")


def test_mine_and_index_commands_refuse_a_stale_index_with_one_line(workspace, capsys):
    from apps.cli.main import main

    write(workspace, maps(["a", "b"]), meta=STORE_A)
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--json"]) == 0
    capsys.readouterr()
    workspace.delete("features/toy")
    write(workspace, maps(["a", "b"], seed=5), meta={**STORE_A, "stride": 16, "pool": 2})
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "a", "--method", "global"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "stale" in err and "--rebuild" in err and len(err.splitlines()) == 1
    assert main(["index", "-w", workspace.uri, "--model", "toy"]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--rebuild", "--json"]) == 0


# ------------------------------------------------------------------------------------------ FAISS files and wheels
def test_index_files_are_faiss_write_index_files_read_back_memory_mapped(workspace, monkeypatch):
    from actors.selection import _faiss

    def no_copy(*a, **k):
        raise AssertionError("the index must not be copied through serialize_index / deserialize_index")

    monkeypatch.setattr(faiss, "serialize_index", no_copy)
    monkeypatch.setattr(faiss, "deserialize_index", no_copy)
    write(workspace, maps([f"im{k}" for k in range(4)]))
    man = build_index(workspace, "toy", progress=False, cell_pool=1)
    path = str(workspace.local_path(f"index/toy/{man.index_file}"))
    assert faiss.read_index(path).ntotal == man.n  # a plain FAISS index file
    flags = []
    real = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda p, f=0: flags.append(f) or real(p, f))
    idx = load_index(workspace, "toy")
    assert flags and flags[-1] == _faiss.mmap_flags("Flat") and flags[-1] & faiss.IO_FLAG_MMAP_IFC
    assert idx.search(idx.index.reconstruct(5)[None], 1)[1][0, 0] == 5
    add_to_index(workspace, "toy", progress=False)  # adding reads a private in-memory copy (flags 0)
    assert flags[-1] == 0


def test_ivf_index_is_memory_mapped_too(workspace):
    from actors.selection import _faiss

    flags = _faiss.mmap_flags("IVF4,Flat")
    assert flags & faiss.IO_FLAG_MMAP and flags & faiss.IO_FLAG_READ_ONLY
    write(workspace, maps([f"im{k}" for k in range(8)]))
    build_index(workspace, "toy", factory="IVF2,Flat", progress=False, cell_pool=1)
    idx = load_index(workspace, "toy")
    assert idx.search(idx.index.reconstruct_n(0, 1), 1)[0][0, 0] > 0.99


def test_index_on_a_remote_workspace_goes_through_a_local_temp_file():
    from actors.core.workspace import Workspace
    from tests.actors.core.test_images import moto_s3

    with moto_s3() as query:
        ws = Workspace(f"s3://idx/ws?{query}&allow_bucket_creation=true")
        ws.fs.create_dir("idx")
        write(ws, maps(["a", "b", "c"]))
        man = build_index(ws, "toy", progress=False, cell_pool=1)
        assert not ws.is_local and ws.exists(f"index/toy/{man.index_file}")
        assert load_index(ws, "toy").ntotal == man.n == 36


def test_two_faiss_wheels_are_refused_where_faiss_is_first_imported(monkeypatch):
    import importlib

    from actors.core import runtime
    from actors.selection import _faiss

    with monkeypatch.context() as m:
        m.setattr(runtime, "faiss_distributions", lambda: ["faiss-cpu", "faiss-gpu-cu12"])
        with pytest.raises(UserError, match="clash"):
            importlib.reload(_faiss)
    importlib.reload(_faiss)  # the real environment: one wheel



def test_id_map_holds_integer_codes_and_one_image_id_per_image(workspace):
    write(workspace, maps([f"im{k}" for k in range(5)]))
    man = build_index(workspace, "toy", progress=False, cell_pool=1)
    ids = workspace.read_table(f"index/toy/{man.ids_file}")
    assert ids.schema == IDS_SCHEMA and str(ids.schema.field("code").type) == "int32"  # no string per vector
    assert workspace.read_table(f"index/toy/{man.images_file}").column("image_id").to_pylist() == \
        [f"im{k}" for k in range(5)]
    idx = load_index(workspace, "toy")
    assert idx.image_codes.dtype == np.int32 and len(idx.image_codes) == 5 * 12 and len(idx.image_names) == 5
    assert idx.lookup(np.array([0, 12, 59])) == [("im0", 0, 0), ("im1", 0, 0), ("im4", 2, 3)]


def test_index_written_with_a_string_id_map_still_loads_and_is_rewritten_on_add(workspace):
    import dataclasses
    import pyarrow as pa

    write(workspace, maps([f"old{k}" for k in range(3)]))
    man = build_index(workspace, "toy", factory="Flat", progress=False, cell_pool=1)
    names = workspace.read_table(f"index/toy/{man.images_file}").column("image_id").to_pylist()
    codes = workspace.read_table(f"index/toy/{man.ids_file}")
    legacy = pa.table({"image_id": [names[c] for c in codes.column("code").to_pylist()],
                       "row": codes.column("row"), "col": codes.column("col")})
    workspace.write_table(f"index/toy/{man.ids_file}", legacy)  # the pre-code layout: image_id per vector
    workspace.delete(f"index/toy/{man.images_file}")
    workspace.write_json("index/toy/manifest.json",
                         {k: v for k, v in dataclasses.asdict(man).items() if k != "images_file"})
    idx = load_index(workspace, "toy")
    assert idx.lookup(np.array([13])) == [("old1", 0, 1)] and idx.image_codes.dtype == np.int32
    write(workspace, maps([f"old{k}" for k in range(3)]) + maps(["new0"], seed=4))
    added = add_to_index(workspace, "toy", progress=False)
    assert added.images_file and workspace.read_table(f"index/toy/{added.ids_file}").schema == IDS_SCHEMA
    assert load_index(workspace, "toy").lookup(np.array([13, 36])) == [("old1", 0, 1), ("new0", 0, 0)]


@pytest.mark.parametrize("stride,k", [(16, 2), (8, 4), (32, 1), (None, 2)])
def test_default_coarse_blocks_are_about_32_px(workspace, stride, k):
    """By default a region vector covers ~32 px whatever the store's cell size (2×2 cells of a 16-px store, 4×4 of
    an 8-px one); a store whose meta has no cell size keeps 2×2 blocks."""
    meta = {"model": "toy", "dim": 8, **({"stride": stride} if stride else {})}
    write(workspace, maps([f"im{n}" for n in range(3)], hw=(8, 8)), meta=meta)
    man = build_index(workspace, "toy", progress=False)
    assert man.cell_pool == k and man.n == 3 * (-(-8 // k)) ** 2
