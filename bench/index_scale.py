"""Index scale benchmark: the index type `actors.selection.index.choose_factory` picks, on 1M and 10M region vectors.

Synthetic region vectors: 64-d clustered Gaussian (2,000 centres, unit-normalised, fp32), generated in seeded
chunks so 10M vectors never sit in memory at once. For each size: build time (train + add), bytes per vector
(serialized index / n), QPS (single-threaded batch of queries), recall@10 against exact inner-product search
(brute force over the same chunks, on a query subset). Prints a table and writes ``bench/index_scale.json``.

    python bench/index_scale.py                 # 1M and 10M
    python bench/index_scale.py --sizes 1000000 --nq 200
    python bench/index_scale.py --smoke --out /tmp/index_scale.json   # seconds: 5k vectors, IVF16,PQ8x4

Build and QPS are timings: noisy when other jobs share the machine; recall is not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from actors.selection.index import TRAIN_MAX, TRAIN_PER_CENTROID, choose_factory, normalize

DIM, CENTRES, CHUNK = 64, 2000, 500_000


def centres(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(CENTRES, DIM)).astype(np.float32)


def chunk(c: np.ndarray, start: int, n: int, seed: int = 1) -> np.ndarray:
    """Vectors [start, start + n) of the seeded stream (each chunk is reproducible on its own)."""
    rng = np.random.default_rng([seed, start])
    lab = rng.integers(0, CENTRES, n)
    return normalize(c[lab] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32))


def exact_topk(c: np.ndarray, xq: np.ndarray, n: int, k: int) -> np.ndarray:
    """Exact inner-product top-k ids over the n-vector stream, chunk by chunk (IndexFlatIP per chunk)."""
    D_all, I_all = None, None
    for s in range(0, n, CHUNK):
        xb = chunk(c, s, min(CHUNK, n - s))
        D, I = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        I = I + s
        if D_all is None:
            D_all, I_all = D, I
        else:
            D2, I2 = np.hstack([D_all, D]), np.hstack([I_all, I])
            o = np.argsort(-D2, axis=1)[:, :k]
            D_all, I_all = np.take_along_axis(D2, o, 1), np.take_along_axis(I2, o, 1)
    return I_all


def bench_size(n: int, nq: int, k: int, nprobes: tuple[int, ...], factory: str | None = None) -> dict:
    """Build (train + add), size, QPS and recall@k of the index for n vectors (``factory``: choose_factory's)."""
    c = centres()
    factory = factory or choose_factory(n, DIM)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    nlist = faiss.extract_index_ivf(index).nlist
    xt = chunk(c, 0, min(n, TRAIN_MAX, TRAIN_PER_CENTROID * nlist), seed=99)
    index.train(xt)
    t_train = time.perf_counter() - t0
    for s in range(0, n, CHUNK):
        index.add(chunk(c, s, min(CHUNK, n - s)))
    t_build = time.perf_counter() - t0
    nbytes = faiss.serialize_index(index).nbytes
    xq = chunk(c, 0, nq, seed=7)
    gt = exact_topk(c, xq, n, k)
    res = {"n": n, "dim": DIM, "factory": factory, "train_s": t_train, "build_s": t_build, "trained_on": len(xt),
           "bytes_per_vector": nbytes / n, "index_mb": nbytes / 2**20, "nq": nq, "k": k, "by_nprobe": []}
    ps = faiss.ParameterSpace()
    for nprobe in nprobes:
        ps.set_index_parameter(index, "nprobe", nprobe)
        t = time.perf_counter()
        _, I = index.search(xq, k)
        dt = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(I, gt)])
        res["by_nprobe"].append({"nprobe": nprobe, "qps": nq / dt, "recall_at_10": float(recall)})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--threads", type=int, default=0, help="FAISS threads (0: FAISS default)")
    ap.add_argument("--factory", default=None, help="FAISS factory for every size (default: choose_factory)")
    ap.add_argument("--smoke", action="store_true", help="5k vectors, IVF16,PQ8x4, 50 queries, 1 thread (seconds)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/index_scale.json; required with --smoke)")
    args = ap.parse_args()
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.sizes, args.nq, args.nprobe = [5_000], 50, [4]
        args.factory, args.threads = args.factory or "IVF16,PQ8x4", args.threads or 1
    args.out = args.out or str(Path(__file__).with_suffix(".json"))
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    results = []
    for n in args.sizes:
        r = bench_size(n, args.nq, 10, tuple(args.nprobe), args.factory)
        results.append(r)
        print(f"n={n:,} {r['factory']}: build {r['build_s']:.1f}s (train {r['train_s']:.1f}s on "
              f"{r['trained_on']:,}), {r['bytes_per_vector']:.1f} B/vector, {r['index_mb']:.0f} MiB")
        for p in r["by_nprobe"]:
            print(f"   nprobe={p['nprobe']:4d}  QPS {p['qps']:9.0f}  recall@10 {p['recall_at_10']:.3f}", flush=True)
        Path(args.out).write_text(json.dumps({"threads": faiss.omp_get_max_threads(), "smoke": args.smoke,
                                              "results": results}, indent=2))
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
