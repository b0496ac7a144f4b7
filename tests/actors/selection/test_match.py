"""Kernels of actors/match.py against brute force, plus the Matcher / MatchActor wrappers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.core.errors import UserError
from actors.features.store import FeatureMap, encode_rows
from actors.selection.actor import MatchActor
from actors.selection.matcher import Matcher
from actors.selection.match import (BoxTemplate, best_match, box_template, exhaustive_match,
                          match_image, match_objects, ncc_match, pooled_match, roi_template, window_sums)
from actors.core.shards import ShardedDataset


def coord_map(h: int = 6, w: int = 8) -> torch.Tensor:
    """2×H×W map whose cell (i, j) holds (i, j)."""
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([ii, jj])


def brute_ncc(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Python-loop NCC of one C×h×w template over one C×H×W map (valid positions)."""
    _, h, w = t.shape
    tz = (t - t.mean()) / np.linalg.norm(t - t.mean())
    out = np.zeros((x.shape[1] - h + 1, x.shape[2] - w + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            win = x[:, i:i + h, j:j + w]
            wz = win - win.mean()
            out[i, j] = (tz * wz).sum() / np.linalg.norm(wz)
    return out


def test_roi_template_reads_the_cells_under_the_box():
    fmap = coord_map()
    # cells rows 2..3, cols 3..5 at stride 8 px
    (t,) = roi_template(fmap, (24, 16, 48, 32), stride_y=8, stride_x=8, scales=(1.0,))
    assert t.shape == (2, 2, 3)
    assert torch.allclose(t[0], torch.tensor([[2.0] * 3, [3.0] * 3]))
    assert torch.allclose(t[1], torch.tensor([[3.0, 4.0, 5.0]] * 2))


def test_roi_template_scales_give_distinct_sizes_and_at_least_one_cell():
    ts = roi_template(coord_map(), (8, 8, 40, 40), 8, 8, scales=(0.7, 1.0, 1.4))
    assert [tuple(t.shape[1:]) for t in ts] == [(3, 3), (4, 4), (6, 6)]
    tiny = roi_template(coord_map(), (10, 10, 13, 12), 8, 8)  # a speck: every scale is 1×1
    assert [tuple(t.shape[1:]) for t in tiny] == [(1, 1)]


@pytest.mark.parametrize("box", [(70, 0, 90, 10), (-20, -20, -5, -5), (10, 10, 5, 20)])
def test_box_outside_the_image_is_a_clear_error(box):
    with pytest.raises(UserError, match="box"):
        roi_template(coord_map(), box, 8, 8, image_size=(64, 48))
    with pytest.raises(UserError, match="64x48"):
        roi_template(coord_map(), (70, 0, 90, 10), 8, 8, image_size=(64, 48))


def test_ncc_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 9, generator=g)  # B×C×H×W
    t = torch.randn(5, 2, 3, generator=g)
    got = ncc_match(t, x)
    assert got.shape == (3, 6, 7)
    for b in range(3):
        np.testing.assert_allclose(got[b].numpy(), brute_ncc(t.numpy(), x[b].numpy()), atol=1e-4)
    several = ncc_match(torch.stack([t, -t]), x)  # T templates of one size
    assert torch.allclose(several[:, 0], got, atol=1e-5) and torch.allclose(several[:, 1], -got, atol=1e-5)


def test_ncc_of_a_constant_window_is_zero_not_nan():
    x = torch.ones(1, 4, 5, 5)
    s = ncc_match(torch.randn(4, 2, 2), x)
    assert torch.isfinite(s).all() and (s == 0).all()


def test_match_image_finds_the_planted_template_and_its_box():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 10, 12, generator=g)
    t = x[:, 4:6, 7:10].clone()
    score, box = match_image([t], x, stride_y=16, stride_x=8)
    assert score == pytest.approx(1.0, abs=1e-5)
    assert box == (7 * 8, 4 * 16, 10 * 8, 6 * 16)


def test_multi_object_score_is_min_or_mean_of_the_objects():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 8, 8, generator=g)
    a, b = x[0, :, 1:3, 1:3].clone(), torch.randn(6, 2, 2, generator=g)
    sa, _ = best_match([a], x)
    sb, _ = best_match([b], x)
    smin, boxes = match_objects([[a], [b]], x, "min")
    smean, _ = match_objects([[a], [b]], x, "mean")
    assert torch.allclose(smin, torch.minimum(sa, sb)) and torch.allclose(smean, (sa + sb) / 2)
    assert boxes.shape == (2, 2, 4)


def planted_maps(n: int, seed: int = 0, c: int = 8, hw=(6, 8)) -> tuple[list[FeatureMap], torch.Tensor]:
    """Noise maps; every third one holds a fixed 2×2 pattern somewhere. Returns maps and the pattern."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(size=(c, 2, 2)).astype(np.float32) * 2
    out = []
    for k in range(n):
        x = rng.normal(size=(c, *hw)).astype(np.float32)
        if k % 3 == 0:
            i, j = rng.integers(0, hw[0] - 1), rng.integers(0, hw[1] - 1)
            x[:, i:i + 2, j:j + 2] = pattern + 0.1 * rng.normal(size=pattern.shape)
        out.append(FeatureMap(f"img{k:03d}", x.astype(np.float16), 16.0, 16.0))
    return out, torch.from_numpy(pattern)


def test_exhaustive_match_ranks_the_planted_images_first():
    maps, pattern = planted_maps(12)
    hits = exhaustive_match([[pattern]], maps, top_k=4)
    assert {h.image_id for h in hits} == {"img000", "img003", "img006", "img009"}
    assert all(h.score > 0.9 for h in hits)


def _write(ws, maps):
    ds = ShardedDataset(ws, "features/toy")
    (shard,) = ds.plan([m.image_id for m in maps], shard_size=1000, meta={"model": "toy", "dim": 8})
    ds.write_shard(shard, encode_rows(maps))


def test_matcher_caches_and_agrees_with_exhaustive(workspace):
    maps, pattern = planted_maps(9)
    _write(workspace, maps)
    m = Matcher(workspace, "toy", cache_size=4, device="cpu")
    ids = [fm.image_id for fm in maps]
    hits = m.rerank([[pattern]], ids, top_k=3)
    assert [h.image_id for h in hits] == [h.image_id for h in exhaustive_match([[pattern]], maps, 3)]
    assert len(m._cache) == 4


def test_match_actor_through_ray(ray_cluster, workspace):
    maps, pattern = planted_maps(6)
    _write(workspace, maps)
    actor = MatchActor.options(num_cpus=0.5).remote(workspace, "toy", device="cpu")
    hits = ray_cluster.get(actor.rerank.remote([[pattern]], [fm.image_id for fm in maps], 2))
    assert {h.image_id for h in hits} == {"img000", "img003"}
    ray_cluster.kill(actor)


# ----------------------------------------------------------------------------------------------- selection driver
def _pool(ws, n=30, seed=3):
    """A pool of 16-channel 12×16 maps (stride 32 px, 512×384 images); every third holds a 2×2 pattern."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(size=(16, 2, 2)).astype(np.float32) * 2
    fms = []
    for k in range(n):
        x = rng.normal(size=(16, 12, 16)).astype(np.float32)
        if k % 3 == 0:
            i, j = rng.integers(0, 11), rng.integers(0, 15)
            x[:, i:i + 2, j:j + 2] = pattern + 0.3 * rng.normal(size=pattern.shape)
        fms.append(FeatureMap(f"img{k:03d}", x.astype(np.float16), 32.0, 32.0))
    ds = ShardedDataset(ws, "features/toy")
    for s in ds.plan([f.image_id for f in fms], shard_size=10, meta={"model": "toy", "dim": 16}):
        ds.write_shard(s, encode_rows([f for f in fms if f.image_id in set(s.keys)]))
    q = rng.normal(size=(16, 12, 16)).astype(np.float32)
    q[:, 5:7, 3:5] = pattern
    return fms, FeatureMap("query", q.astype(np.float16), 32.0, 32.0), (96, 160, 160, 224)


def test_coarse_stage_recalls_the_exhaustive_top_k(workspace):
    from actors.selection.index import build_index, load_index
    from actors.selection.mine import _coarse_vectors, coarse_candidates

    fms, q, box = _pool(workspace)
    build_index(workspace, "toy", progress=False)
    idx = load_index(workspace, "toy")
    t = box_template(q.fmap, box, 32, 32, center=idx.center)
    truth = {h.image_id for h in exhaustive_match([t], fms, top_k=10)}
    cands = coarse_candidates(idx, [_coarse_vectors(t)], 12, k_cell=64)
    assert len(truth & set(cands)) / len(truth) >= 0.9


def test_mine_template_and_global_write_selection_and_query(workspace):
    import pyarrow.parquet as pq

    from actors.selection.index import build_index, load_index
    from actors.selection.mine import Query, mine, mine_batch

    fms, q, box = _pool(workspace)
    build_index(workspace, "toy", progress=False)
    build_index(workspace, "toy", kind="global", progress=False)
    sel = mine(workspace, fmap=q, boxes=[box], top_k=5, model="toy", n_candidates=15)
    center = load_index(workspace, "toy").center
    assert [h.image_id for h in sel.hits] == [h.image_id for h in exhaustive_match(
        [box_template(q.fmap, box, 32, 32, center=center)], fms, top_k=5)]
    assert {h.image_id for h in sel.hits} <= {f.image_id for f in fms[::3]}  # the planted images
    t = pq.read_table(workspace.path(f"selections/{sel.query_id}.parquet"))
    assert t.column("rank").to_pylist() == [1, 2, 3, 4, 5] and t.column("x1").to_pylist()[0] > 0
    rec = workspace.read_json(f"queries/{sel.query_id}.json")
    assert rec["boxes"] == [list(map(float, box))] and rec["k"] == 5 and rec["method"] == "template"
    again = mine(workspace, fmap=q, boxes=[box], top_k=5, model="toy", n_candidates=15)
    assert again.query_id == sel.query_id  # stable hash of the content
    glob = mine(workspace, fmap=q, boxes=[], top_k=3, model="toy", method="global")
    assert len(glob.hits) == 3 and glob.query_id != sel.query_id and glob.hits[0].box == (0, 0, 512, 384)
    two = mine_batch(workspace, [Query("query", [box, box], 4, "toy", fmap=q), Query("query", [box], 2, "toy",
                                                                                     fmap=q)], write=False)
    assert [len(s.hits) for s in two] == [4, 2] and len(two[0].hits[0].object_boxes) == 2


def test_mine_rejects_a_box_outside_the_query_image(workspace):
    from actors.selection.index import build_index
    from actors.selection.mine import mine

    _, q, _ = _pool(workspace, n=6)
    build_index(workspace, "toy", progress=False)
    with pytest.raises(UserError, match="outside the image of size 512x384"):
        mine(workspace, fmap=q, boxes=[(500, 300, 600, 400)], top_k=2, model="toy", image_size=(512, 384))


def test_roi_template_is_exact_on_cell_aligned_boxes():
    x = torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(4))
    (t,) = roi_template(x, (16, 32, 48, 64), 16, 16, scales=(1.0,))  # cells rows 2..3, cols 1..2
    assert torch.allclose(t, x[:, 2:4, 1:3])


def test_batch_of_queries_on_match_actors_agrees_with_in_process(ray_cluster, workspace):
    from actors.selection.index import build_index
    from actors.selection.mine import Query, mine_batch

    _, q, box = _pool(workspace, n=12)
    build_index(workspace, "toy", progress=False)
    qs = [Query("query", [box], 3, "toy", fmap=q), Query("query", [box, box], 2, "toy", fmap=q, combine="mean")]
    local = mine_batch(workspace, qs, write=False)
    remote = mine_batch(workspace, qs, workers=1, write=False)
    assert [[h.image_id for h in s.hits] for s in remote] == [[h.image_id for h in s.hits] for s in local]


# ----------------------------------------------------------------------------------------------- box templates
def test_box_template_is_the_centred_unit_box_mean_with_sizes_per_scale():
    x = torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(6))
    center = torch.randn(5, generator=torch.Generator().manual_seed(7))
    t = box_template(x, (16, 32, 48, 64), 16, 16, scales=(0.7, 1.0, 1.4), center=center)  # cells rows 2..3, cols 1..2
    want = x[:, 2:4, 1:3].mean(dim=(1, 2)) - center
    assert torch.allclose(t.vector, want / want.norm(), atol=1e-5)
    assert t.sizes == ((1, 1, 0.7), (2, 2, 1.0), (3, 3, 1.4)) and t.box_cells == (2.0, 2.0)
    tiny = box_template(x, (20, 20, 26, 27), 16, 16)  # a speck inside one cell: one 1×1 window
    assert [s[:2] for s in tiny.sizes] == [(1, 1)] and tiny.center is None


def test_pooled_match_finds_a_sub_cell_object_and_boxes_it_at_the_query_size():
    """A 6-px object (under one 8-px cell) in cell (3, 5): the best window is that cell, the box is 6 px wide."""
    g = torch.Generator().manual_seed(8)
    obj = torch.randn(16, generator=g) * 3
    x = torch.randn(4, 16, 6, 8, generator=g)
    x[2, :, 3, 5] += obj
    q = torch.randn(16, 6, 8, generator=g)
    q[:, 1, 1] += obj
    t = box_template(q, (9, 9, 15, 15), 8, 8)  # inside cell (1, 1)
    scores, boxes = pooled_match(t, x)
    assert scores.argmax() == 2 and scores[2] > 0.7
    box = [v * 8 for v in boxes[2].tolist()]
    assert box == pytest.approx([5 * 8 + 1, 3 * 8 + 1, 5 * 8 + 7, 3 * 8 + 7])  # 6×6 px centred on the cell


def test_pooled_match_equals_a_brute_force_loop_over_windows_and_scales():
    """Every scale, every window: cosine(template, centred window mean); the best one and its box."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 6, 7, 9, generator=g).half()  # fp16 maps, as stored
    center = torch.randn(6, generator=g)
    t = box_template(torch.randn(6, 7, 9, generator=g), (10, 6, 30, 22), 8, 8, scales=(0.7, 1.0, 1.4), center=center)
    scores, boxes = pooled_match(t, x)
    xc = x.float() - center.view(1, -1, 1, 1)
    for b in range(3):
        best, where = -2.0, None
        for h, w, s in t.sizes:
            for i in range(7 - h + 1):
                for j in range(9 - w + 1):
                    m = xc[b, :, i:i + h, j:j + w].mean(dim=(1, 2))
                    cos = float(m @ t.vector / m.norm())
                    if cos > best + 1e-6:
                        best, where = cos, (i + h / 2, j + w / 2, s)
        assert float(scores[b]) == pytest.approx(best, abs=1e-5)
        cy, cx, s = where
        hh, hw = t.box_cells[0] * s / 2, t.box_cells[1] * s / 2
        want = [max(cx - hw, 0), max(cy - hh, 0), min(cx + hw, 9), min(cy + hh, 7)]  # clipped to the grid
        assert boxes[b].tolist() == pytest.approx(want, abs=1e-5)


def test_pooled_match_box_near_the_border_stays_inside_the_image():
    """Regression: a match in the last cell with a box larger than the window was boxed past the image's edge
    (then `assay mine --more-like` refused the hit's own box)."""
    g = torch.Generator().manual_seed(13)
    obj = torch.randn(16, generator=g) * 3
    x = torch.randn(2, 16, 6, 8, generator=g)
    x[1, :, 5, 7] += obj  # bottom-right cell
    q = torch.randn(16, 6, 8, generator=g)
    q[:, 2, 2] += obj
    t = box_template(q, (14, 14, 33, 33), 8, 8, scales=(1.0,))  # 19 px = 2.4 cells, a 2×2 window
    scores, boxes = pooled_match(t, x)
    assert scores.argmax() == 1 and t.sizes[0][:2] == (2, 2)
    x0, y0, x1, y1 = boxes[1].tolist()  # centred on (7, 5) ± 1.19 cells: past the grid's 8×6 unclipped
    assert x1 == pytest.approx(8) and y1 == pytest.approx(6) and 5 < x0 < 6 and 3 < y0 < 4
    assert float(boxes[..., 0::2].max()) <= 8 and float(boxes.min()) >= 0 and float(boxes[..., 1::2].max()) <= 6


def test_window_sums_match_avg_pool():
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(12))
    for h, w in ((1, 1), (1, 4), (3, 1), (4, 5), (9, 11)):
        want = torch.nn.functional.avg_pool2d(x, (h, w), stride=1) * (h * w)
        assert torch.allclose(window_sums(x, h, w), want, atol=1e-5)
    with pytest.raises(UserError, match="larger than the map"):
        window_sums(x, 10, 2)


def test_centring_with_the_pool_mean_stops_background_from_matching():
    """Regression: uncentred cosine is dominated by a component all cells share; centring removes it."""
    g = torch.Generator().manual_seed(9)
    background = torch.randn(16, generator=g) * 10
    obj = torch.randn(16, generator=g) * 2
    x = torch.randn(20, 16, 6, 8, generator=g) + background.view(1, -1, 1, 1)
    x[7, :, 2, 2] += obj
    q = torch.randn(16, 6, 8, generator=g) + background.view(-1, 1, 1)
    q[:, 4, 4] += obj
    box = (32, 32, 40, 40)  # cell (4, 4)
    centred = box_template(q, box, 8, 8, scales=(1.0,), center=x.mean(dim=(0, 2, 3)))
    scores, _ = pooled_match(centred, x)
    assert scores.argmax() == 7
    raw, _ = pooled_match(box_template(q, box, 8, 8, scales=(1.0,)), x)
    assert raw.min() > 0.9  # without centring every image looks like the object


def test_box_templates_rank_feature_maps_and_match_objects():
    maps, pattern = planted_maps(12, c=8)
    q = torch.randn(8, 6, 8, generator=torch.Generator().manual_seed(10))
    q[:, 2:4, 3:5] = pattern
    t = box_template(q, (48, 32, 80, 64), 16, 16)
    assert isinstance(t, BoxTemplate)
    hits = exhaustive_match([t], maps, top_k=4)
    assert {h.image_id for h in hits} == {"img000", "img003", "img006", "img009"}
    s, boxes = match_objects([t, [pattern]], torch.from_numpy(np.stack([m.fmap for m in maps])).float())
    assert s.shape == (12,) and boxes.shape == (12, 2, 4)
