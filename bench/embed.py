"""Benchmark: embedding throughput of ``embed_pool`` (Ray Data, actor pool) vs. a bare sequential torch loop.

Both sides use the same backbone, device, batch size and decoder (:func:`actors.images.load_image`) on the same
pool images; the bare loop decodes then encodes batch after batch in one process. Prints images/s, the ratio and
peak RSS (driver; plus the largest Ray worker seen), and writes ``bench/embed.json``.

    python bench/embed.py --world /tmp/assay_world1k [--n-images 1000] [--batch-size 16] [--actors 1]

When ``--world`` does not hold a world yet one is generated there (``make_world``), and assay-small is trained
on it first when the workspace has no checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _peak_worker_rss(stop: threading.Event, out: list[float]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.wait(0.5):
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if p.pid != me.pid and "ray::" in (p.info["name"] or "") + " ".join(p.info["cmdline"] or []):
                    out.append(p.memory_info().rss / 2**20)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue


def bare_loop(ws, uris: list[str], batch_size: int, device: str) -> float:
    """Images/s of decode + encode, sequential, with a freshly built encoder of the same store."""
    from actors.embed import load_region_encoder
    from actors.images import load_image

    enc = load_region_encoder(ws, "bench-ray", device=device, batch_size=batch_size)
    t0 = time.perf_counter()
    for i in range(0, len(uris), batch_size):
        enc.encode_batch([load_image(u) for u in uris[i:i + batch_size]])
    return len(uris) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="/tmp/assay_world1k")
    ap.add_argument("--n-images", type=int, default=1000, help="world size when it has to be generated")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per embedding actor")
    ap.add_argument("--decode-cpus", type=float, default=0.25, help="CPUs per decode task")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per actor (0: cores / actors)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from actors.backbone import SMALL_CHECKPOINT, train_backbone
    from actors.embed import embed_pool
    from actors.features import features_dir
    from actors.runtime import Resources, device, init_ray
    from actors.workspace import Workspace
    from actors.world import make_world

    world = Path(args.world)
    if not (world / "world.json").exists():
        make_world(world, seed=0, n_images=args.n_images, progress=True)
    ws = Workspace(world / "workspace")
    if not ws.exists(SMALL_CHECKPOINT):
        print(train_backbone(ws))
    for name in ("bench-ray", "bench-local"):
        if ws.exists(features_dir(name)):
            shutil.rmtree(ws.local_path(features_dir(name)))
    cat = ws.read_table("catalog/images.parquet").to_pylist()
    uris = [r["uri"] for r in sorted(cat, key=lambda r: r["image_id"]) if r["split"] == "pool" and r["status"] != "error"]
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.actors)
    res = Resources(pool_size=args.actors, num_cpus=args.num_cpus, num_gpus=1.0 if device() == "cuda" else 0.0,
                    batch_size=args.batch_size)

    init_ray(num_cpus=cores)
    stop, worker_rss = threading.Event(), []
    watcher = threading.Thread(target=_peak_worker_rss, args=(stop, worker_rss), daemon=True)
    watcher.start()
    rep = embed_pool(ws, name="bench-ray", resources=res, threads=threads, decode_cpus=args.decode_cpus,
                     progress=False)
    stop.set()
    torch.set_num_threads(cores)
    bare = bare_loop(ws, uris, args.batch_size, device())
    result = {
        "command": "python bench/embed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "device": device(), "cores": cores, "images": len(uris), "backbone": "assay-small",
        "batch_size": args.batch_size, "actors": args.actors, "num_cpus_per_actor": args.num_cpus,
        "decode_cpus": args.decode_cpus, "torch_threads_per_actor": threads,
        "embed_pool_images_per_s": rep.images_per_s, "embed_pool_seconds": rep.seconds,
        "bare_loop_images_per_s": bare, "ratio": rep.images_per_s / bare,
        "bytes_per_image": rep.bytes_per_image, "grid_cells_per_image": rep.bytes_per_image / (2 * rep.dim),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ray_worker_peak_rss_mib": max(worker_rss, default=float("nan")),
    }
    for k, v in result.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
    (Path(__file__).parent / "embed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
