"""Sharded index: pure assignment/merge, one shard on disk (no Ray), and N Ray shard actors == one index."""

from __future__ import annotations

import numpy as np
import pytest

from actors.selection._faiss import faiss
from actors.selection.index import normalize
from actors.selection.shard_plan import group_by_shard, merge_topk, shard_of
from actors.selection.shard_store import Shard, shards_root, write_template

DIM = 16


def toy_images(n_images: int, seed: int = 0, prefix: str = "im"):
    """Image ids, per-image vector counts (3..9), unit vectors (clustered), rows, cols."""
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{seed}-{i}" for i in range(n_images)]
    counts = rng.integers(3, 10, n_images)
    centres = rng.normal(size=(8, DIM))
    n = int(counts.sum())
    xb = normalize(centres[rng.integers(0, 8, n)] + 0.5 * rng.normal(size=(n, DIM)))
    rows = np.concatenate([np.arange(c) // 3 for c in counts]).astype(np.int16)
    cols = np.concatenate([np.arange(c) % 3 for c in counts]).astype(np.int16)
    return ids, counts, xb, rows, cols


def per_vector_ids(ids, counts, rows, cols):
    return [(i, int(r), int(c)) for i, r, c in zip(np.repeat(ids, counts), rows, cols)]


# ------------------------------------------------------------------------------------------- pure
def test_shard_of_is_deterministic_spreads_images_and_validates():
    ids = [f"{i:016x}" for i in range(4000)]
    s = shard_of(ids, 4)
    assert s.dtype == np.int32 and set(s.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(s, shard_of(list(reversed(ids)), 4)[::-1])  # a function of the id alone
    assert min(np.bincount(s)) > 900  # roughly even
    assert [len(g) for g in group_by_shard(s, 4)] == np.bincount(s).tolist()
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(ids, 0)


def test_merge_topk_equals_a_sort_of_the_union():
    rng = np.random.default_rng(1)
    Ds, Is = [], []
    for s in range(3):
        D = -np.sort(-rng.random((5, 4)).astype(np.float32), axis=1)
        Ds.append(D)
        Is.append(rng.integers(0, 100, (5, 4)))
    D, S, I = merge_topk(Ds, Is, 6)
    allD, allS = np.hstack(Ds), np.repeat(np.arange(3), 4)
    for q in range(5):
        order = np.argsort(-allD[q])[:6]
        np.testing.assert_array_equal(D[q], allD[q, order])
        assert list(zip(S[q], I[q])) == [(allS[j], np.hstack(Is)[q, j]) for j in order]


def test_merge_topk_skips_missing_results_and_pads_short_ones():
    Ds = [np.array([[0.9, -3e38]], np.float32), np.array([[0.5, 0.95]], np.float32)]
    Is = [np.array([[7, -1]]), np.array([[2, -1]])]  # shard 1's second hit is missing despite its score
    D, S, I = merge_topk(Ds, Is, 4)
    assert D[0, :2].tolist() == pytest.approx([0.9, 0.5]) and np.isneginf(D[0, 2:]).all()
    assert S[0].tolist() == [0, 1, -1, -1] and I[0].tolist() == [7, 2, -1, -1]


# ------------------------------------------------------------------------------------------- one shard, no Ray
def test_shard_saves_generations_atomically_reopens_mmapped_and_skips_images_it_holds(workspace):
    root = shards_root("toy")
    write_template(workspace, root, faiss.IndexFlatIP(DIM), factory="Flat", n_shards=1)
    ids, counts, xb, rows, cols = toy_images(6)
    sh = Shard(workspace, root, 0)
    assert sh.add(ids[:4], counts[:4], xb[:counts[:4].sum()], rows[:counts[:4].sum()], cols[:counts[:4].sum()]) \
        == counts[:4].sum()
    assert sh.save()["generation"] == 1
    assert sh.add(ids, counts, xb, rows, cols) == counts[4:].sum()  # the first four are held already: skipped
    man = sh.save()
    assert (man["generation"], man["n"], man["images"]) == (2, len(xb), 6)
    assert workspace.listdir(f"{root}/0") == ["ids-g00002.parquet", "images-g00002.parquet", "index-g00002.faiss",
                                              "manifest.json"]  # generation 1 removed after the commit
    again = Shard(workspace, root, 0)  # reopened from disk, memory-mapped
    D, I = again.search(xb[[0, 30]], 1)
    assert again.lookup(I) == [per_vector_ids(ids, counts, rows, cols)[j] for j in (0, 30)]
    assert again.add(ids, counts, xb, rows, cols) == 0 and again.save()["generation"] == 2  # no-op


# ------------------------------------------------------------------------------------------- N actors == one index
def _single(factory, template, xb):
    single = faiss.clone_index(template)
    single.add(xb)
    if "IVF" in factory:
        faiss.ParameterSpace().set_index_parameter(single, "nprobe", 3)
    return single


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,PQ4x4"])
def test_sharded_search_equals_a_single_index(ray_cluster, workspace, factory):
    from actors.selection.sharded import ShardedIndex, batches

    ids, counts, xb, rows, cols = toy_images(120)
    template = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    template.train(toy_images(200, seed=9)[2])  # train once; every shard starts from this trained empty index
    single = _single(factory, template, xb)
    truth = per_vector_ids(ids, counts, rows, cols)
    xq = normalize(xb[::37] + 0.3 * np.random.default_rng(3).normal(size=(len(xb[::37]), DIM)))
    k = 10
    D1, I1 = single.search(xq, k)

    idx = ShardedIndex.create(workspace, "toy", template, n_shards=2, factory=factory,
                              nprobe=3 if "IVF" in factory else 0)
    try:
        idx.add(batches(ids, xb, counts, rows, cols))
        idx.save()
        stats = idx.stats()
        assert sum(s["n"] for s in stats) == len(xb) and min(s["images"] for s in stats) > 40
        D, S, I = idx.search(xq, k)
        got = idx.lookup(S, I)
    finally:
        idx.close()
    want = [truth[i] for i in np.ravel(I1)]
    np.testing.assert_allclose(D, D1, atol=1e-5)
    if "PQ" in factory:  # PQ scores tie where codes coincide: equal hits up to the order of tied ones
        for q in range(len(xq)):
            a, b, cut = got[q * k:(q + 1) * k], want[q * k:(q + 1) * k], D1[q, -1] + 1e-5
            assert sorted(h for h, d in zip(a, D[q]) if d > cut) == sorted(h for h, d in zip(b, D1[q]) if d > cut)
        assert (D1 > D1[:, -1:] + 1e-5).mean() > 0.7  # most hits are above the tied boundary: the check has teeth
    else:
        assert got == want  # same vectors, same order


def test_incremental_add_routes_new_images_to_their_hash_shard_equals_a_rebuild_and_reopens(ray_cluster, workspace):
    from actors.selection.sharded import ShardedIndex, batches

    ids, counts, xb, rows, cols = toy_images(60)
    ids2, counts2, xb2, rows2, cols2 = toy_images(30, seed=5, prefix="new")
    template = faiss.IndexFlatIP(DIM)
    idx = ShardedIndex.create(workspace, "toy", template, n_shards=3, factory="Flat")
    try:
        idx.add(batches(ids, xb, counts, rows, cols))
        idx.save()
        before = {s["shard"]: s["images"] for s in idx.stats()}
        idx.add(batches(ids2 + ids[:5], np.concatenate([xb2, xb[:counts[:5].sum()]]),
                        np.concatenate([counts2, counts[:5]]), np.concatenate([rows2, rows[:counts[:5].sum()]]),
                        np.concatenate([cols2, cols[:counts[:5].sum()]])))  # 5 old images again: skipped
        mans = idx.save()
        after = {s["shard"]: s["images"] for s in idx.stats()}
        assert all(m["generation"] == 2 for m, k in zip(mans, range(3)) if after[k] > before[k])
        expect = np.bincount(shard_of(ids2, 3), minlength=3)
        assert [after[k] - before[k] for k in range(3)] == expect.tolist()
        all_ids, all_counts = ids + ids2, np.concatenate([counts, counts2])
        all_xb, all_rows, all_cols = (np.concatenate(p) for p in ((xb, xb2), (rows, rows2), (cols, cols2)))
        single = _single("Flat", template, all_xb)
        D1, I1 = single.search(all_xb[::11], 8)
        D, S, I = idx.search(all_xb[::11], 8)
        truth = per_vector_ids(all_ids, all_counts, all_rows, all_cols)
        got = idx.lookup(S, I)
        assert got == [truth[i] for i in np.ravel(I1)]
        firsts = np.array([truth.index((i, 0, 0)) for i in ids2])
        _, S1, _ = idx.search(all_xb[firsts], 1)  # each new image's first vector finds itself ...
        assert S1[:, 0].tolist() == shard_of(ids2, 3).tolist()  # ... in its hash's shard
    finally:
        idx.close()
    reopened = ShardedIndex.open(workspace, "toy")  # new actors, shards memory-mapped from disk
    try:
        D2, S2, I2 = reopened.search(all_xb[::11], 8)
        assert reopened.lookup(S2, I2) == got and np.array_equal(D2, D)
    finally:
        reopened.close()


def test_sharding_a_built_region_index_returns_what_it_returns(ray_cluster, workspace):
    from actors.selection.index import build_index, cell_vectors, load_index
    from actors.selection.sharded import ShardedIndex
    from tests.actors.selection.test_index import maps, write

    fms = maps([f"im{k}" for k in range(12)], hw=(5, 6))
    write(workspace, fms)
    build_index(workspace, "toy", factory="IVF4,Flat", nprobe=2, cell_pool=2, progress=False)
    single = load_index(workspace, "toy")
    xq = np.concatenate([cell_vectors(f, center=single.center, cell_pool=2)[0][:3] for f in fms[::3]])
    D1, I1 = single.search(xq, 6)
    idx = ShardedIndex.from_index(workspace, "toy", n_shards=2)
    try:
        D, S, I = idx.search(xq, 6)
        assert idx.lookup(S, I) == single.lookup(I1)  # same trained quantizer, same vectors, same hits
        np.testing.assert_allclose(D, D1, atol=1e-5)
        assert sum(s["n"] for s in idx.stats()) == single.ntotal
    finally:
        idx.close()
