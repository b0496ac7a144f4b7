"""Compact feature store: bytes per image, retrieval recall kept, and random-access cost, per store option.

Options (alone and combined): cell size (8-px cells, or 16-px = 2×2 backbone cells averaged), PCA (supported by
``make_variant``; dropped from :data:`VARIANTS` for CPU time in the committed run), the cell codec (fp16 as today, per-image per-channel int8, product quantization decoded in the fine stage), and the file
format for scattered reads (one-image-per-row-group Parquet, what Assay writes, against Lance ``take``).

Every variant is derived from one fp16 8-px base store per world (``embed_pool(codec="fp16", pool=1)``): cells
average-pooled 2×2 (what the encoder's ``pool=2`` does), projected with a PCA fitted on 20,000 cells of the first 32
images (``embed --pca-dim`` fits on 50,000), then encoded with the codec — so no variant re-runs the backbone; query
maps go through the same steps from the query image's float32 map. The coarse stage is the same for all: an exact
index of 16-px vectors (2×2 blocks of 8-px stores, the cells of 16-px stores); the fine stage re-ranks on the
stored map, decoded. Recall comes from the real matcher (``Selector``) with ``bench/targeted_selection.py``'s
truth, queries and scoring (held-out query instances; chance beside it).

1. **Tune** on world ``--tune-seed``: every variant's template recall@100 on query objects < 1%; chosen = the
   smallest stored variant within the 48 KiB budget whose recall is ≥ 95% of the fp16 8-px store's.
2. **Report** every variant on world ``--seed`` (the figures), the chosen one marked.
3. **Random access** (``--timing-store``: a ≥ 1,000-image fp16 store; timings only, run alone under
   ``flock /tmp/team/timing.lock``): fine stage for 1,000 uncached random candidates (read + decode + match,
   ``Matcher(cache_size=0)``), and read + decode alone from Parquet vs Lance, ``--repeats`` alternating rounds.

    python bench/feature_store.py --part tune --threads 1 --candidates 100 --tune-queries 15 --world-json T.json
    python bench/feature_store.py --part report --threads 1 --candidates 100 --queries 25 --world-json R.json
    python bench/feature_store.py --part coarse --seed 1 --threads 1 --candidates 100 --queries 15 --world-json C1.json
    python bench/feature_store.py --part coarse --seed 0 --threads 1 --candidates 100 --queries 25 --world-json C0.json
    python bench/feature_store.py --part merge --world-json T.json R.json C1.json C0.json
    python bench/feature_store.py --part timing --prepare-only --out /tmp/prep.json     # nice: stores only
    flock /tmp/team/timing.lock python bench/feature_store.py --part timing --threads 2 --repeats 3
   A change to the fine stage is shown against the code before it: the same command on a checkout of the old
   commit (``--out B1.json``…) alternated with this code's runs (``--out A1.json``…), the last run of this code
   then keeps them all (``timing.before`` and ``timing.pooled``: every round pooled, each run's load average):
    … --part timing --threads 2 --repeats 3 --before-json B1.json B2.json B3.json --before-commit SHA \
        --earlier-json A1.json A2.json

4. **Coarse blocks** (``--part coarse``, one world per process): region vectors of k×k blocks of stored cells for
   fp16 8-px (k = 2, 4) and PQ 16-px (k = 1, 2): vectors and index bytes per image, template recall@100 on < 1%
   objects through the whole matcher, beside chance.
    python bench/feature_store.py --smoke --out /tmp/fs-smoke.json   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.core.shards import ShardedDataset  # noqa: E402
from actors.core.workspace import Workspace  # noqa: E402
from actors.features.codecs import make_codec, save_codebook, train_pq  # noqa: E402
from actors.features.encoder import _save_pca, fit_pca  # noqa: E402
from actors.features.store import (FeatureMap, encode_rows, feature_meta, features_dir, iter_feature_maps,  # noqa: E402
                                   write_feature_shard)
from bench import targeted_selection as ts  # noqa: E402

BUDGET_KIB = 48
KEEP = 0.95
# name: (pool, pca_dim, codec, pq bytes per cell as a share of the dim: m = dim // pq_div)
VARIANTS = {
    "fp16-8px": (1, None, "fp16", None),
    "int8-8px": (1, None, "int8", None),
    "int8-16px": (2, None, "int8", None),
    "pq-d2-16px": (2, None, "pq", 2),
}
BASE_VARIANT = "fp16-8px"


# ----------------------------------------------------------------------------------------------- transcoding
def _pool(x: np.ndarray, k: int) -> np.ndarray:
    """C×H×W -> the encoder's k×k average pool (ceil mode: border cells average what exists), float32."""
    t = torch.from_numpy(np.asarray(x, np.float32))[None]
    return F.avg_pool2d(t, k, k, ceil_mode=True)[0].numpy() if k > 1 else t[0].numpy()


def _project(x: np.ndarray, pca: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if pca is None:
        return x
    mean, comp = pca
    c, h, w = x.shape
    return ((x.reshape(c, -1).T - mean) @ comp).T.reshape(comp.shape[1], h, w).astype(np.float32)


def make_variant(ws: Workspace, base: str, name: str, spec: tuple) -> dict:
    """Write store ``name`` from the fp16 base store (skipped when complete); its settings and sizes."""
    pool, pca_dim, codec_name, pq_div = spec
    ds = ShardedDataset(ws, features_dir(name))
    bmeta = feature_meta(ws, base)
    dim = pca_dim or bmeta["dim"]
    meta = dict(bmeta, model=name, pool=bmeta["pool"] * pool, stride=bmeta["stride"] * pool, dim=dim,
                pca=f"{features_dir(name)}/pca.npz" if pca_dim else None)
    if codec_name != "fp16":
        meta["codec"] = codec_name
    if codec_name == "pq":
        meta.update(pq=f"{features_dir(name)}/pq.npz", pq_m=dim // pq_div)
    base_shards = ShardedDataset(ws, features_dir(base)).shards()
    if not (ds.manifest()["shards"] and not ds.pending()):
        ws.delete(features_dir(name))
        sample = [k for s in base_shards for k in s.keys][:32]
        cells = np.concatenate([_pool(f.fmap, pool).reshape(bmeta["dim"], -1).T
                                for f in iter_feature_maps(ws, base, image_ids=sample)])
        cells = cells[np.random.default_rng(0).permutation(len(cells))[:20000]]
        pca = fit_pca(cells, pca_dim) if pca_dim else None
        if pca:
            _save_pca(ws, meta["pca"], *pca)
        centroids = None
        if codec_name == "pq":
            proj = (cells - pca[0]) @ pca[1] if pca else cells
            centroids = train_pq(proj.astype(np.float32), meta["pq_m"])
            ws.write_bytes(meta["pq"], save_codebook(centroids))
        codec = make_codec(codec_name, centroids)
        shards = ds.plan([k for s in base_shards for k in s.keys], len(base_shards[0].keys), meta)
        for s in shards:
            fms = {f.image_id: f for f in iter_feature_maps(ws, base, image_ids=s.keys)}
            rows = [FeatureMap(k, _project(_pool(fms[k].fmap, pool), pca), fms[k].stride_y * pool,
                               fms[k].stride_x * pool) if k in fms else (k, "failed in the base store")
                    for k in s.keys]
            write_feature_shard(ds, s, encode_rows(rows, codec).sort_by("image_id"))
    return {"name": name, "pool": pool, "cell_px": meta["stride"], "pca_dim": pca_dim, "codec": codec_name,
            "pq_m": meta.get("pq_m"), "dim": dim, **store_bytes(ws, name)}


def store_bytes(ws: Workspace, name: str) -> dict:
    """fmap bytes per ok image (the cell itself) and Parquet bytes on disk per image (shards, row summaries,
    PCA and codebook amortized)."""
    root = Path(ws.local_path(features_dir(name)))
    t = ShardedDataset(ws, features_dir(name)).read(columns=["fmap", "status"])
    import pyarrow.compute as pc

    ok = t.filter(pc.equal(t["status"], "ok"))
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith("_manifest"))
    return {"fmap_bytes_per_image": pc.sum(pc.binary_length(ok["fmap"])).as_py() / max(1, ok.num_rows),
            "disk_bytes_per_image": disk / max(1, t.num_rows), "n_images": t.num_rows}


# ----------------------------------------------------------------------------------------------- recall
def query_maps(ws: Workspace, base: str, queries: list[dict]) -> dict[str, FeatureMap]:
    """float32 8-px maps of the query images from the base store's encoder (computed once per world)."""
    from actors.core.images import load_image
    from actors.features.encoder import load_region_encoder

    enc = load_region_encoder(ws, base, device="cpu")
    return {u: enc.encode(load_image(u), u) for u in sorted({q["uri"] for q in queries})}


def variant_queries(ws: Workspace, name: str, spec: tuple, base_maps: dict[str, FeatureMap]) -> dict:
    from actors.features.encoder import _load_pca

    meta = feature_meta(ws, name)
    pca = _load_pca(ws, meta["pca"]) if meta.get("pca") else None
    pool = spec[0]
    return {u: FeatureMap(u, _project(_pool(f.fmap, pool), pca), f.stride_y * pool, f.stride_x * pool)
            for u, f in base_maps.items()}


def measure_world(ws: Workspace, base: str, n_queries: int, seed: int, candidates: int, names: list[str]) -> dict:
    from actors.selection.mine import Selector

    truth = ts.load_truth(ws)
    queries = ts.pick_queries(truth[0], n_queries, seed)
    base_maps = query_maps(ws, base, queries)
    out = {"n_pool": truth[3], "n_queries": len(queries), "chance": ts.chance(queries, truth)["bins"]["<1%"],
           "variants": {}}
    ref_hits = None
    for name in names:
        info = make_variant(ws, base, name, VARIANTS[name])
        cell_pool = 2 if VARIANTS[name][0] == 1 else 1  # the coarse stage on 16-px vectors for every variant
        ts.build_region(ws, name, cell_pool)
        sel = Selector(ws, preload=True)
        sels = ts.run_method(sel, name, "template", queries, variant_queries(ws, name, VARIANTS[name], base_maps),
                             candidates=candidates)
        ev = ts.evaluate(sels, queries, truth, localizes=True)
        tops = [[h.image_id for h in s.hits] for s in sels]
        ref_hits = ref_hits or tops
        overlap = float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(tops, ref_hits)]))
        small = ev["bins"]["<1%"]
        out["variants"][name] = {**info, "cell_pool": cell_pool, "recall@100_<1%": small["recall@100"],
                                 "precision@10_<1%": small["precision@10"], "n_<1%": small["n"],
                                 "recall@100_all": ev["bins"]["all"]["recall@100"],
                                 "top100_overlap_with_fp16": overlap, "fine_ms_p50_cached": ev["fine_ms_p50"]}
        print(f"{name}: {info['disk_bytes_per_image'] / 1024:.1f} KiB/image on disk, "
              f"R@100<1% {small['recall@100']:.3f}, P@10 {small['precision@10']:.3f}, overlap {overlap:.2f}",
              flush=True)
    base_r = out["variants"][names[0]]["recall@100_<1%"] or 0.0
    for v in out["variants"].values():
        v["recall_kept"] = (v["recall@100_<1%"] / base_r) if base_r else None
    return out


COARSE = (("fp16-8px", 2), ("fp16-8px", 4), ("pq-d2-16px", 1), ("pq-d2-16px", 2))  # (store, blocks of k×k cells)


def measure_coarse(ws: Workspace, base: str, n_queries: int, seed: int, candidates: int,
                   configs: tuple = COARSE) -> dict:
    """Coarse-stage block size for scale: per (store, k) the region index over k×k blocks of stored cells (block
    px = cell px · k): vectors per image, index bytes per image, and template recall@100 / precision@10 on < 1%
    objects through the whole matcher (the fine stage is the same stored map for every k of a store)."""
    from actors.selection.index import index_dir, load_manifest
    from actors.selection.mine import Selector

    truth = ts.load_truth(ws)
    queries = ts.pick_queries(truth[0], n_queries, seed)
    base_maps = query_maps(ws, base, queries)
    out = {"n_pool": truth[3], "n_queries": len(queries), "chance": ts.chance(queries, truth)["bins"]["<1%"],
           "configs": {}}
    for name, k in configs:
        make_variant(ws, base, name, VARIANTS[name])
        built = ts.build_region(ws, name, k)
        man = load_manifest(ws, name, "region")
        index_bytes = Path(ws.local_path(f"{index_dir(name)}/{man.index_file}")).stat().st_size
        sel = Selector(ws, preload=True)
        sels = ts.run_method(sel, name, "template", queries, variant_queries(ws, name, VARIANTS[name], base_maps),
                             candidates=candidates)
        ev = ts.evaluate(sels, queries, truth, localizes=True)
        small = ev["bins"]["<1%"]
        cell_px = feature_meta(ws, name)["stride"]
        out["configs"][f"{name}/k{k}"] = {
            "store": name, "cell_pool": k, "block_px": cell_px * k, "vectors_per_image": man.n / max(1, man.images),
            "index_bytes_per_image": index_bytes / max(1, man.images), "build_s": built["build_s"],
            "recall@100_<1%": small["recall@100"], "precision@10_<1%": small["precision@10"], "n_<1%": small["n"]}
        print(f"{name} k={k}: {man.n / max(1, man.images):.0f} vectors/image, R@100<1% {small['recall@100']:.3f}",
              flush=True)
    return out


def choose(tuned: dict) -> str:
    """Smallest on-disk variant within the budget that keeps ≥ KEEP of the fp16 store's recall (tuning world)."""
    ok = [(v["disk_bytes_per_image"], n) for n, v in tuned["variants"].items()
          if v["disk_bytes_per_image"] <= BUDGET_KIB * 1024 and (v["recall_kept"] or 0) >= KEEP]
    return min(ok)[1] if ok else BASE_VARIANT


# ----------------------------------------------------------------------------------------------- random access
def write_lance(ws: Workspace, name: str, out: Path) -> tuple[object, dict[str, int]]:
    """The store's rows as one Lance dataset (sorted by id, as the shards are); (dataset, image_id -> row)."""
    import lance
    import pyarrow as pa

    if not out.exists():
        t = ShardedDataset(ws, features_dir(name)).read().sort_by("image_id")
        lance.write_dataset(t, str(out), max_rows_per_group=1024)
    ds = lance.dataset(str(out))
    ids = ds.to_table(columns=["image_id"])["image_id"].to_pylist()
    del pa
    return ds, {k: i for i, k in enumerate(ids)}


def lance_get(ds, where: dict[str, int], image_ids: list[str]) -> list:
    """Lance ``take`` of the candidates' ``image_id`` and ``fmap`` (what the Parquet reader reads per row; both get
    shapes and strides from metadata already in memory), as encoded buffers."""
    rows = sorted(where[i] for i in image_ids)
    t = ds.take(rows, columns=["image_id", "fmap"])
    return [t.column("fmap")[j].as_buffer() for j in range(t.num_rows)]


def timing(ws: Workspace, names: list[str], n_cand: int, repeats: int, lance_dir: Path) -> dict:
    """Per round (a new random candidate set) and store: the fine stage as ``assay mine`` runs it on uncached
    candidates (``Matcher(cache_size=0).rerank``: Parquet read of the rows' ``fmap`` + decode into the batch
    arrays + match), then its parts: Parquet read alone (encoded rows), Lance take of the same rows, and decode +
    match alone."""
    from actors.features.store import FeatureReader
    from actors.selection.match import box_template, rank_feature_maps
    from actors.selection.matcher import Matcher

    all_ids = sorted(k for s in ShardedDataset(ws, features_dir(names[0])).shards() for k in s.keys)
    if len(all_ids) < n_cand:
        raise SystemExit(f"the timing store holds {len(all_ids)} images, fewer than {n_cand} candidates")
    res: dict = {n: {"fine_s": [], "fine_cpu_s": [], "parquet_read_s": [], "lance_read_s": [], "decode_match_s": []}
                 for n in names}
    lances = {n: write_lance(ws, n, lance_dir / f"{n}.lance") for n in names}
    for r in range(repeats):
        rng = np.random.default_rng(100 + r)
        ids = [all_ids[i] for i in rng.choice(len(all_ids), n_cand, replace=False)]
        for n in names:  # alternating: every variant once per round
            fm = FeatureReader(ws, n).get([ids[0]])[0]
            _, h, w = fm.fmap.shape
            box = (w * fm.stride_x * 0.45, h * fm.stride_y * 0.45, w * fm.stride_x * 0.52, h * fm.stride_y * 0.53)
            center = np.asarray(fm.fmap, np.float32).mean(axis=(1, 2))  # stands in for the pool mean
            tmpl = box_template(np.asarray(fm.fmap, np.float32), box, fm.stride_y, fm.stride_x, center=center)
            m = Matcher(ws, n, cache_size=0, device="cpu")
            m.rerank([tmpl], ids[:2], 2)  # opens the reader (manifest, codec, row summaries): once per selector
            m._reader.get(ids, decode=False)
            t0, c0 = time.perf_counter(), time.process_time()
            hits = m.rerank([tmpl], ids, 100)
            res[n]["fine_s"].append(time.perf_counter() - t0)
            res[n]["fine_cpu_s"].append(time.process_time() - c0)  # CPU seconds of all the process's threads
            reader = m._reader
            t0 = time.perf_counter()
            enc = reader.get(ids, decode=False)
            res[n]["parquet_read_s"].append(time.perf_counter() - t0)
            ds, where = lances[n]
            t0 = time.perf_counter()
            lbufs = lance_get(ds, where, ids)
            res[n]["lance_read_s"].append(time.perf_counter() - t0)
            assert len(lbufs) == len(enc)
            t0 = time.perf_counter()
            hits2 = rank_feature_maps([tmpl], enc, top_k=100, device="cpu", codec=reader.codec)
            res[n]["decode_match_s"].append(time.perf_counter() - t0)
            assert [h.image_id for h in hits] == [h.image_id for h in hits2]
            print(f"round {r} {n}: fine {res[n]['fine_s'][-1]:.3f}s (CPU {res[n]['fine_cpu_s'][-1]:.3f}s), parquet read {res[n]['parquet_read_s'][-1]:.3f}s,"
                  f" lance read {res[n]['lance_read_s'][-1]:.3f}s, decode+match {res[n]['decode_match_s'][-1]:.3f}s",
                  flush=True)
    out = {}
    for n, d in res.items():
        out[n] = {k: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "runs": v}
                  for k, v in d.items()}
        out[n]["lance_disk_bytes_per_image"] = sum(p.stat().st_size for p in (lance_dir / f"{n}.lance").rglob("*")
                                                   if p.is_file()) / len(all_ids)
    return out


# ----------------------------------------------------------------------------------------------- output
def markdown(res: dict) -> str:
    lines = []
    acc = res.get("accuracy")
    if acc:
        rep, tun = acc["report"], acc["tuning"]
        lines += [f"Report world seed {acc['report_seed']} ({rep['n_pool']} pool images, {rep['n_queries']} held-out "
                  f"queries; chance recall@100 on < 1% objects {rep['chance']['recall@100']:.3f}); chosen on seed "
                  f"{acc['tune_seed']}: **{acc['chosen']}** (smallest ≤ {BUDGET_KIB} KiB on disk keeping ≥ "
                  f"{KEEP:.0%} of fp16 8-px recall). Backbone {acc['backbone']}.", "",
                  "| store | cell px | PCA | codec | fmap KiB | disk KiB | R@100 <1% | kept | P@10 <1% | top-100 overlap "
                  "| kept (tuning seed) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, v in rep["variants"].items():
            t = tun["variants"][n]
            lines.append(f"| {n}{' (chosen)' if n == acc['chosen'] else ''} | {v['cell_px']} | {v['pca_dim'] or '–'} "
                         f"| {v['codec']}{' m=' + str(v['pq_m']) if v['pq_m'] else ''} "
                         f"| {v['fmap_bytes_per_image'] / 1024:.1f} | {v['disk_bytes_per_image'] / 1024:.1f} "
                         f"| {v['recall@100_<1%']:.3f} | {v['recall_kept']:.2f} | {v['precision@10_<1%']:.3f} "
                         f"| {v['top100_overlap_with_fp16']:.2f} | {t['recall_kept']:.2f} |")
    co = res.get("coarse")
    if co:
        rep, tun = co["report"], co["tuning"]
        lines += ["", f"Coarse blocks (region vectors per image for scale), report world seed {co['report_seed']} "
                  f"({rep['n_queries']} queries; chance recall@100 on < 1% objects "
                  f"{rep['chance']['recall@100']:.3f}), tuning seed {co['tune_seed']} (chance "
                  f"{tun['chance']['recall@100']:.3f}); kept = recall / the same store's smallest blocks", "",
                  "| store | blocks (cells) | block px | vectors/image | index KiB/image | R@100 <1% | kept | P@10 <1% "
                  "| R@100 (tuning seed) | kept (tuning seed) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, v in rep["configs"].items():
            t = tun["configs"][key]
            ref = min((c for c in rep["configs"].values() if c["store"] == v["store"]), key=lambda c: c["cell_pool"])
            tref = tun["configs"][f"{ref['store']}/k{ref['cell_pool']}"]
            kept = v["recall@100_<1%"] / ref["recall@100_<1%"] if ref["recall@100_<1%"] else float("nan")
            tkept = t["recall@100_<1%"] / tref["recall@100_<1%"] if tref["recall@100_<1%"] else float("nan")
            lines.append(f"| {v['store']} | {v['cell_pool']}×{v['cell_pool']} | {v['block_px']} "
                         f"| {v['vectors_per_image']:.0f} | {v['index_bytes_per_image'] / 1024:.1f} "
                         f"| {v['recall@100_<1%']:.3f} | {kept:.2f} | {v['precision@10_<1%']:.3f} "
                         f"| {t['recall@100_<1%']:.3f} | {tkept:.2f} |")
    tim = res.get("timing")
    if tim:
        load = ", ".join(f"{x:.2f}" for x in tim["loadavg"])
        lines += ["", f"Random access, {tim['n_candidates']} uncached random candidates of a {tim.get('store')} store "
                  f"({tim['sizes'][next(iter(tim['sizes']))]['n_images'] if tim.get('sizes') else '?'} images), "
                  f"{tim['repeats']} alternating rounds, torch threads {tim['threads']}, load average {load} "
                  f"(1/5/15 min) at the start: median (min–max) s", "",
                  "| store | fine stage (read+decode+match) | its CPU seconds (all threads) | Parquet read (fmap column) "
                  "| Lance take (same rows) | decode+match | Lance disk KiB |", "|---|---|---|---|---|---|---|"]
        for n, v in tim["results"].items():
            f = lambda d: f"{d['median']:.3f} ({d['min']:.3f}–{d['max']:.3f})"  # noqa: E731
            cpu = f(v["fine_cpu_s"]) if "fine_cpu_s" in v else "–"
            lines.append(f"| {n} | {f(v['fine_s'])} | {cpu} | {f(v['parquet_read_s'])} | {f(v['lance_read_s'])} "
                         f"| {f(v['decode_match_s'])} | {v['lance_disk_bytes_per_image'] / 1024:.1f} |")
        pooled, before = tim.get("pooled"), tim.get("before")
        if pooled and before and "runs" in next(iter(before["results"].values()))["fine_s"]:
            loads = lambda r: "; ".join(", ".join(f"{x:.2f}" for x in la) for la in r["loadavg"])  # noqa: E731
            lines += ["", f"Before / after, the same command: {len(before['loadavg'])} runs of the code at "
                      f"{before.get('commit')} alternated with {len(pooled['loadavg'])} runs of this code, every "
                      f"round pooled: median (min–max) s. Load averages at the start of each run: before "
                      f"{loads(before)}; after {loads(pooled)}", "",
                      "| store | fine stage before | fine stage after | CPU s before | CPU s after | decode+match before "
                      "| decode+match after |", "|---|---|---|---|---|---|---|"]
            for n, v in pooled["results"].items():
                b = before["results"].get(n)
                if b:
                    lines.append(f"| {n} | {f(b['fine_s'])} | {f(v['fine_s'])} | {f(b['fine_cpu_s'])} "
                                 f"| {f(v['fine_cpu_s'])} | {f(b['decode_match_s'])} | {f(v['decode_match_s'])} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    out.with_suffix(".md").write_text(markdown(res))


def merge_runs(tims: list[dict]) -> dict:
    """The ``timing`` of several runs of one command -> per store and figure, every round pooled (median, min, max,
    runs), with each run's load averages at the start: how ``timing.before`` (the code before a change) and
    ``timing.pooled`` (this run and the earlier runs of the same code, alternated with the before runs) are kept."""
    out: dict = {"loadavg": [t["loadavg"] for t in tims], "commands": [t.get("command") for t in tims], "results": {}}
    for t in tims:
        for n, v in t["results"].items():
            for k, d in v.items():
                if isinstance(d, dict):
                    out["results"].setdefault(n, {}).setdefault(k, {"runs": []})["runs"] += d["runs"]
    for v in out["results"].values():
        for d in v.values():
            d.update(median=float(np.median(d["runs"])), min=float(min(d["runs"])), max=float(max(d["runs"])))
    return out


def _smoke_world(root: Path) -> Workspace:
    """A 40-image toy world with a random-init assay-small and its fp16 8-px base store (seconds)."""
    from actors.catalog.world import make_world
    from actors.features.embed import embed_pool
    from actors.features.small import SmallConfig, save_small_checkpoint, small_trunk

    if not (root / "workspace" / "catalog" / "images.parquet").exists():
        make_world(root, seed=0, n_images=40, size=(128, 96), splits=ts.SPLITS)
    ws = Workspace(root / "workspace")
    torch.manual_seed(0)
    save_small_checkpoint(ws, small_trunk(SmallConfig()), SmallConfig())
    embed_pool(ws, model="assay-small", name="base", local=True, progress=False, codec="fp16", pool=1)
    return ws


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["accuracy", "tune", "report", "coarse", "merge", "timing", "all"], default="all",
                    help="tune / report: one world each (two processes), written to --world-json; merge: both "
                         "into --out")
    ap.add_argument("--world-json", nargs="+", default=None, help="tune/report: where to write; merge: tune, report")
    ap.add_argument("--worlds", default="/tmp/fsb", help="folder with seed<N>/workspace holding the base store")
    ap.add_argument("--base", default="lite0-s8", help="fp16 8-px base store name in each world")
    ap.add_argument("--backbone", default="efficientnet-lite0 stride 8 (40 ch, ImageNet weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--tune-queries", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--timing-ws", default="/tmp/fsb/timing/workspace", help="workspace with a >= 1,000-image base")
    ap.add_argument("--timing-base", default="assay-small-p1")
    ap.add_argument("--timing-variants", nargs="+", default=["fp16-8px", "int8-8px", "int8-16px", "pq-d2-16px"])
    ap.add_argument("--candidates-timing", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare-only", action="store_true", help="--part timing: write the stores, time nothing")
    ap.add_argument("--before-json", nargs="+", default=None,
                    help="--part timing: timing JSONs of the same command on the code before a change (kept, pooled, "
                         "as timing.before)")
    ap.add_argument("--before-commit", default=None, help="the commit --before-json ran")
    ap.add_argument("--earlier-json", nargs="+", default=None,
                    help="--part timing: timing JSONs of earlier runs of this code, pooled with this run as "
                         "timing.pooled")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out or Path(__file__).with_suffix(".json"))
    res = json.loads(out.read_text()) if out.exists() and not a.smoke else {}
    names = list(VARIANTS)
    if a.smoke:
        root = Path(a.out).parent / "fs-smoke" if a.out else Path("/tmp/fs-smoke")
        ws = _smoke_world(root)
        names = ["fp16-8px", "int8-8px", "pq-d2-16px"]
        small = measure_world(ws, "base", 4, 0, 10, [f"{n}" for n in names])
        res = {"smoke": True, "accuracy": {"report": small, "tuning": small, "chosen": choose(small),
                                           "report_seed": 0, "tune_seed": 0, "backbone": "random assay-small"}}
        res["timing"] = {"n_candidates": 20, "repeats": 1, "threads": a.threads, "loadavg": os.getloadavg(),
                         "results": timing(ws, names, 20, 1, root / "lance")}
        shutil.rmtree(root / "lance", ignore_errors=True)
        _write(out, res)
        print(markdown(res))
        return
    res["smoke"] = False
    if a.part in ("tune", "report", "coarse"):
        import faiss

        faiss.omp_set_num_threads(a.threads)
        seed, nq = (a.tune_seed, a.tune_queries) if a.part == "tune" else (a.seed, a.queries)
        t0 = time.perf_counter()
        wsp = Workspace(Path(a.worlds) / f"seed{seed}" / "workspace")
        w = (measure_coarse(wsp, a.base, nq, seed, a.candidates) if a.part == "coarse"
             else measure_world(wsp, a.base, nq, seed, a.candidates, names))
        w.update(seed=seed, seconds=time.perf_counter() - t0, loadavg=os.getloadavg(), threads=a.threads,
                 candidates=a.candidates, command="python bench/feature_store.py " + " ".join(argv or sys.argv[1:]))
        Path(a.world_json[0]).write_text(json.dumps(w, indent=2) + "\n")
        return
    if a.part == "merge":
        tuned, report, *coarse = (json.loads(Path(p).read_text()) for p in a.world_json)
        if coarse:  # coarse-block worlds: tune, report
            ct, cr = coarse
            res["coarse"] = {"tuning": ct, "report": cr, "tune_seed": ct["seed"], "report_seed": cr["seed"],
                             "keep": KEEP, "commands": [ct["command"], cr["command"]]}
        res["accuracy"] = {"tuning": tuned, "report": report, "chosen": choose(tuned), "tune_seed": tuned["seed"],
                           "report_seed": report["seed"], "backbone": a.backbone, "candidates": report["candidates"],
                           "budget_kib": BUDGET_KIB, "keep": KEEP, "threads": report["threads"],
                           "commands": [tuned["command"], report["command"]]}
        _write(out, res)
    if a.part in ("accuracy", "all"):
        t0 = time.perf_counter()
        wt, wr = (Workspace(Path(a.worlds) / f"seed{s}" / "workspace") for s in (a.tune_seed, a.seed))
        tuned = measure_world(wt, a.base, a.tune_queries, a.tune_seed, a.candidates, names)
        chosen = choose(tuned)
        while ShardedDataset(wr, features_dir(a.base)).pending() or not wr.exists(f"{features_dir(a.base)}/_manifest.json"):
            time.sleep(10)  # the report world's base store is still being embedded
        report = measure_world(wr, a.base, a.queries, a.seed, a.candidates, names)
        res["accuracy"] = {"tuning": tuned, "report": report, "chosen": chosen, "tune_seed": a.tune_seed,
                           "report_seed": a.seed, "backbone": a.backbone, "candidates": a.candidates,
                           "budget_kib": BUDGET_KIB, "keep": KEEP, "threads": a.threads,
                           "seconds": time.perf_counter() - t0, "loadavg": os.getloadavg(),
                           "command": "python bench/feature_store.py " + " ".join(argv or sys.argv[1:])}
        _write(out, res)
    if a.part in ("timing", "all"):
        ws = Workspace(a.timing_ws)
        infos = {n: make_variant(ws, a.timing_base, n, VARIANTS[n]) for n in a.timing_variants}
        if a.prepare_only:  # the stores (and Lance copies) only, under nice: the timed run then only reads
            for n in a.timing_variants:
                write_lance(ws, n, Path(a.timing_ws).parent / "lance" / f"{n}.lance")
            return
        res["timing"] = {"n_candidates": a.candidates_timing, "repeats": a.repeats, "threads": a.threads,
                         "loadavg": os.getloadavg(), "store": a.timing_base, "sizes": infos,
                         "results": timing(ws, a.timing_variants, a.candidates_timing, a.repeats,
                                           Path(a.timing_ws).parent / "lance"),
                         "loadavg_after": os.getloadavg(), "torch_threads": torch.get_num_threads(),
                         "command": "python bench/feature_store.py " + " ".join(argv or sys.argv[1:]),
                         "notes": "shared 2-core machine, other engineers' (niced) jobs running; OS page cache warm; the "
                                  "fine stage runs its batches on torch-threads worker threads, one torch thread "
                                  "each; Parquet reads on 4 threads"}
        timing_of = lambda p: json.loads(Path(p).read_text())["timing"]  # noqa: E731
        if a.before_json:
            res["timing"]["before"] = dict(merge_runs([timing_of(p) for p in a.before_json]), commit=a.before_commit)
        if a.earlier_json:
            res["timing"]["pooled"] = merge_runs([timing_of(p) for p in a.earlier_json] + [res["timing"]])
        _write(out, res)
    print(markdown(res))


if __name__ == "__main__":
    main()
