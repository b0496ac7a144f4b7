"""Sharded index benchmark: N synthetic region vectors over S Ray shard actors vs one single index, same vectors.

Vectors: 64-d clustered Gaussian (2,000 centres, unit-normalised; the generator of ``bench/index_scale.py``),
grouped into synthetic images of ``--per-image`` vectors (image id = 16 hex digits of SHA-1, like the catalog's).
One IVF-PQ template is trained once; the single index and every shard start from it (shared quantizer). Measured:
train time, build time (single: add; sharded: route + add in the actors + atomic save + memory-mapped reopen),
bytes per vector on disk, RSS of each shard actor after the queries, QPS of batched queries (median of ``--runs``),
recall@10 of both against exact search, and whether the sharded top-10 equals the single index's (ids; PQ ties
aside). Writes ``bench/index_sharded.json`` and ``bench/index_sharded.md`` (with the sizing for 10M / 100M images
derived from the measured bytes per vector).

    python bench/index_sharded.py --n 500000                        # bench/index_sharded.json (with a single index)
    python bench/index_sharded.py --smoke --out /tmp/sharded.json   # seconds: 20k vectors, 2 shards

The 10M run, in two phases so the heavy part runs niced and the timing part alone under the team's timing lock
(no single index beside the shards: memory stays at the shards' PQ codes, ~0.5 GB, plus Ray's processes)::

    W=/tmp/assay-sharded-10m; O=bench/index_sharded_10m.json
    nice -n 19 python bench/index_sharded.py --phase build --n 10000000 --factory IVF1024,PQ32 --nprobe 32 \
        --nprobes 8 16 32 64 --nq 200 --no-single --work $W --out $O
    flock /tmp/team/timing.lock python bench/index_sharded.py --phase qps --work $W --out $O   # x3, spread out

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


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args) -> dict:
    """Phase 1 (heavy, run it niced): train the template, [single index], shards (add, save), recall vs exact.

    Leaves the saved shards in ``args.work`` for :func:`qps` and returns the result dict (no sharded QPS yet)."""
    import faiss
    import ray

    from actors.core.workspace import Workspace
    from actors.selection.sharded import ShardedIndex

    faiss.omp_set_num_threads(args.threads)
    start_ray(args)  # first: a loaded machine can make Ray's start time out; fail before the long parts
    c = centres()
    n, k = args.n, args.k
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / f"template-{args.factory.replace(',', '_')}-{n}.faiss"
    template = faiss.index_factory(DIM, args.factory, faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(template).nlist
    t0 = time.perf_counter()
    if cache.exists():  # a resumed run: the template trained before (its train_s kept in the cache's json)
        template = faiss.read_index(str(cache))
        train_s = json.loads(cache.with_suffix(".json").read_text())["train_s"]
    else:
        xt = chunk(c, 0, min(n, args.train_per_list * nlist), seed=99)
        template.train(xt)
        train_s = time.perf_counter() - t0
        del xt
        faiss.write_index(template, str(cache))
        cache.with_suffix(".json").write_text(json.dumps({"train_s": train_s}))
    log(f"trained {args.factory} on {min(n, args.train_per_list * nlist):,} vectors in {train_s:.0f} s")
    xq = chunk(c, 0, args.nq, seed=7)
    gt_file = work / f"exact-{n}-{args.nq}-{k}.npy"
    t0 = time.perf_counter()
    if gt_file.exists():
        gt, exact_s = np.load(gt_file), json.loads(gt_file.with_suffix(".json").read_text())["exact_s"]
    else:
        gt = exact_topk(c, xq, n, k)
        exact_s = time.perf_counter() - t0
        np.save(gt_file, gt)
        gt_file.with_suffix(".json").write_text(json.dumps({"exact_s": exact_s}))
    log(f"exact top-{k} of {args.nq} queries over {n:,} vectors in {exact_s:.0f} s")

    single = None
    if args.single:
        index = faiss.clone_index(template)
        t0 = time.perf_counter()
        for s in range(0, n, CHUNK):
            index.add(chunk(c, s, min(CHUNK, n - s)))
        single_build = time.perf_counter() - t0
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", args.nprobe)
        single_bytes = faiss.serialize_index(index).nbytes
        qps_single = []
        for _ in range(args.runs):
            t = time.perf_counter()
            D1, I1 = index.search(xq, k)
            qps_single.append(args.nq / (time.perf_counter() - t))
        del index
        single = {"build_s": single_build, "bytes_per_vector": single_bytes / n, "index_mib": single_bytes / 2**20,
                  "qps": qps_single, "qps_median": statistics.median(qps_single), "recall_at_10": recall(I1, gt, k)}
        log(f"single index: built in {single_build:.0f} s, recall@{k} {single['recall_at_10']:.3f}")

    ws = Workspace(work / "ws")
    if ws.exists("index/synthetic/shards"):
        ws.delete("index/synthetic/shards")  # a build left half-way: the shards are rebuilt (the template is kept)
    t0 = time.perf_counter()
    idx = ShardedIndex.create(ws, "synthetic", template, n_shards=args.shards, factory=args.factory,
                              nprobe=args.nprobe, threads=max(1, args.threads // 2))
    start_s = time.perf_counter() - t0
    rss_empty = [st["rss"] / 2**20 for st in idx.stats()]  # actor baseline: Python, Ray, FAISS, empty template
    t0 = time.perf_counter()
    idx.add(stream_images(c, n, args.per_image))
    idx.flush()
    add_s = time.perf_counter() - t0
    in_memory = idx.stats()  # every shard in RAM, before it is saved and reopened memory-mapped
    mans = idx.save()
    if sum(m["n"] for m in mans) != n:
        raise RuntimeError(f"shards hold {sum(m['n'] for m in mans)} vectors, expected {n}")
    sharded_build = time.perf_counter() - t0
    log(f"sharded: added in {add_s:.0f} s, saved at {sharded_build:.0f} s")
    D, S, I = idx.search(xq, k)
    by_nprobe = []
    for p in args.nprobes:  # recall against the number of lists probed (recall only: not timed)
        idx.set_nprobe(p)
        _, Sp, Ip = idx.search(xq, k)
        by_nprobe.append({"nprobe": p, "recall_at_10": recall(gids(idx.lookup(Sp, Ip), args, n), gt, k)})
    idx.set_nprobe(args.nprobe)
    stats = idx.stats()
    gid = gids(idx.lookup(S, I), args, n)
    idx.close()
    root = work / "ws" / "index/synthetic/shards"
    shard_bytes = [sum((root / str(m_k) / f).stat().st_size for f in (m["index_file"], m["ids_file"],
                                                                      m["images_file"])) for m_k, m in enumerate(mans)]
    index_bytes = [(root / str(m_k) / m["index_file"]).stat().st_size for m_k, m in enumerate(mans)]
    sharded = {"actor_start_s": start_s, "add_s": add_s, "build_s": sharded_build,
               "shard_vectors": [m["n"] for m in mans], "shard_images": [m["images"] for m in mans],
               "index_bytes_per_vector": sum(index_bytes) / n, "files_bytes_per_vector": sum(shard_bytes) / n,
               "index_file_mib": [b / 2**20 for b in index_bytes],
               "rss_empty_mib": rss_empty, "rss_in_memory_mib": [s["rss"] / 2**20 for s in in_memory],
               "rss_mib": [s["rss"] / 2**20 for s in stats], "peak_rss_mib": [s["peak_rss"] / 2**20 for s in stats],
               "recall_at_10": recall(gid, gt, k), "by_nprobe": by_nprobe}
    if single is not None:
        cut = D1[:, -1:] + 1e-5  # hits strictly above the k-th score (PQ codes can tie at the boundary)
        sharded["max_abs_score_diff"] = float(np.max(np.abs(D - D1)))
        sharded["queries_with_same_hits"] = float(np.mean([sorted(a[d > t]) == sorted(b[d1 > t]) for a, b, d, d1, t
                                                           in zip(gid, I1, D, D1, cut[:, 0])]))
    if args.phase != "all":  # --phase all: qps() runs next in this process, on the same Ray instance (fresh actors)
        ray.shutdown()
    return {"n": n, "dim": DIM, "factory": args.factory, "nprobe": args.nprobe, "shards": args.shards, "k": k,
            "nq": args.nq, "exact_queries": args.nq, "exact_s": exact_s, "per_image": args.per_image,
            "images": -(-n // args.per_image), "threads": args.threads, "runs": args.runs,
            "trained_on": int(min(n, args.train_per_list * nlist)), "train_s": train_s, "single": single,
            "sharded": sharded, "driver_peak_rss_mib": peak_rss_mib(), "build_loadavg": list(os.getloadavg()),
            "qps_runs": []}


def start_ray(args, tries: int = 3) -> None:
    """A local Ray instance (2 CPUs); retried, since its start can time out on an overloaded machine."""
    from actors.core.runtime import init_ray

    for t in range(tries):
        try:
            init_ray(num_cpus=2, object_store_memory=args.object_store_mib * 2**20)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            if t == tries - 1:
                raise
            log(f"Ray did not start ({e}); retrying")
            import ray

            ray.shutdown()


def gids(hits: list, args, n: int) -> np.ndarray:
    """Global vector number of each (image, row, col) hit (the generator's order; see :func:`stream_images`)."""
    code = {h: i for i, h in enumerate(image_ids(0, -(-n // args.per_image)))}
    side = int(math.ceil(math.sqrt(args.per_image)))
    return np.array([code[h[0]] * args.per_image + h[1] * side + h[2] for h in hits]).reshape(args.nq, args.k)


def qps(args, r: dict) -> dict:
    """Phase 2 (timing; run it under ``flock /tmp/team/timing.lock``, not niced): reopen the saved shards
    memory-mapped in fresh actors, one warm-up pass, ``--runs`` timed batches of ``nq`` queries, then one query at a
    time; appends one entry to ``r["qps_runs"]``."""
    import faiss
    import ray

    from actors.core.workspace import Workspace
    from actors.selection.sharded import ShardedIndex

    faiss.omp_set_num_threads(args.threads)
    xq = chunk(centres(), 0, r["nq"], seed=7)
    start_ray(args)
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    idx = ShardedIndex.open(Workspace(Path(args.work) / "ws"), "synthetic", threads=max(1, args.threads // 2))
    idx.stats()  # the actors have loaded their shards
    open_s = time.perf_counter() - t0
    idx.search(xq, r["k"])  # warm-up: pages the probed lists of the memory-mapped files in
    batch = []
    for _ in range(args.runs):
        t = time.perf_counter()
        idx.search(xq, r["k"])
        batch.append(r["nq"] / (time.perf_counter() - t))
    one = []
    for q in xq[:args.single_queries]:
        t = time.perf_counter()
        idx.search(q[None], r["k"])
        one.append((time.perf_counter() - t) * 1000)
    stats = idx.stats()
    idx.close()
    ray.shutdown()
    run = {"loadavg_before": load, "loadavg_after": list(os.getloadavg()), "open_s": open_s, "qps": batch,
           "qps_median": statistics.median(batch), "one_query_ms_p50": float(np.percentile(one, 50)),
           "one_query_ms_p95": float(np.percentile(one, 95)), "n_one_queries": len(one),
           "rss_mib": [s["rss"] / 2**20 for s in stats], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    r["qps_runs"].append(run)
    every = [q for x in r["qps_runs"] for q in x["qps"]]
    r["sharded"].update(qps=every, qps_median=statistics.median(every),
                        qps_run_medians=[x["qps_median"] for x in r["qps_runs"]],
                        one_query_ms_p50=statistics.median(x["one_query_ms_p50"] for x in r["qps_runs"]),
                        rss_mib=run["rss_mib"])
    return r


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
    qps_txt = f"{s['qps_median']:.0f}" if s.get("qps") else "not measured yet"
    runs = r.get("qps_runs", [])
    lines = [
        "# Sharded index benchmark (`bench/index_sharded.py`)", "",
        f"{r['n']:,} synthetic {r['dim']}-d region vectors ({r['images']:,} images × {r['per_image']}), "
        f"`{r['factory']}` trained once on {r['trained_on']:,} vectors ({r['train_s']:.0f} s), nprobe {r['nprobe']}, "
        f"{r['shards']} Ray shard actors on one machine" + (" vs one single index" if g else "") +
        f"; {r['nq']} batched queries, k = {r['k']}, recall against exact inner-product search of all "
        f"{r['exact_queries']} queries over all {r['n']:,} vectors; FAISS threads {r['threads']} "
        f"(each shard actor {max(1, r['threads'] // 2)})."
        + (" **Smoke run: not a measurement.**" if doc["smoke"] else ""), "",
        "Timings and RSS were measured on a shared 2-core machine with other jobs running: noisy. Recall is not.",
        "", "| | build (s) | bytes/vector (index file) | memory | QPS | recall@10 vs exact |",
        "|---|---|---|---|---|---|",
    ]
    if g:
        lines.append(f"| single index | {g['build_s']:.1f} | {g['bytes_per_vector']:.1f} | {g['index_mib']:.0f} MiB "
                     f"(index) | {g['qps_median']:.0f} | {g['recall_at_10']:.3f} |")
    lines += [
        f"| {r['shards']} shards | {s['build_s']:.1f} (route, add, save, reopen mmapped) "
        f"| {s['index_bytes_per_vector']:.1f} ({s['files_bytes_per_vector']:.1f} with id maps) "
        f"| RSS per actor {', '.join(f'{m:.0f}' for m in s['rss_mib'])} MiB (empty actor: "
        f"{min(s['rss_empty_mib']):.0f}) | {qps_txt} | {s['recall_at_10']:.3f} |", "",
        f"Vectors per shard: {', '.join(f'{v:,}' for v in s['shard_vectors'])} (images by hash). "
        f"Shard index files: {', '.join(f'{v:.0f}' for v in s.get('index_file_mib', []))} MiB. "
        f"Actor start: {s['actor_start_s']:.1f} s.",
    ]
    if "rss_in_memory_mib" in s:
        lines.append(f"RSS per actor with its shard in RAM (after adding, before the memory-mapped reopen): "
                     f"{', '.join(f'{m:.0f}' for m in s['rss_in_memory_mib'])} MiB; peak "
                     f"{', '.join(f'{m:.0f}' for m in s['peak_rss_mib'])} MiB; driver peak "
                     f"{r.get('driver_peak_rss_mib', r.get('driver_rss_mib', 0)):.0f} MiB.")
    if "queries_with_same_hits" in s:
        lines.append(f"Sharded top-{r['k']} equal to the single index's on {s['queries_with_same_hits']:.1%} of "
                     f"queries (hits above the k-th score; PQ codes may tie at the boundary), max |score difference| "
                     f"{s['max_abs_score_diff']:.2g}.")
    if s.get("by_nprobe"):
        lines += ["", "| nprobe | " + " | ".join(str(b["nprobe"]) for b in s["by_nprobe"]) + " |",
                  "|---|" + "---|" * len(s["by_nprobe"]),
                  "| recall@10 | " + " | ".join(f"{b['recall_at_10']:.3f}" for b in s["by_nprobe"]) + " |"]
    if runs:
        lines += ["", f"QPS: {len(runs)} separate timing runs (each: fresh actors reopening the shards memory-mapped, "
                  f"one warm-up batch, {r['runs']} timed batches of {r['nq']} queries, then "
                  f"{runs[0]['n_one_queries']} single queries one at a time), each under the team's timing lock.", "",
                  "| run (UTC) | load avg (1 min) | open (s) | batched QPS (median) | one query p50 / p95 (ms) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['time']} | {x['loadavg_before'][0]:.1f} | {x['open_s']:.1f} | {x['qps_median']:.0f} "
                  f"| {x['one_query_ms_p50']:.1f} / {x['one_query_ms_p95']:.1f} |" for x in runs]
    lines += [
        "", "## Sizing", "",
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


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)
    md = out.with_suffix(".md")
    md.with_name(f".{md.name}.tmp").write_text(markdown(doc))
    md.with_name(f".{md.name}.tmp").replace(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--factory", default="IVF1024,PQ32")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--nprobes", type=int, nargs="*", default=[8, 16, 32, 64], help="recall by lists probed")
    ap.add_argument("--train-per-list", type=int, default=64, help="training vectors per IVF list")
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--per-image", type=int, default=48, help="vectors per synthetic image (4×4 blocks of 32×24)")
    ap.add_argument("--runs", type=int, default=3, help="timed batches per QPS run")
    ap.add_argument("--single-queries", type=int, default=100, help="queries timed one at a time per QPS run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--object-store-mib", type=int, default=512)
    ap.add_argument("--single", action=argparse.BooleanOptionalAction, default=True,
                    help="also build one single index over the same vectors (the equality check)")
    ap.add_argument("--phase", choices=("all", "build", "qps"), default="all",
                    help="build: heavy part (run niced), leaves the shards and state.json in --work; qps: one timing "
                         "run on them (under the timing lock), appended; all: both, in one process")
    ap.add_argument("--work", default=None, help="folder for the shard workspace (default: a temp folder; "
                                                 "required by --phase build/qps)")
    ap.add_argument("--smoke", action="store_true", help="20k vectors, IVF16,PQ8x4, 2 shards, 50 queries")
    ap.add_argument("--out", default=None, help="JSON path (default bench/index_sharded.json; required with --smoke)")
    args = ap.parse_args()
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.n, args.factory, args.shards, args.nq, args.nprobe, args.runs = 20_000, "IVF16,PQ8x4", 2, 50, 4, 1
        args.nprobes, args.single_queries = [2, 4], 5
    if args.phase != "all" and not args.work:
        ap.error(f"--phase {args.phase} needs --work")
    out = Path(args.out or Path(__file__).with_suffix(".json"))
    temp = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="assay-sharded-")
    state = Path(args.work) / "state.json"
    if args.phase in ("all", "build"):
        r = build(args)
        Path(args.work).mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(r))
    else:
        r = json.loads(state.read_text())
    if args.phase in ("all", "qps"):
        r = qps(args, r)
        state.write_text(json.dumps(r))
    doc = {"smoke": args.smoke, "result": r, "sizing": sizing(r), "command": " ".join(sys.argv)}
    write(doc, out)
    print(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if temp:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
