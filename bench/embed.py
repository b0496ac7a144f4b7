"""Benchmark: embedding throughput of ``embed_pool`` (Ray Data, actor pool) vs. a bare sequential torch loop.

Both sides use the same backbone, device, batch size and decoder (:func:`actors.core.images.load_image`) on the same
pool images; the bare loop decodes then encodes batch after batch in one process (torch's default threads: all
cores), and writes nothing. ``embed_pool`` also writes the zstd Parquet shards. Ray run and bare loop alternate
``--repeats`` times; the medians are reported: end-to-end images/s (Ray worker start and model load included),
steady-state images/s (after the first rows came back) and both ratios to the bare loop, plus peak RSS of
the driver and of the largest Ray worker. Writes ``bench/embed.json``.

    python bench/embed.py --world /tmp/assay_world1k [--n-images 1000] [--batch-size 16] [--actors 2]

Defaults are those of ``assay embed`` (``Resources.auto()``); the bare loop uses torch's default threads (all
cores) and the same batch size.

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
from actors.catalog.schema import IMAGES


def _peak_worker_rss(stop: threading.Event, out: dict[int, float]) -> None:
    """Peak RSS (VmHWM, MiB) of every Ray worker process seen; polls /proc every 2 s (cheap: no cmdline scan
    of the whole system on the driver's CPU)."""
    while True:
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if text.startswith("Name:\tray::"):
                hwm = [ln for ln in text.splitlines() if ln.startswith("VmHWM:")]
                if hwm:
                    out[int(status.parent.name)] = int(hwm[0].split()[1]) / 1024
        if stop.wait(2.0):
            return


def bare_loop(ws, uris: list[str], batch_size: int, device: str) -> float:
    """Images/s of decode + encode, sequential, with a freshly built encoder of the same store."""
    from actors.features.encoder import load_region_encoder
    from actors.core.images import load_image

    enc = load_region_encoder(ws, "bench-ray", device=device, batch_size=batch_size)
    t0 = time.perf_counter()
    for i in range(0, len(uris), batch_size):
        enc.encode_batch([load_image(u) for u in uris[i:i + batch_size]])
    return len(uris) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="/tmp/assay_world1k")
    ap.add_argument("--n-images", type=int, default=1000, help="world size when it has to be generated")
    ap.add_argument("--batch-size", type=int, default=0, help="0: Resources.auto() (16 on CPU, 64 on GPU)")
    ap.add_argument("--actors", type=int, default=0, help="actor pool size (0: Resources.auto(), as `assay embed`)")
    ap.add_argument("--num-cpus", type=float, default=0.5, help="Ray CPUs per embedding actor")
    ap.add_argument("--decode-cpus", type=float, default=0.5, help="Ray CPUs per decode task")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per actor (0: cores / actors)")
    ap.add_argument("--repeats", type=int, default=2, help="Ray run + bare loop pairs; medians are reported")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from actors.features.small import SMALL_CHECKPOINT, train_backbone
    from actors.features.embed import embed_pool
    from actors.features.store import features_dir
    from actors.core.runtime import Resources, device, init_ray
    from actors.core.workspace import Workspace
    from actors.catalog.world import make_world

    world = Path(args.world)
    if not (world / "world.json").exists():
        make_world(world, seed=0, n_images=args.n_images, progress=True)
    ws = Workspace(world / "workspace")
    if not ws.exists(SMALL_CHECKPOINT):
        print(train_backbone(ws))
    cat = ws.read_table(IMAGES).to_pylist()
    uris = [r["uri"] for r in sorted(cat, key=lambda r: r["image_id"]) if r["split"] == "pool" and r["status"] != "error"]
    cores = os.cpu_count() or 1
    res = Resources.auto(pool_size=args.actors or None, batch_size=args.batch_size or None, num_cpus=args.num_cpus)
    threads = args.threads or max(1, cores // res.pool_size)

    init_ray(num_cpus=cores)
    stop, worker_rss = threading.Event(), {}
    watcher = threading.Thread(target=_peak_worker_rss, args=(stop, worker_rss), daemon=True)
    watcher.start()
    runs = []
    for r in range(args.repeats):  # alternate the two sides so machine noise hits both alike
        for name in ("bench-ray",):
            if ws.exists(features_dir(name)):
                shutil.rmtree(ws.local_path(features_dir(name)))
        rep = embed_pool(ws, name="bench-ray", resources=res, threads=threads, decode_cpus=args.decode_cpus,
                         progress=False)
        torch.set_num_threads(cores)
        bare = bare_loop(ws, uris, res.batch_size, device())
        runs.append({"embed_pool_images_per_s": rep.images_per_s, "embed_pool_steady_images_per_s":
                     rep.steady_images_per_s, "startup_s": rep.startup_s, "bare_loop_images_per_s": bare,
                     "ratio": rep.images_per_s / bare, "steady_ratio": rep.steady_images_per_s / bare})
        print(f"run {r + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in runs[-1].items()), flush=True)
    stop.set()
    med = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
    result = {
        "command": "python bench/embed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "device": device(), "cores": cores, "images": len(uris), "backbone": "assay-small",
        "batch_size": res.batch_size, "actors": res.pool_size, "num_cpus_per_actor": res.num_cpus,
        "decode_cpus": args.decode_cpus, "torch_threads_per_actor": threads, "repeats": args.repeats,
        **{f"median_{k}": v for k, v in med.items()},
        "bytes_per_image": rep.bytes_per_image, "grid_cells_per_image": rep.bytes_per_image / (2 * rep.dim),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ray_worker_peak_rss_mib": max(worker_rss.values(), default=float("nan")),
        "runs": runs,
    }
    for k, v in result.items():
        if k != "runs":
            print(f"{k:>36}: {v:.4g}" if isinstance(v, float) else f"{k:>36}: {v}")
    (Path(__file__).parent / "embed.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
