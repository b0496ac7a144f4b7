"""Targeted-selection benchmark: template matching vs. the whole-image global baseline on an embedded world.

Steps (each skipped when its output exists, so a re-run only measures): ``make_world`` (pool = 75% of
``--n-images``) -> ``train_backbone`` -> ``embed_pool`` (pool split; store ``assay-small-p<pool>[-pca<d>]``, default
``--pool 1`` = stride-8 cells, so a 10-px object is about one cell) -> region + global indexes (``--factory``,
default exact ``Flat``) -> every labeled object of the held-out ``queries`` split (up to ``--queries``) becomes a
one-box query, run by both methods on the same queries and the same feature store.

Object-level metrics, per method, per query-object size bin (box area < 0.5%, 0.5–1%, > 1% of the image), at
K = 10, 50, 100: precision@K (hits / K, a hit = the image holds an object of the query's category), recall@K
(hits / pool images holding that category), loc@K (share of hits whose matched box has IoU ≥ 0.3 with an object of
that category; the global baseline's "box" is the whole image). Query latency p50/p95 (coarse + fine, query
encoding excluded). Prints a markdown table and the template/global ratio of recall@100 on objects < 1% of the
image, and writes ``bench/targeted_selection.json`` and ``.md``.

    python bench/targeted_selection.py --out-dir /tmp/assay-bench --n-images 4000 --queries 300

To compare matchers with the backbone fixed, point ``--out-dir`` at an existing world (its ``models/`` is reused).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from actors.catalog.schema import IMAGES, LABELS
from actors.selection.mine import Query, Selector
from actors.core.workspace import Workspace

# pool-heavy splits: a 4,000-image world gives 3,000 pool images, 600 train, 200 val and 200 query images
SPLITS = (("train", 0.15), ("val", 0.05), ("pool", 0.75), ("queries", 0.05))
BINS = (("<0.5%", 0.0, 0.005), ("0.5-1%", 0.005, 0.01), (">1%", 0.01, 1.0))
KS = (10, 50, 100)
BACKBONE = "assay-small"
MODEL = "assay-small-p1"  # the feature store queried (set by main from --pool / --pca-dim)


def store_name(pool: int, pca_dim: int | None) -> str:
    return f"{BACKBONE}-p{pool}" + (f"-pca{pca_dim}" if pca_dim else "")


def prepare(out_dir: Path, n_images: int, seed: int, train_minutes: float = 2.5,
            use_ray: bool = False, pool: int = 1, pca_dim: int | None = None,
            factory: str | None = "Flat", cell_pool: int = 1) -> tuple[Workspace, dict]:
    from actors.features.small import SMALL_CHECKPOINT, train_backbone
    from actors.features.embed import embed_pool
    from actors.selection.index import add_to_index, build_index
    from actors.catalog.world import make_world

    if not (out_dir / "workspace" / "catalog" / "images.parquet").exists():
        t = time.perf_counter()
        make_world(out_dir, seed=seed, n_images=n_images, progress=True, workers=2, splits=SPLITS)
        print(f"world: {time.perf_counter() - t:.0f}s", flush=True)
    ws = Workspace(out_dir / "workspace")
    if not ws.exists(SMALL_CHECKPOINT):
        print(train_backbone(ws, max_minutes=train_minutes, progress=True), flush=True)
    t = time.perf_counter()
    rep = embed_pool(ws, model=BACKBONE, name=MODEL, splits=("pool",), progress=True, local=not use_ray, pool=pool,
                     pca_dim=pca_dim)
    print(f"embed: {time.perf_counter() - t:.0f}s", flush=True)
    info = {"store": MODEL, "cell_stride": rep.cell_stride, "dim": rep.dim, "bytes_per_image": _bytes_per_image(ws)}
    for kind in ("region", "global"):
        t = time.perf_counter()
        man = (add_to_index(ws, MODEL, kind=kind) if _has_index(ws, kind) else
               build_index(ws, MODEL, kind=kind, factory=factory if kind == "region" else "Flat",
                           cell_pool=cell_pool if kind == "region" else 1))
        info[f"index_{kind}"] = f"{man.factory} n={man.n:,}" + (f" cell_pool={man.cell_pool}" if man.cell_pool > 1 else "")
        print(f"index {kind}: {man.factory} n={man.n:,} ({time.perf_counter() - t:.0f}s)", flush=True)
    return ws, info


def _has_index(ws: Workspace, kind: str) -> bool:
    from actors.selection.index import index_dir

    return ws.exists(f"{index_dir(MODEL, kind)}/manifest.json")


def _bytes_per_image(ws: Workspace) -> float:
    """Mean stored fmap bytes per ok image of the store (fp16 C×H×W)."""
    from actors.features.store import iter_feature_maps

    for fm in iter_feature_maps(ws, MODEL):
        return float(fm.fmap.astype("float16").nbytes)
    return float("nan")


def load_truth(ws: Workspace):
    images = ws.read_table(IMAGES).to_pylist()
    labels = [r for r in ws.read_table(LABELS).to_pylist() if r.get("status", "ok") == "ok"]
    split = {r["image_id"]: r["split"] for r in images}
    meta = {r["image_id"]: r for r in images}
    pool_boxes: dict[tuple[str, str], list] = defaultdict(list)  # (image_id, category) -> boxes
    holders: dict[str, set] = defaultdict(set)  # category -> pool images holding it
    queries = []
    for r in labels:
        box = [r["x0"], r["y0"], r["x1"], r["y1"]]
        if split.get(r["image_id"]) == "pool":
            pool_boxes[r["image_id"], r["category"]].append(box)
            holders[r["category"]].add(r["image_id"])
        elif split.get(r["image_id"]) == "queries":
            m = meta[r["image_id"]]
            area = (box[2] - box[0]) * (box[3] - box[1]) / (m["width"] * m["height"])
            queries.append({"image_id": r["image_id"], "uri": m["uri"], "box": box, "category": r["category"],
                            "area": area, "size": (float(m["width"]), float(m["height"]))})
    return queries, pool_boxes, holders


def encode_queries(ws: Workspace, queries: list[dict]) -> dict:
    from actors.features.encoder import load_region_encoder
    from actors.core.images import load_image

    enc = load_region_encoder(ws, MODEL)
    uris = sorted({q["uri"] for q in queries})
    return {u: enc.encode(load_image(u), u) for u in uris}


def score(hits, q, pool_boxes, holders) -> dict:
    out = {}
    n_rel = max(1, len(holders[q["category"]]))
    for k in KS:
        top = hits[:k]
        rel = [h for h in top if (h.image_id, q["category"]) in pool_boxes]
        loc = 0
        for h in rel:
            gt = torch.tensor(pool_boxes[h.image_id, q["category"]], dtype=torch.float32)
            loc += int(box_iou(torch.tensor([h.box], dtype=torch.float32), gt).max() >= 0.3)
        out[k] = {"precision": len(rel) / k, "recall": len(rel) / n_rel, "loc": loc / len(rel) if rel else 0.0}
    return out


def _evaluate(sels, queries, pool_boxes, holders) -> dict:
    lat = np.array([s.coarse_s + s.fine_s for s in sels]) * 1000
    per_bin: dict = {}
    for name, lo, hi in BINS + (("<1%", 0.0, 0.01), ("all", 0.0, 1.0)):
        rows = [score(s.hits, q, pool_boxes, holders) for s, q in zip(sels, queries) if lo <= q["area"] < hi]
        per_bin[name] = {"n": len(rows), **{f"{m}@{k}": float(np.mean([r[k][m] for r in rows])) if rows else None
                                            for k in KS for m in ("precision", "recall", "loc")}}
    return {"latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
            "coarse_ms_p50": float(np.percentile([s.coarse_s * 1000 for s in sels], 50)),
            "fine_ms_p50": float(np.percentile([s.fine_s * 1000 for s in sels], 50)),
            "candidates": int(np.median([s.n_candidates for s in sels])), "bins": per_bin}


def run(ws: Workspace, n_queries: int, seed: int, candidates: tuple[int, ...] = (1000,), cold: int = 30) -> dict:
    """Both methods on the same queries; template matching once per coarse-stage candidate count (warm cache:
    feature maps preloaded), then ``cold`` queries read their candidates' rows from the Parquet store."""
    queries, pool_boxes, holders = load_truth(ws)
    rng = np.random.default_rng(seed)
    queries = [queries[i] for i in sorted(rng.permutation(len(queries))[:n_queries])]
    fmaps = encode_queries(ws, queries)
    report: dict = {"n_queries": len(queries), "methods": {}, "candidates": {}}

    def queries_for(method):
        return [Query(q["uri"], [tuple(q["box"])], max(KS), MODEL, method, fmap=fmaps[q["uri"]],
                      image_size=q["size"]) for q in queries]

    sel = Selector(ws, preload=True)  # feature maps in memory: the fine stage reads no Parquet per query
    for method in ("template", "global"):
        qs = queries_for(method)
        sel.run(qs[:1], write=False)  # warm-up: loads the index once
        runs = candidates if method == "template" else (None,)
        for n_cand in runs:
            sels = []
            for qq in qs:  # one at a time: per-query latency as a user sees it
                sels += sel.run([qq], write=False, n_candidates=n_cand)
            r = _evaluate(sels, queries, pool_boxes, holders)
            print(f"{method} candidates={r['candidates']}: recall@100 <1% {r['bins']['<1%']['recall@100']:.3f}, "
                  f"p50 {r['latency_ms_p50']:.0f} ms", flush=True)
            if method == "template":
                report["candidates"][str(r["candidates"])] = r
            if method == "global" or n_cand == max(candidates):
                report["methods"][method] = r
    if cold:  # no cache: every candidate's row is read from the Parquet store (OS page cache may be warm)
        cold_sel = Selector(ws, cache_size=0)
        cold_sel.indexes = sel.indexes
        sels = [cold_sel.run([qq], write=False, n_candidates=max(candidates))[0]
                for qq in queries_for("template")[:cold]]
        report["cold"] = {"n": len(sels), **{k: v for k, v in _evaluate(sels, queries[:cold], pool_boxes,
                                                                          holders).items() if k != "bins"}}
    t, g = (report["methods"][m]["bins"]["<1%"]["recall@100"] for m in ("template", "global"))
    report["recall100_small_ratio_template_over_global"] = (t / g) if t is not None and g else None
    return report


def markdown(report: dict) -> str:
    """The report as a markdown table: one row per method × size bin."""
    lines = ["| method | size bin | n | " + " | ".join(f"P@{k} | R@{k} | loc@{k}" for k in KS) + " |",
             "|---|---|---|" + "---|" * (3 * len(KS))]
    for method, r in report["methods"].items():
        for b, v in r["bins"].items():
            cells = " | ".join(f"{v[f'{m}@{k}'] or 0:.3f}" for k in KS for m in ("precision", "recall", "loc"))
            lines.append(f"| {method} | {b} | {v['n']} | {cells} |")
    lines.append("")
    for method, r in report["methods"].items():
        lines.append(f"- {method}: latency p50 {r['latency_ms_p50']:.1f} ms, p95 {r['latency_ms_p95']:.1f} ms "
                     f"(coarse p50 {r['coarse_ms_p50']:.1f} ms, fine p50 {r['fine_ms_p50']:.1f} ms, "
                     f"{r['candidates']} candidates; feature maps cached)")
    if report.get("cold"):
        c = report["cold"]
        lines.append(f"- template, uncached (candidate rows read from the Parquet store, {c['n']} queries): "
                     f"p50 {c['latency_ms_p50']:.1f} ms, p95 {c['latency_ms_p95']:.1f} ms")
    if len(report.get("candidates", {})) > 1:
        lines += ["", "| coarse candidates | R@100 (<1%) | P@10 (<1%) | p50 ms | p95 ms |", "|---|---|---|---|---|"]
        for n, r in sorted(report["candidates"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | {r['bins']['<1%']['recall@100']:.3f} | {r['bins']['<1%']['precision@10']:.3f} | "
                         f"{r['latency_ms_p50']:.0f} | {r['latency_ms_p95']:.0f} |")
    ratio = report["recall100_small_ratio_template_over_global"]
    lines.append(f"- recall@100 on objects < 1%: template / global = {ratio if ratio is None else round(ratio, 3)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="/tmp/assay-bench-world")
    ap.add_argument("--n-images", type=int, default=4000, help="world size; the pool is 75% of it")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray", action="store_true", help="embed with the Ray Data pipeline (default in-process)")
    ap.add_argument("--train-minutes", type=float, default=2.5, help="backbone training budget")
    ap.add_argument("--pool", type=int, default=1, help="backbone cells averaged per stored cell (1 = stride 8)")
    ap.add_argument("--pca-dim", type=int, default=None, help="PCA-reduce stored cells to this many dims")
    ap.add_argument("--factory", default="Flat", help="FAISS factory of the region index ('auto': by size)")
    ap.add_argument("--cell-pool", type=int, default=2, help="region index over k×k blocks of stored cells")
    ap.add_argument("--candidates", type=int, nargs="+", default=[1000],
                    help="coarse-stage candidate counts to compare (the largest is the reported default)")
    ap.add_argument("--cold", type=int, default=30, help="queries re-run without the feature-map cache")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    global MODEL
    MODEL = store_name(args.pool, args.pca_dim)
    ws, info = prepare(Path(args.out_dir), args.n_images, args.seed, args.train_minutes, args.ray, args.pool,
                       args.pca_dim, None if args.factory == "auto" else args.factory, args.cell_pool)
    report = run(ws, args.queries, args.seed, tuple(args.candidates), args.cold)
    n_pool = ws.read_table(IMAGES, columns=["split"]).column("split").to_pylist().count("pool")
    report.update(n_images=args.n_images, n_pool=n_pool, seed=args.seed, **info)
    md = markdown(report)
    print(md)
    Path(args.out).write_text(json.dumps(report, indent=2))
    Path(args.out).with_suffix(".md").write_text(
        f"pool images: {n_pool}, store {info['store']} (cell stride {info['cell_stride']} px, {info['dim']} dims, "
        f"{info['bytes_per_image'] / 1024:.0f} KiB/image), region index {info['index_region']}\n\n" + md)
    print(f"wrote {args.out} and .md")


if __name__ == "__main__":
    main()
