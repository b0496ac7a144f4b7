"""Region encoder (pure torch) and the embedding step (local and Ray Data paths), on tiny toy catalogs."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn

import actors.features.embed as embed
from actors.core.errors import UserError
from actors.catalog.schema import IMAGES
from actors.features.backbones import FeatureExtractor, get_backbone
from actors.features.small import SmallConfig, save_small_checkpoint, small_trunk
from actors.features.embed import embed_pool
from actors.features.encoder import RegionEncoder, fit_pca, load_region_encoder
from actors.features.store import feature_rows, features_dir, iter_feature_maps
from actors.core.runtime import Resources
from actors.core.shards import ShardedDataset
from actors.core.workspace import WorkspaceError
from tests.actors.features.test_backbones import make_toy_catalog, write_catalog

RES = Resources(pool_size=1, num_cpus=0.5, num_gpus=0.0, batch_size=4)


@pytest.fixture
def toy(workspace, tmp_path):
    """A workspace with a toy catalog (6 pool images, one corrupt, one missing) and random assay-small weights."""
    images = make_toy_catalog(workspace, tmp_path / "img", splits=(("pool", 6),))
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png at all")
    extra = [dict(images[0], image_id="pool-bad", uri=str(tmp_path / "img" / "bad.png")),
             dict(images[0], image_id="pool-gone", uri=str(tmp_path / "img" / "gone.png"))]
    write_catalog(workspace, images + extra)
    torch.manual_seed(0)
    save_small_checkpoint(workspace, small_trunk(SmallConfig()), SmallConfig())
    return workspace


def _probe_extractor(stride: int = 8) -> FeatureExtractor:
    """Cell (i, j) = mean colour of input pixels [i*s, (i+1)*s) × [j*s, (j+1)*s): a ground truth for geometry."""
    return FeatureExtractor(nn.AvgPool2d(stride, ceil_mode=True), name="probe", normalize=False)


@pytest.mark.parametrize("max_side", [None, 96])
def test_cell_strides_map_back_to_original_pixels(max_side):
    img = np.zeros((150, 200, 3), np.uint8)  # H×W×3, a bright blob at y∈[100,110), x∈[60,70)
    img[100:110, 60:70] = 255
    enc = RegionEncoder(_probe_extractor(8), pool=2, max_side=max_side, device="cpu")
    fm = enc.encode(img)
    scale = 1.0 if max_side is None else 200 / 96
    assert (fm.stride_y, fm.stride_x) == pytest.approx((16 * 150 / round(150 / scale), 16 * scale))
    c, h, w = fm.fmap.shape
    i, j = np.unravel_index(fm.fmap[0].argmax(), (h, w))
    assert i * fm.stride_y <= 105 < (i + 1) * fm.stride_y
    assert j * fm.stride_x <= 65 < (j + 1) * fm.stride_x


def test_encode_batch_does_not_depend_on_batch_mates():
    torch.manual_seed(0)
    enc = RegionEncoder(get_backbone("assay-small", random_init=True), pool=2, device="cpu", batch_size=2)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, s, dtype=np.uint8) for s in [(64, 80, 3), (48, 48, 3), (64, 80, 3), (64, 80, 3)]]
    together = enc.encode_batch(imgs, ["a", "b", "c", "d"])
    for img, fm in zip(imgs, together):
        np.testing.assert_allclose(enc.encode(img).fmap, fm.fmap, atol=1e-5)
    assert together[1].fmap.shape == (64, 3, 3) and together[0].fmap.shape == (64, 4, 5)


def test_fit_pca_gives_orthonormal_top_axes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)) * np.array([10, 5, 1, 1, 1, 1])
    mean, comp = fit_pca(x, 2)
    np.testing.assert_allclose(comp.T @ comp, np.eye(2), atol=1e-5)
    assert abs(comp[0, 0]) > 0.99 and abs(comp[1, 1]) > 0.99
    with pytest.raises(UserError, match="exceeds"):
        fit_pca(x, 7)


def test_local_embed_records_bad_images_and_query_encoder_matches_store(toy):
    rep = embed_pool(toy, model="assay-small", local=True, resources=RES, shard_size=3, pca_dim=16, progress=False,
                     codec="fp16")
    assert (rep.n_images, rep.n_embedded, rep.n_errors, rep.dim) == (8, 6, 2, 16)
    table = ShardedDataset(toy, features_dir("assay-small")).read()
    errors = table.filter(pc.equal(table["status"], "error")).to_pylist()
    assert sorted(r["image_id"] for r in errors) == ["pool-bad", "pool-gone"] and all(r["error"] for r in errors)
    stored = {f.image_id: f for f in iter_feature_maps(toy, "assay-small")}
    enc = load_region_encoder(toy, "assay-small", device="cpu")
    uris = dict(zip(*toy.read_table(IMAGES, columns=["image_id", "uri"]).to_pydict().values()))
    from actors.core.images import load_image

    q = enc.encode(load_image(uris["pool-002"]))
    np.testing.assert_allclose(q.fmap, stored["pool-002"].fmap.astype(np.float32), rtol=1e-2, atol=1e-2)
    assert rep.bytes_per_image == q.fmap.size * 2


def test_store_refuses_other_settings_and_changed_weights(toy):
    embed_pool(toy, model="assay-small", local=True, resources=RES, shard_size=4, progress=False)
    with pytest.raises(UserError, match="existing features"):
        embed_pool(toy, model="assay-small", local=True, resources=RES, shard_size=4, pca_dim=8, progress=False)
    save_small_checkpoint(toy, small_trunk(SmallConfig()), SmallConfig())  # "retrained" weights
    with pytest.raises(WorkspaceError, match="re-embed"):
        load_region_encoder(toy, "assay-small")


def _driver_dies_after_first_commit(monkeypatch):
    real, calls = ShardedDataset.commit, []

    def commit(self, done):
        if calls:
            raise KeyboardInterrupt("driver killed")
        calls.append(sorted(done))
        return real(self, done)

    monkeypatch.setattr(ShardedDataset, "commit", commit)


def test_actors_write_shards_driver_commits_and_a_rerun_adopts_uncommitted_ones(toy, ray_cluster, monkeypatch):
    local = embed_pool(toy, model="assay-small", name="local", local=True, resources=RES, shard_size=3, progress=False)
    _driver_dies_after_first_commit(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_pool(toy, model="assay-small", name="ray", resources=RES, shard_size=3, progress=False)
    monkeypatch.undo()
    ds = ShardedDataset(toy, features_dir("ray"))
    assert len(ds.committed()) == 1  # the driver committed one shard, then died
    written = {os.path.basename(p): os.path.getmtime(p) for p in ds.part_paths()}  # actors may have written more
    rep = embed_pool(toy, model="assay-small", name="ray", resources=RES, shard_size=3, progress=False)
    assert rep.shards_total == 3 and rep.shards_written == 3 - len(written)
    assert rep.shards_adopted == len(written) - 1  # written by an actor, not committed: committed now, not redone
    assert {os.path.basename(p): os.path.getmtime(p) for p in ds.part_paths() if os.path.basename(p) in written} \
        == written
    assert sorted(ds.committed()) == [0, 1, 2] and ds.pending() == []
    ids = ds.read(columns=["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 8  # nothing lost, nothing twice
    assert ShardedDataset(toy, features_dir("local")).read().equals(ds.read())
    assert local.n_errors == 2 and local.codec == embed.DEFAULT_CODEC
    rows = feature_rows(toy, "ray")  # every shard has its row summary, equal to the shard without fmap
    assert toy.listdir(f"{features_dir('ray')}/_rows", ".parquet") == toy.listdir(features_dir("ray"), ".parquet")
    assert rows.sort_by("image_id").equals(ds.read().drop_columns(["fmap"]).sort_by("image_id"))
    assert {pq.read_metadata(p).num_row_groups for p in ds.part_paths()} == {2, 3}  # one image per row group
    assert not [n for n in os.listdir(toy.local_path(features_dir("ray"))) if ".tmp-" in n]
    again = embed_pool(toy, model="assay-small", name="ray", resources=RES, shard_size=3, progress=False)
    assert again.shards_written == 0 and again.shards_skipped == 3 and again.shards_adopted == 0


def _crash_after_first_shard(monkeypatch):
    real, calls = embed._write_shard, []

    def write(ds, shard, tables):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(shard.index)
        return real(ds, shard, tables)

    monkeypatch.setattr(embed, "_write_shard", write)


def test_pending_shard_whose_key_left_the_catalog_is_redone_with_an_error_row_not_skipped(toy, monkeypatch):
    _crash_after_first_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_pool(toy, model="assay-small", name="s", local=True, resources=RES, shard_size=3, progress=False)
    monkeypatch.undo()
    ds = ShardedDataset(toy, features_dir("s"))
    pending_keys = [k for s in ds.pending() for k in s.keys]
    victim = next(k for k in pending_keys if k.startswith("pool-0"))
    cat = toy.read_table(IMAGES)
    status = [("error" if i == victim else s) for i, s in zip(cat["image_id"].to_pylist(), cat["status"].to_pylist())]
    toy.write_table(IMAGES, cat.set_column(cat.schema.get_field_index("status"), "status", [status]))
    rep = embed_pool(toy, model="assay-small", name="s", local=True, resources=RES, shard_size=3, progress=False)
    assert (rep.shards_total, rep.shards_skipped, rep.shards_written) == (3, 1, 2)  # nothing skipped silently
    assert rep.n_left_catalog == 1 and ds.pending() == []
    row = feature_rows(toy, "s").filter(pc.equal(pc.field("image_id"), victim)).to_pylist()
    assert row[0]["status"] == "error" and "left the catalog" in row[0]["error"]
    assert rep.n_embedded + rep.n_errors == len(pending_keys)


def test_shards_that_never_report_are_redone_then_raise_never_discarded(toy, monkeypatch):
    calls = []

    def lossy(ws, name, pending, *a, **k):  # the stream ended before these shards reported back
        calls.append([s.index for s in pending])
        return list(pending)

    monkeypatch.setattr(embed, "_run_ray", lossy)
    with pytest.raises(RuntimeError, match=r"lost 3 shard\(s\).*re-run redoes them"):
        embed_pool(toy, model="assay-small", name="r", resources=RES, shard_size=3, progress=False)
    assert calls == [[0, 1, 2], [0, 1, 2]]  # redone once before giving up
    assert ShardedDataset(toy, features_dir("r")).part_paths() == []

    def lossy_once(ws, name, pending, work, res, device, threads, commit):
        if not calls:
            calls.append("first")
            return list(pending)
        embed._run_local(ws, name, pending, work, res, device, commit)
        return []

    calls.clear()
    monkeypatch.setattr(embed, "_run_ray", lossy_once)
    rep = embed_pool(toy, model="assay-small", name="r", resources=RES, shard_size=3, progress=False)
    assert rep.shards_written == 3 and rep.n_embedded + rep.n_errors == 8
