"""The targeted-selection ceiling: how well the features alone separate the world's object categories.

Every feature the product offers is measured on *ground-truth boxes*, so localisation is perfect and only the
features decide. For each feature configuration (backbone, stride, input scale):

* **object kNN**: each query object (a held-out drawing, never in the pool) against every pool object; 1-NN and
  10-NN (majority vote) class accuracy. Chance: 1-NN = the pool's class frequencies squared and summed over the
  query's classes (a random pool object's class matches), reported per configuration.
* **oracle image ranking**: each pool image scored by its best ground-truth box against the query box (cosine of the
  pool-mean-centred box vectors, :func:`actors.features.regions.region_vectors`: the matcher's own vector), ranked;
  precision@10 and recall@100 (a hit = the image holds an object of the query's category) beside chance (the base rate
  of the query's class among pool images; K / pool size).

Both by the query object's box area (``<1%``, ``1-4%``, ``all``) and per category. Configurations (``--features``):
``s16`` (EfficientNet-Lite0 trunk, stride 16, native size: the product's default store), ``s16x2`` (the same on the
image upsampled 2×: ``assay embed --max-side 1024``), ``s8`` (stride 8), ``crop`` (the product's re-rank vector,
:mod:`actors.selection.rerank`: the box cropped square, resized to 160 px, the trunk to stride 32 mean-pooled).

    python bench/selection_ceiling.py --seed 0 --n-images 2000 --world /tmp/assay-bench-ts/seed0   # the report world
    python bench/selection_ceiling.py --seed 1 --n-images 800 --out /tmp/ceil1.json                 # tuning world
    python bench/selection_ceiling.py --smoke --out-dir /tmp/sc-smoke   # seconds; JSON under --out-dir
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.core.images import load_image  # noqa: E402
from actors.core.workspace import Workspace  # noqa: E402
from actors.features.regions import box_vectors, centre_normalize  # noqa: E402
from actors.selection.rerank import crop_boxes, crop_embedder  # noqa: E402
from bench.targeted_selection import SPLITS, load_truth, pick_queries, prepare_world  # noqa: E402

BINS = (("<1%", 0.0, 0.01), ("1-4%", 0.01, 1.0), ("all", 0.0, 1.0))
FEATURES = {  # name -> (stride, input scale, kind)
    "s16": (16, 1.0, "map"), "s16x2": (16, 2.0, "map"), "s8": (8, 1.0, "map"), "crop": (16, 1.0, "crop"),
}


def _encoder(stride: int, scale: float, size: tuple[int, int]):
    from actors.features.backbones import get_backbone
    from actors.features.encoder import RegionEncoder

    return RegionEncoder(get_backbone("efficientnet-lite0", stride=stride), max_side=round(max(size) * scale),
                         device="cpu", batch_size=8)


def _map_vectors(enc, images: dict[str, np.ndarray], boxes: dict[str, list]) -> tuple[dict, np.ndarray]:
    """{image_id: raw box vectors (n×C)} over the feature maps, and the mean cell vector (the pool centre)."""
    out, cells, n = {}, None, 0
    for iid, img in images.items():
        fm = enc.encode(img, iid)
        f = torch.from_numpy(fm.fmap).float()  # C×h×w
        s = f.sum((1, 2))
        cells, n = (s if cells is None else cells + s), n + f.shape[1] * f.shape[2]
        if boxes.get(iid):
            b = torch.tensor(boxes[iid], dtype=torch.float32)
            out[iid] = box_vectors(f[None].expand(len(b), -1, -1, -1), b, fm.stride_y, fm.stride_x).numpy()
    return out, (cells / max(n, 1)).numpy()


def _crop_vectors(images: dict[str, np.ndarray], boxes: dict[str, list]) -> tuple[dict, None]:
    """{image_id: n×C} the product's re-rank vectors (:mod:`actors.selection.rerank`) of each box."""
    emb = crop_embedder()
    return {iid: emb.embed_crops(crop_boxes(images[iid], bxs)) for iid, bxs in boxes.items() if bxs}, None


def measure(name: str, images: dict, boxes: dict, size: tuple[int, int]) -> tuple[dict, float]:
    stride, scale, kind = FEATURES[name]
    t = time.perf_counter()
    with torch.no_grad():
        vecs, center = (_crop_vectors(images, boxes) if kind == "crop"
                        else _map_vectors(_encoder(stride, scale, size), images, boxes))
    return {k: centre_normalize(torch.from_numpy(v), center).numpy() for k, v in vecs.items()}, \
        time.perf_counter() - t


def _bin_of(area: float) -> list[str]:
    return [b for b, lo, hi in BINS if lo <= area < hi]


def evaluate(vecs: dict, queries: list[dict], pool_objs: list[dict], holders: dict, n_pool: int) -> dict:
    """kNN and oracle-ranking figures per size bin and per category (see the module docstring)."""
    pv = np.concatenate([vecs[o["image_id"]][o["k"]:o["k"] + 1] for o in pool_objs])  # P×C
    pcat = np.array([o["category"] for o in pool_objs])
    pimg = np.array([o["image_id"] for o in pool_objs])
    freq = Counter(pcat.tolist())
    img_ids = sorted(set(pimg.tolist()))
    img_index = {iid: i for i, iid in enumerate(img_ids)}
    pi = np.array([img_index[i] for i in pimg])
    rows = []
    for q in queries:
        s = pv @ vecs[q["image_id"]][q["k"]]  # P
        order = np.argsort(-s)
        nn10 = Counter(pcat[order[:10]].tolist()).most_common(1)[0][0]
        best = np.full(len(img_ids), -np.inf)
        np.maximum.at(best, pi, s)  # each image: its best object; images with no object rank last (never hits)
        top = np.argsort(-best)
        rel = holders.get(q["category"], set())
        hits10 = sum(img_ids[j] in rel for j in top[:10])
        hits100 = sum(img_ids[j] in rel for j in top[:100])
        rows.append({"category": q["category"], "area": q["area"], "nn1": float(pcat[order[0]] == q["category"]),
                     "nn10": float(nn10 == q["category"]), "p10": hits10 / 10,
                     "r100": hits100 / max(1, len(rel)), "chance_p10": len(rel) / n_pool,
                     "chance_r100": min(1.0, 100 / n_pool), "chance_nn1": freq[q["category"]] / len(pcat)})
    keys = ("nn1", "nn10", "p10", "r100", "chance_p10", "chance_r100", "chance_nn1")

    def agg(rs: list[dict]) -> dict:
        return {"queries": len(rs), **{k: (float(np.mean([r[k] for r in rs])) if rs else None) for k in keys}}

    by_bin = {b: agg([r for r in rows if b in _bin_of(r["area"])]) for b, _, _ in BINS}
    by_cat = {c: agg([r for r in rows if r["category"] == c]) for c in sorted({r["category"] for r in rows})}
    return {"by_size": by_bin, "by_category": by_cat}


def load_objects(ws: Workspace, n_queries: int = 0,
                 seed: int = 0) -> tuple[list[dict], list[dict], dict, int, dict, dict]:
    """(query objects, pool objects, category -> pool images, pool size, images to read, boxes per image);
    ``n_queries`` > 0: the query objects ``bench/targeted_selection.py`` picks with the same count and seed."""
    queries, pool_boxes, holders, n_pool = load_truth(ws)
    if n_queries:
        queries = pick_queries(queries, n_queries, seed)
    from actors.catalog.schema import IMAGES

    uris = {r["image_id"]: r["uri"] for r in ws.read_table(IMAGES).to_pylist()}
    boxes: dict[str, list] = defaultdict(list)
    pool_objs = []
    for (iid, cat), bxs in sorted(pool_boxes.items()):
        for b in bxs:
            pool_objs.append({"image_id": iid, "category": cat, "k": len(boxes[iid])})
            boxes[iid].append(b)
    for q in queries:
        q["k"] = len(boxes[q["image_id"]])
        boxes[q["image_id"]].append(q["box"])
    return queries, pool_objs, holders, n_pool, uris, boxes


def markdown(res: dict) -> str:
    out = [f"# Targeted-selection ceiling (world seed {res['seed']}, {res['n_pool']} pool images, "
           f"{res['n_queries']} query objects)", "",
           "Ground-truth boxes only: the features decide. Chance beside every figure.", "",
           "| features | size | queries | 1-NN acc | chance | 10-NN acc | oracle P@10 | chance P@10 | oracle R@100 "
           "| chance R@100 | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["features"].items():
        for b, m in r["by_size"].items():
            if not m["queries"]:
                continue
            out.append(f"| {name} | {b} | {m['queries']} | {m['nn1']:.3f} | {m['chance_nn1']:.3f} | {m['nn10']:.3f} "
                       f"| {m['p10']:.3f} | {m['chance_p10']:.3f} | {m['r100']:.3f} | {m['chance_r100']:.3f} "
                       f"| {r['seconds']:.0f} |")
    best = max(res["features"], key=lambda n: res["features"][n]["by_size"]["all"]["p10"])
    out += ["", f"Per category ({best}, all sizes):", "", "| category | queries | 1-NN acc | oracle P@10 | chance P@10 |",
            "|---|---|---|---|---|"]
    for c, m in res["features"][best]["by_category"].items():
        out.append(f"| {c} | {m['queries']} | {m['nn1']:.3f} | {m['p10']:.3f} | {m['chance_p10']:.3f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--features", default="s16,s16x2,s8,crop")
    p.add_argument("--out-dir", default="/tmp/assay-bench-ceiling")
    p.add_argument("--world", default=None, help="an existing world folder (e.g. one bench/targeted_selection.py "
                                                  "made) instead of <out-dir>/world-<seed>-<n>")
    p.add_argument("--out", default=None, help="JSON path (default bench/selection_ceiling.json)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", type=int, default=150,
                   help="query objects (the same ones bench/targeted_selection.py --queries N picks); 0: all")
    p.add_argument("--smoke", action="store_true", help="a 40-image world, two features: seconds")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    n, feats = (40, ["s16", "crop"]) if a.smoke else (a.n_images, a.features.split(","))
    size = (512, 384)
    world = Path(a.world) if a.world else Path(a.out_dir) / f"world-{a.seed}-{n}"
    ws, _ = prepare_world(world, n, a.seed, 0.0, size=size, train=False)
    queries, pool_objs, holders, n_pool, uris, boxes = load_objects(ws, 0 if a.smoke else a.queries, a.seed)
    images = {iid: load_image(uris[iid]) for iid in boxes}
    res = {"command": "python bench/selection_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "smoke": a.smoke, "seed": a.seed, "n_images": n, "n_pool": n_pool, "n_queries": len(queries),
           "n_pool_objects": len(pool_objs), "splits": [list(s) for s in SPLITS], "threads": a.threads,
           "features": {}}
    for name in feats:
        vecs, secs = measure(name, images, boxes, size)
        res["features"][name] = {**evaluate(vecs, queries, pool_objs, holders, n_pool), "seconds": secs,
                                 "stride": FEATURES[name][0], "input_scale": FEATURES[name][1],
                                 "kind": FEATURES[name][2]}
        m = res["features"][name]["by_size"]["all"]
        print(f"{name}: 1-NN {m['nn1']:.3f} (chance {m['chance_nn1']:.3f}), oracle P@10 {m['p10']:.3f} "
              f"(chance {m['chance_p10']:.3f}), R@100 {m['r100']:.3f} (chance {m['chance_r100']:.3f}) "
              f"[{secs:.0f}s]", flush=True)
    out = Path(a.out) if a.out else (Path(a.out_dir) / "selection_ceiling.json" if a.smoke
                                     else Path(__file__).with_name("selection_ceiling.json"))
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    return res


if __name__ == "__main__":
    main()
