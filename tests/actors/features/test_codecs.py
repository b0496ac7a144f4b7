"""Feature-store codecs: round-trip error bounds, sizes, stores written before codecs, embed with each codec."""

from __future__ import annotations

import numpy as np
import pytest

from actors.core.errors import UserError
from actors.core.shards import ShardedDataset
from actors.features.codecs import Int8Codec, PQCodec, make_codec, train_pq
from actors.features.store import FeatureMap, FeatureReader, encode_rows, features_dir, iter_feature_maps, store_fingerprint
from tests.actors.features.test_embed import RES, toy  # noqa: F401 (fixture)


def _maps(n=3, c=8, h=5, w=7, seed=0):
    rng = np.random.default_rng(seed)
    return [FeatureMap(f"img-{i}", (rng.normal(size=(c, h, w)) * rng.uniform(0.1, 5, (c, 1, 1))).astype(np.float32),
                       8.0, 8.0) for i in range(n)]


def test_int8_round_trip_error_is_at_most_half_a_step_per_channel():
    codec = Int8Codec()
    for fm in _maps():
        buf = codec.encode(fm.fmap)
        assert buf.nbytes == codec.nbytes(fm.fmap.shape) == 8 * 8 + fm.fmap.size
        back = codec.decode(buf, fm.fmap.shape)
        step = (fm.fmap.max(axis=(1, 2)) - fm.fmap.min(axis=(1, 2))) / 255  # per channel
        assert (np.abs(back - fm.fmap).max(axis=(1, 2)) <= step / 2 + 1e-5).all()
    flat = np.full((2, 3, 3), 1.5, np.float32)  # a constant channel decodes exactly
    np.testing.assert_array_equal(codec.decode(codec.encode(flat), flat.shape), flat)


def test_pq_codes_decode_to_their_nearest_centroids_and_beat_a_random_codebook():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(3000, 8)).astype(np.float32)
    cent = train_pq(cells, 4, iters=5)
    assert cent.shape == (4, 256, 2)
    codec = PQCodec(cent)
    fm = cells[:35].T.reshape(8, 5, 7)
    buf = codec.encode(fm)
    assert buf.nbytes == codec.nbytes(fm.shape) == 4 * 35
    back = codec.decode(buf, fm.shape)
    assert np.mean((back - fm) ** 2) < 0.05 * np.var(fm)  # trained: far below the data's variance
    x, y = fm.reshape(8, 35).T.reshape(35, 4, 2), back.reshape(8, 35).T.reshape(35, 4, 2)
    for j in range(4):  # each group decodes to its nearest centroid (brute force)
        d = ((x[:, j, None] - cent[j][None]) ** 2).sum(-1)
        np.testing.assert_allclose(y[:, j], cent[j][d.argmin(1)], atol=1e-6)
    with pytest.raises(UserError, match="must divide"):
        train_pq(cells, 3)


def test_unknown_codec_is_a_one_line_user_error():
    with pytest.raises(UserError, match="unknown feature codec 'zstd9'"):
        make_codec("zstd9")


def test_a_store_written_before_codecs_reads_as_fp16_with_its_old_fingerprint(workspace):
    ds = ShardedDataset(workspace, features_dir("old"))
    maps = _maps()
    meta = {"model": "old", "dim": 8, "backbone": "x", "weights_id": "w", "stride": 8, "pool": 1, "pca": None}
    (shard,) = ds.plan([m.image_id for m in maps], 8, meta)
    ds.write_shard(shard, encode_rows([FeatureMap(m.image_id, m.fmap.astype(np.float16), 8.0, 8.0) for m in maps]))
    got = FeatureReader(workspace, "old").get(["img-1"])[0]
    assert got.fmap.dtype == np.float16
    np.testing.assert_array_equal(got.fmap, maps[1].fmap.astype(np.float16))
    assert "codec" not in store_fingerprint(workspace, "old")  # indexes built before codecs stay valid


def test_embed_with_int8_and_pq_stores_fewer_bytes_keeps_the_maps_and_never_mixes(toy):  # noqa: F811
    from actors.features.embed import embed_pool

    ref = {f.image_id: f.fmap.astype(np.float32)
           for f in iter_feature_maps(toy, embed_pool(toy, model="assay-small", name="ref", local=True, resources=RES,
                                                      shard_size=4, progress=False, codec="fp16").model)}
    fp16_bytes = next(iter(ref.values())).size * 2
    cells = fp16_bytes // (2 * 64)
    for codec, size, min_cos in (("int8", 8 * 64 + cells * 64, 0.99), ("pq", cells * 16, 0.8)):
        rep = embed_pool(toy, model="assay-small", name=codec, local=True, resources=RES, shard_size=4,
                         progress=False, codec=codec, pq_m=16)
        assert rep.codec == codec and rep.n_embedded == len(ref) == 6
        assert rep.bytes_per_image == size < fp16_bytes  # int8: a byte per value + lo/scale; pq: 16 per cell
        got = {f.image_id: f.fmap for f in FeatureReader(toy, codec).get(sorted(ref))}
        for k, x in ref.items():
            cos = np.sum(got[k] * x, axis=0) / (np.linalg.norm(got[k], axis=0) * np.linalg.norm(x, axis=0) + 1e-9)
            assert np.median(cos) > min_cos, (codec, np.median(cos))
    with pytest.raises(UserError, match="existing features"):  # a codec never mixes into another store
        embed_pool(toy, model="assay-small", name="pq", local=True, resources=RES, shard_size=4, progress=False,
                   codec="int8")
    again = embed_pool(toy, model="assay-small", name="pq", local=True, resources=RES, shard_size=4,
                       progress=False)  # keeps its codec
    assert again.codec == "pq" and again.shards_written == 0


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_pq_decode_is_the_centroid_of_each_code(d):
    """The one-gather decode equals looking up every (cell, group) centroid, for any sub-vector width."""
    rng = np.random.default_rng(d)
    m, (c, h, w) = 3, (3 * d, 4, 5)
    centroids = rng.normal(size=(m, 256, d)).astype(np.float32)
    codes = rng.integers(0, 256, size=(h * w, m)).astype(np.uint8)
    got = PQCodec(centroids).decode(codes.reshape(-1), (c, h, w))
    want = np.stack([np.concatenate([centroids[j, codes[n, j]] for j in range(m)]) for n in range(h * w)])
    assert got.shape == (c, h, w) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want.T.reshape(c, h, w))


def test_pq_encode_gives_the_codes_of_the_one_group_at_a_time_argmin():
    """The batched encoder computes, per element, the product the per-group loop did: the same codes."""
    from actors.features.codecs import PQCodec

    rng = np.random.default_rng(1)
    for m, d in [(56, 2), (16, 4), (7, 16)]:
        cent = rng.standard_normal((m, 256, d)).astype(np.float32)
        codec = PQCodec(cent)
        fmap = rng.standard_normal((m * d, 13, 17)).astype(np.float32)
        x = fmap.reshape(m * d, -1).T.reshape(-1, m, d)
        want = np.stack([np.argmin((cent[j] ** 2).sum(-1)[None] - 2 * x[:, j] @ cent[j].T, axis=1)
                         for j in range(m)], 1).astype(np.uint8).reshape(-1)
        np.testing.assert_array_equal(codec.encode(fmap), want)
