"""Sharded index benchmark: N synthetic region vectors over S Ray shard actors vs one single index, same vectors.

Vectors: 64-d clustered Gaussian (2,000 centres, unit-normalised; the generator of ``bench/index_scale.py``),
grouped into synthetic images of ``--per-image`` vectors (image id = 16 hex digits of SHA-1, like the catalog's).
One IVF-PQ template is trained once; the single index and every shard start from it (shared quantizer). Measured:
train time, build time (single: add; sharded: route + add in the actors + atomic save + memory-mapped reopen),
bytes per vector on disk, RSS of each shard actor after the queries, QPS of batched queries (median of ``--runs``),
recall@10 of both against exact search, and whether the sharded top-10 equals the single index's (ids; PQ ties
aside). Writes ``bench/index_sharded.json`` and ``bench/index_sharded.md`` (with the sizing for 10M / 100M images
derived from the measured bytes per vector).

    python bench/index_sharded.py --n 2000000                       # the committed run
    python bench/index_sharded.py --smoke --out /tmp/sharded.json   # seconds: 20k vectors, 2 shards

Build time, QPS and RSS are timings / memory of a shared machine: noisy when other jobs run; recall is not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

from index_scale import CHUNK, DIM, centres, chunk, exact_topk  # noqa: E402

# sizing inputs: a 512×384 image at stride 8 has 64×48 cells (see issue #10: 768 vectors per image at 2×2 blocks)
CELLS_H, CELLS_W = 48, 64
NODE_RAM_GIB, INDEX_SHARE = 128, 0.5  # a node with 128 GiB of RAM, half of it for index shards


def image_ids(start: int, n: int) -> list[str]:
    return [hashlib.sha1(f"synthetic-{i}".encode()).hexdigest()[:16] for i in range(start, start + n)]


def per_image(xb: np.ndarray, first_image: int, per: int):
    """(image_id, xb, rows, cols) tuples of ``per`` consecutive vectors each (the last image may hold fewer)."""
    n_img = -(-len(xb) // per)
    ids = image_ids(first_image, n_img)
    side = int(math.ceil(math.sqrt(per)))
    for j, image_id in enumerate(ids):
        x = xb[j * per:(j + 1) * per]
        r = np.arange(len(x))
        yield image_id, x, (r // side).astype(np.int16), (r % side).astype(np.int16)


def stream_images(c: np.ndarray, n: int, per: int):
    """The n-vector stream (CHUNK-seeded, as the exact search reads it) as whole images: image j holds global
    vectors [j·per, (j+1)·per), so a hit's (image, row, col) gives back its global vector number."""
    carry, first = np.zeros((0, DIM), np.float32), 0
    for s in range(0, n, CHUNK):
        x = np.concatenate([carry, chunk(c, s, min(CHUNK, n - s))])
        full = len(x) if s + CHUNK >= n else len(x) // per * per
        yield from per_image(x[:full], first, per)
        first, carry = first + -(-full // per), x[full:]


def recall(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(args) -> dict:
    import faiss
    import ray

    from actors.core.runtime import init_ray
    from actors.core.workspace import Workspace
    from actors.selection.sharded import ShardedIndex

    faiss.omp_set_num_threads(args.threads)
    c = centres()
    n, k = args.n, args.k
    template = faiss.index_factory(DIM, args.factory, faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(template).nlist
    t0 = time.perf_counter()
    xt = chunk(c, 0, min(n, 64 * nlist), seed=99)
    template.train(xt)
    train_s = time.perf_counter() - t0
    xq = chunk(c, 0, args.nq, seed=7)
    gt = exact_topk(c, xq, n, k)

    # single index
    single = faiss.clone_index(template)
    t0 = time.perf_counter()
    for s in range(0, n, CHUNK):
        single.add(chunk(c, s, min(CHUNK, n - s)))
    single_build = time.perf_counter() - t0
    faiss.ParameterSpace().set_index_parameter(single, "nprobe", args.nprobe)
    single_bytes = faiss.serialize_index(single).nbytes
    qps_single = []
    for _ in range(args.runs):
        t = time.perf_counter()
        D1, I1 = single.search(xq, k)
        qps_single.append(args.nq / (time.perf_counter() - t))
    del single

    # sharded
    init_ray(num_cpus=2, object_store_memory=args.object_store_mib * 2**20)
    work = Path(args.work or tempfile.mkdtemp(prefix="assay-sharded-"))
    ws = Workspace(work / "ws")
    t0 = time.perf_counter()
    idx = ShardedIndex.create(ws, "synthetic", template, n_shards=args.shards, factory=args.factory,
                              nprobe=args.nprobe, threads=max(1, args.threads // 2))
    start_s = time.perf_counter() - t0
    rss_empty = [st["rss"] / 2**20 for st in idx.stats()]  # actor baseline: Python, Ray, FAISS, empty template
    t0 = time.perf_counter()
    idx.add(stream_images(c, n, args.per_image))
    mans = idx.save()
    if sum(m["n"] for m in mans) != n:
        raise RuntimeError(f"shards hold {sum(m['n'] for m in mans)} vectors, expected {n}")
    sharded_build = time.perf_counter() - t0
    qps_sharded = []
    for _ in range(args.runs):
        t = time.perf_counter()
        D, S, I = idx.search(xq, k)
        qps_sharded.append(args.nq / (time.perf_counter() - t))
    stats = idx.stats()
    # global id of a shard hit: the generator's vector number, recovered from (image, row, col)
    hits = idx.lookup(S, I)
    idx.close()
    code = {h: i for i, h in enumerate(image_ids(0, -(-n // args.per_image)))}
    side = int(math.ceil(math.sqrt(args.per_image)))
    gid = np.array([code[h[0]] * args.per_image + h[1] * side + h[2] for h in hits]).reshape(args.nq, k)
    shard_bytes = [sum((work / "ws" / "index/synthetic/shards" / str(m_k) / f).stat().st_size
                       for f in (m["index_file"], m["ids_file"], m["images_file"])) for m_k, m in enumerate(mans)]
    index_bytes = [(work / "ws" / "index/synthetic/shards" / str(m_k) / m["index_file"]).stat().st_size
                   for m_k, m in enumerate(mans)]
    cut = D1[:, -1:] + 1e-5  # hits strictly above the k-th score (PQ codes can tie at the boundary)
    same = np.mean([sorted(a[d > t]) == sorted(b[d1 > t]) for a, b, d, d1, t in zip(gid, I1, D, D1, cut[:, 0])])
    ray.shutdown()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "n": n, "dim": DIM, "factory": args.factory, "nprobe": args.nprobe, "shards": args.shards, "k": k,
        "nq": args.nq, "per_image": args.per_image, "images": -(-n // args.per_image), "threads": args.threads,
        "runs": args.runs, "trained_on": len(xt), "train_s": train_s,
        "single": {"build_s": single_build, "bytes_per_vector": single_bytes / n, "index_mib": single_bytes / 2**20,
                   "qps": qps_single, "qps_median": statistics.median(qps_single),
                   "recall_at_10": recall(I1, gt, k)},
        "sharded": {"actor_start_s": start_s, "build_s": sharded_build, "shard_vectors": [m["n"] for m in mans],
                    "shard_images": [m["images"] for m in mans],
                    "index_bytes_per_vector": sum(index_bytes) / n, "files_bytes_per_vector": sum(shard_bytes) / n,
                    "rss_mib": [s["rss"] / 2**20 for s in stats], "rss_empty_mib": rss_empty, "qps": qps_sharded,
                    "qps_median": statistics.median(qps_sharded), "recall_at_10": recall(gid, gt, k),
                    "max_abs_score_diff": float(np.max(np.abs(D - D1))),
                    "queries_with_same_hits": float(same)},
        "driver_rss_mib": rss_mib(),
    }


def sizing(r: dict) -> list[dict]:
    """Vectors, bytes and nodes for 10M / 100M images at 2×2 and 4×4 blocks, from the measured bytes per vector."""
    # per vector in RAM: the index (measured: PQ code + IVF list id) + the id map (int32 code + int16 row + col)
    bpv = r["sharded"]["index_bytes_per_vector"] + 8
    out = []
    for images in (10_000_000, 100_000_000):
        for block in (2, 4):
            per = math.ceil(CELLS_H / block) * math.ceil(CELLS_W / block)
            total = images * per * bpv
            out.append({"images": images, "block": block, "vectors_per_image": per, "vectors": images * per,
                        "bytes_per_vector": bpv, "total_gib": total / 2**30,
                        "nodes": math.ceil(total / (NODE_RAM_GIB * INDEX_SHARE * 2**30))})
    return out


def markdown(doc: dict) -> str:
    r = doc["result"]
    s, g = r["sharded"], r["single"]
    lines = [
        "# Sharded index benchmark (`bench/index_sharded.py`)", "",
        f"{r['n']:,} synthetic {r['dim']}-d region vectors ({r['images']:,} images × {r['per_image']}), "
        f"`{r['factory']}` trained once on {r['trained_on']:,} vectors ({r['train_s']:.0f} s), nprobe {r['nprobe']}, "
        f"{r['shards']} Ray shard actors on one machine vs one single index; {r['nq']} batched queries, "
        f"k = {r['k']}, FAISS threads {r['threads']}, QPS median of {r['runs']} runs."
        + (" **Smoke run: not a measurement.**" if doc["smoke"] else ""), "",
        "Timings and RSS were measured on a shared 2-core machine with other jobs running: noisy. Recall is not.", "",
        "| | build (s) | bytes/vector (index file) | memory | QPS | recall@10 vs exact |", "|---|---|---|---|---|---|",
        f"| single index | {g['build_s']:.1f} | {g['bytes_per_vector']:.1f} | {g['index_mib']:.0f} MiB (index) "
        f"| {g['qps_median']:.0f} | {g['recall_at_10']:.3f} |",
        f"| {r['shards']} shards | {s['build_s']:.1f} (route, add, save, reopen mmapped) "
        f"| {s['index_bytes_per_vector']:.1f} ({s['files_bytes_per_vector']:.1f} with id maps) "
        f"| RSS per actor {', '.join(f'{m:.0f}' for m in s['rss_mib'])} MiB (empty actor: "
        f"{min(s['rss_empty_mib']):.0f}) | {s['qps_median']:.0f} "
        f"| {s['recall_at_10']:.3f} |", "",
        f"Vectors per shard: {', '.join(f'{v:,}' for v in s['shard_vectors'])} (images by hash). "
        f"Sharded top-{r['k']} equal to the single index's on {s['queries_with_same_hits']:.1%} of queries "
        f"(hits above the k-th score; PQ codes may tie at the boundary), max |score difference| "
        f"{s['max_abs_score_diff']:.2g}. Actor start: {s['actor_start_s']:.1f} s.", "",
        "## Sizing", "",
        f"From the measured index bytes per vector ({s['index_bytes_per_vector']:.1f}: the PQ code plus the IVF list's "
        f"8-byte id) plus 8 bytes of id map (int32 image code, int16 row, int16 col) = "
        f"{s['index_bytes_per_vector'] + 8:.1f} B per vector in RAM. A 512×384 image at stride 8 has "
        f"{CELLS_H}×{CELLS_W} cells. Nodes: {NODE_RAM_GIB} GiB of RAM each, {INDEX_SHARE:.0%} of it for shards "
        f"(the rest: Ray, the fine stage's feature cache, the OS).", "",
        "| images | blocks | vectors/image | vectors | index + id map | nodes |", "|---|---|---|---|---|---|",
    ]
    for z in doc["sizing"]:
        lines.append(f"| {z['images']:,} | {z['block']}×{z['block']} | {z['vectors_per_image']} | {z['vectors']:,} "
                     f"| {z['total_gib']:,.0f} GiB | {z['nodes']} |")
    lines += ["", "Memory-mapped shards need only their hot IVF lists resident; the node counts above are for "
              "every shard fully in RAM (steady QPS). Image-id strings (one per image, ~60 B) are not counted."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--factory", default="IVF1024,PQ32")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--per-image", type=int, default=48, help="vectors per synthetic image (4×4 blocks of 32×24)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--object-store-mib", type=int, default=512)
    ap.add_argument("--work", default=None, help="folder for the shard workspace (default: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="20k vectors, IVF16,PQ8x4, 2 shards, 50 queries")
    ap.add_argument("--out", default=None, help="JSON path (default bench/index_sharded.json; required with --smoke)")
    args = ap.parse_args()
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.n, args.factory, args.shards, args.nq, args.nprobe, args.runs = 20_000, "IVF16,PQ8x4", 2, 50, 4, 1
    out = Path(args.out or Path(__file__).with_suffix(".json"))
    r = run(args)
    doc = {"smoke": args.smoke, "result": r, "sizing": sizing(r)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)
    md = out.with_suffix(".md")
    md.with_name(f".{md.name}.tmp").write_text(markdown(doc))
    md.with_name(f".{md.name}.tmp").replace(md)
    print(markdown(doc))
    print(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()
