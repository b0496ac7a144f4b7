"""The batched, channels-last fine stage (``rank_feature_maps`` over ``pooled_match``) against the per-image
reference kernel it replaced: same scores, boxes and order on random data, whatever the batch size or thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.features.codecs import PQCodec
from actors.features.store import FeatureMap
from actors.selection.match import BoxTemplate, box_template, rank_feature_maps, window_sums


def reference_pooled_match(t: BoxTemplate, fmap: np.ndarray) -> tuple[float, list[float]]:
    """One C×H×W map, the pre-batching kernel: C-first window sums by shifted adds, per size."""
    x = torch.from_numpy(np.array(fmap, dtype=np.float32))[None]
    if t.center is not None:
        x = x - t.center.view(1, -1, 1, 1)
    _, c, gh, gw = x.shape
    proj = (t.vector.view(1, 1, c) @ x.reshape(1, c, gh * gw)).view(1, gh, gw)
    best, box = -float("inf"), [0.0] * 4
    for h, w, s in t.sizes:
        if h > gh or w > gw:
            continue
        ws = window_sums(x, h, w)
        sim = window_sums(proj, h, w) / (ws * ws).sum(dim=1).sqrt().clamp_min(1e-6 * h * w)
        v, pos = sim.flatten(1).max(dim=1)
        if float(v) > best:
            i, j = int(pos) // (gw - w + 1), int(pos) % (gw - w + 1)
            hh, hw = t.box_cells[0] * s / 2, t.box_cells[1] * s / 2
            best, box = float(v), [j + w / 2 - hw, i + h / 2 - hh, j + w / 2 + hw, i + h / 2 + hh]
    return best, [max(box[0], 0), max(box[1], 0), min(box[2], gw), min(box[3], gh)]  # clipped to the grid


def random_maps(seed: int = 0, c: int = 8) -> list[FeatureMap]:
    """fp16 C×H×W maps of two grid shapes, and PQ-decoded float32 maps (C×H×W views of H×W×C memory)."""
    rng = np.random.default_rng(seed)
    background = rng.normal(size=(c, 1, 1)) * 3  # a shared component, as real cells have (centring removes it)
    pq = PQCodec(rng.normal(size=(c // 2, 256, 2)).astype(np.float32) * 2)
    maps = []
    for k in range(23):
        hw = (7, 9) if k % 3 else (5, 6)
        x = (rng.normal(size=(c, *hw)) + background).astype(np.float32)
        if k % 4 == 0:
            fmap = pq.decode(pq.encode(x), x.shape)
            assert not fmap.flags.c_contiguous  # the channels-last view the fine stage takes as is
        else:
            fmap = x.astype(np.float16)
        maps.append(FeatureMap(f"img{k:03d}", fmap, 16.0, 8.0))
    return maps


@pytest.mark.parametrize("batch_size,workers", [(None, None), (1, 1), (4, 2), (64, 3)])
def test_batched_match_equals_the_per_image_reference(batch_size, workers):
    maps = random_maps()
    g = torch.Generator().manual_seed(3)
    query = torch.randn(8, 7, 9, generator=g) + torch.from_numpy(maps[1].fmap.astype(np.float32)) * 0.5
    center = torch.from_numpy(np.mean([m.fmap.astype(np.float32).mean(axis=(1, 2)) for m in maps], axis=0))
    t = box_template(query, (12, 20, 36, 44), 16, 8, scales=(0.7, 1.0, 1.4), center=center)
    assert len(t.sizes) == 3
    threads = torch.get_num_threads()
    hits = rank_feature_maps([t], maps, batch_size=batch_size, workers=workers)
    assert torch.get_num_threads() == threads  # restored
    ref = sorted(((*reference_pooled_match(t, m.fmap), m) for m in maps), key=lambda r: -r[0])
    assert [h.image_id for h in hits] == [m.image_id for _, _, m in ref]
    for h, (score, box, m) in zip(hits, ref):
        assert h.score == pytest.approx(score, abs=1e-5)
        want = (box[0] * m.stride_x, box[1] * m.stride_y, box[2] * m.stride_x, box[3] * m.stride_y)
        assert h.box == pytest.approx(want, abs=1e-4) and h.object_boxes == [pytest.approx(want, abs=1e-4)]


def test_matcher_reads_pq_rows_encoded_and_ranks_as_the_decoded_maps(workspace):
    """Uncached and cached re-ranks over a PQ store (rows kept encoded, decoded per batch into the working array)
    equal ranking the decoded maps; decode_into equals decode."""
    from actors.core.shards import ShardedDataset
    from actors.features.codecs import save_codebook
    from actors.features.store import encode_rows, write_feature_shard
    from actors.selection.matcher import Matcher

    rng = np.random.default_rng(5)
    pq = PQCodec(rng.normal(size=(4, 256, 2)).astype(np.float32))
    maps = [FeatureMap(f"img{k:03d}", rng.normal(size=(8, 5, 6)).astype(np.float32), 16.0, 16.0) for k in range(11)]
    workspace.write_bytes("features/toy/pq.npz", save_codebook(pq.centroids))
    ds = ShardedDataset(workspace, "features/toy")
    for shard in ds.plan([m.image_id for m in maps], shard_size=4,
                         meta={"model": "toy", "dim": 8, "codec": "pq", "pq": "features/toy/pq.npz"}):
        rows = [(m.image_id, "unreadable") if m.image_id == "img004" else m for m in maps if m.image_id in shard.keys]
        write_feature_shard(ds, shard, encode_rows(rows, pq).sort_by("image_id"))
    decoded = [FeatureMap(m.image_id, pq.decode(pq.encode(m.fmap), m.fmap.shape), 16.0, 16.0) for m in maps
               if m.image_id != "img004"]  # the failed image is skipped
    g = torch.Generator().manual_seed(1)
    t = box_template(torch.randn(8, 5, 6, generator=g), (16, 16, 48, 40), 16, 16, center=torch.randn(8, generator=g))
    want = [(h.image_id, h.score, *h.box) for h in rank_feature_maps([t], decoded, top_k=None)]
    ids = [m.image_id for m in maps][::-1]
    for cache_size in (0, 100):
        m = Matcher(workspace, "toy", cache_size=cache_size, device="cpu")
        for _ in range(2):  # the second call reads the cache (encoded rows) when there is one
            got = [(h.image_id, h.score, *h.box) for h in m.rerank([t], ids, 100)]
            assert [g[0] for g in got] == [w[0] for w in want]
            assert [v for g in got for v in g[1:]] == pytest.approx([v for w in want for v in w[1:]], abs=1e-5)
        assert [f.image_id for f in m.feature_maps(ids[:3])] == ids[:3] and len(got) == 10
    bufs = [pq.encode(m.fmap) for m in maps[:3]]
    out = pq.decode_into(bufs, (8, 5, 6), np.empty((3, 5, 6, 8), np.float32))
    np.testing.assert_array_equal(out, np.stack([pq.decode(b, (8, 5, 6)).transpose(1, 2, 0) for b in bufs]))
    center = t.center.numpy()
    centred = pq.decode_into(bufs, (8, 5, 6), np.empty((3, 5, 6, 8), np.float32), center=center)
    np.testing.assert_array_equal(centred, out - center)  # the centred codebook: the same values to the bit


def conv_pooled_match(t: BoxTemplate, fmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine stage's kernel before flat shifted sums (#23 item 3): per size, one depthwise ones-kernel
    convolution for the window sums and a norm over channels; kept here as the reference it must equal."""
    x = fmaps.float()
    if t.center is not None:
        x = x - t.center.view(1, -1, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    b, c, gh, gw = x.shape
    proj = x.permute(0, 2, 3, 1) @ t.vector
    best = torch.full((b,), -float("inf"))
    boxes = torch.zeros(b, 4)
    for h, w, s in t.sizes:
        if h > gh or w > gw:
            continue
        dot = window_sums(proj, h, w)
        ws = x if h == w == 1 else torch.nn.functional.conv2d(x, x.new_ones(c, 1, h, w), groups=c)
        sim = dot / torch.linalg.vector_norm(ws, dim=1).clamp_min(1e-6 * h * w)
        v, pos = sim.flatten(1).max(dim=1)
        i, j = pos // (gw - w + 1), pos % (gw - w + 1)
        cy, cx = i.float() + h / 2, j.float() + w / 2
        hh, hw = t.box_cells[0] * s / 2, t.box_cells[1] * s / 2
        cand = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=1)
        better = v > best
        best = torch.where(better, v, best)
        boxes = torch.where(better[:, None], cand, boxes)
    boxes[:, 0::2].clamp_(0, gw)  # clipped to the grid
    boxes[:, 1::2].clamp_(0, gh)
    return best, boxes


@pytest.mark.parametrize("scales", [(0.7, 1.0, 1.4), (1.0,), (0.5, 2.0, 3.0)])
def test_flat_window_kernel_equals_the_convolution_kernel_on_store_sized_pq_maps(scales):
    """Store-sized maps (64 channels, 24×32 cells, PQ with 32 groups, as ``pq-d2-16px``): the flat shifted-sum
    kernel gives the convolution kernel's scores (float tolerance) and boxes, and the same top hits in order."""
    from actors.selection.match import pooled_match

    rng = np.random.default_rng(23)
    pq = PQCodec(rng.normal(size=(32, 256, 2)).astype(np.float32))
    background = rng.normal(size=(64, 1, 1)).astype(np.float32) * 2
    maps = [FeatureMap(f"img{k:03d}", pq.decode(pq.encode(rng.normal(size=(64, 24, 32)).astype(np.float32)
                                                         + background), (64, 24, 32)), 16.0, 16.0)
            for k in range(120)]
    query = maps[7].fmap.astype(np.float32) + rng.normal(size=(64, 24, 32)).astype(np.float32) * 0.3
    center = torch.from_numpy(np.mean([m.fmap.mean(axis=(1, 2)) for m in maps], axis=0))
    t = box_template(query, (150, 170, 190, 205), 16, 16, scales=scales, center=center)
    x = torch.from_numpy(np.stack([m.fmap.transpose(1, 2, 0) for m in maps])).permute(0, 3, 1, 2)
    got, got_boxes = pooled_match(t, x)
    want, want_boxes = conv_pooled_match(t, x)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_boxes, want_boxes)
    hits = rank_feature_maps([t], maps, top_k=20)
    order = torch.argsort(want, descending=True, stable=True)[:20]
    assert [h.image_id for h in hits] == [maps[i].image_id for i in order.tolist()]
    assert hits[0].image_id == "img007"
    assert [h.score for h in hits] == pytest.approx(want[order].tolist(), abs=1e-5)
