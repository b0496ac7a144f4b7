"""Benchmark: embedding throughput of ``embed_pool`` (Ray Data, actor pool) vs. the fastest plain PyTorch loop.

Three sides, same backbone, device, batch size, decoder (:func:`actors.core.images.load_image`) and images, run in
alternation ``--repeats`` times (≥ 3) so machine noise hits all alike:

* ``embed_pool``: ``assay embed``'s defaults (``Resources.auto()``), Ray worker start and model load included,
  zstd Parquet shards written.
* ``dataloader``: a ``torch.utils.data.DataLoader`` with one decode worker per core feeding the encoder in the
  main process (torch on all cores), fp16 output; worker start and model load included; writes nothing.
* ``per_core``: one single-threaded process per core, each decoding and encoding its share with fp16 output;
  process start and model load included; writes nothing.

The baseline of a run is the faster of the two plain loops. Reported: every run, the median, min and max of each
side's images/s and of embed_pool / baseline. Writes ``bench/embed.json``. Timings are noisy when other jobs share
the machine: the JSON says so and keeps every run.

    python bench/embed.py --world /tmp/tsb/seed0 --limit 400 --repeats 3
    python bench/embed.py --smoke --out /tmp/embed.json     # seconds: tiny world, random-init assay-small, 1 repeat

``--limit N`` embeds the first N pool images (a sub-workspace under ``--world`` with those catalog rows and the
world's checkpoint). When ``--world`` holds no world one is generated and assay-small trained on it.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.catalog.schema import IMAGES  # noqa: E402

STORE = "bench-embed"


def _encoder(ws_uri: str, device: str, batch_size: int, threads: int):
    from actors.features.encoder import load_region_encoder
    from actors.core.workspace import Workspace

    torch.set_num_threads(threads)
    return load_region_encoder(Workspace(ws_uri), STORE, device=device, batch_size=batch_size)


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, uris: list[str]) -> None:
        self.uris = uris

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> np.ndarray:
        from actors.core.images import load_image

        return load_image(self.uris[i])


def dataloader_loop(ws_uri: str, uris: list[str], batch_size: int, device: str, cores: int) -> float:
    """Images/s: DataLoader decode workers (one per core) -> encoder (all cores) -> fp16 arrays."""
    t0 = time.perf_counter()
    enc = _encoder(ws_uri, device, batch_size, cores)
    dl = torch.utils.data.DataLoader(_Decoded(uris), batch_size=batch_size, num_workers=cores,
                                     collate_fn=list, prefetch_factor=2, multiprocessing_context="spawn")
    n = 0
    for batch in dl:
        n += len(enc.encode_batch(batch, half=True))
    return n / (time.perf_counter() - t0)


def _per_core_worker(args: tuple[str, list[str], int, str]) -> int:
    from actors.core.images import load_image

    ws_uri, uris, batch_size, device = args
    enc = _encoder(ws_uri, device, batch_size, 1)
    n = 0
    for i in range(0, len(uris), batch_size):
        n += len(enc.encode_batch([load_image(u) for u in uris[i:i + batch_size]], half=True))
    return n


def per_core_loop(ws_uri: str, uris: list[str], batch_size: int, device: str, cores: int) -> float:
    """Images/s: one single-threaded process per core, each decoding + encoding its share (fp16)."""
    from multiprocessing import get_context

    t0 = time.perf_counter()
    with get_context("spawn").Pool(cores) as pool:
        n = sum(pool.map(_per_core_worker, [(ws_uri, uris[k::cores], batch_size, device) for k in range(cores)]))
    return n / (time.perf_counter() - t0)


def subset_workspace(world: Path, limit: int):
    """A workspace holding the first ``limit`` pool images of the world's catalog and its checkpoint."""
    import pyarrow.compute as pc

    from actors.core.workspace import Workspace
    from actors.features.small import SMALL_CHECKPOINT

    src = Workspace(world / "workspace")
    if not limit:
        return src
    ws = Workspace(world / f"bench-embed-{limit}")
    if not ws.exists(IMAGES):
        t = src.read_table(IMAGES)
        t = t.filter(pc.equal(t["split"], "pool")).sort_by("image_id").slice(0, limit)
        ws.write_table(IMAGES, t)
        dst = Path(ws.local_path(SMALL_CHECKPOINT))
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.local_path(SMALL_CHECKPOINT), dst)
    return ws


def _patient_ray_start(wait_s: float = 240.0) -> None:
    """Benchmark-only workaround: Ray waits a fixed 30 s for its raylet to register, which a machine with a load
    average of 20+ misses; let that lookup retry for ``wait_s`` instead (a private Ray function, so only here)."""
    import ray._private.services as services

    os.environ.setdefault("RAY_agent_register_timeout_ms", str(int(wait_s * 1000)))  # the raylet's wait for its agents

    get_node = services.get_node

    def patient(*args, **kwargs):
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    services.get_node = patient


def _stats(xs: list[float]) -> dict:
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="/tmp/assay_world1k")
    ap.add_argument("--n-images", type=int, default=1000, help="world size when it has to be generated")
    ap.add_argument("--limit", type=int, default=0, help="embed only the first N pool images (0: all)")
    ap.add_argument("--batch-size", type=int, default=0, help="0: Resources.auto() (16 on CPU, 64 on GPU)")
    ap.add_argument("--actors", type=int, default=0, help="actor pool size (0: Resources.auto(), as `assay embed`)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds of the three sides (>= 3)")
    ap.add_argument("--smoke", action="store_true", help="tiny world, 1 round (seconds); needs --out")
    ap.add_argument("--out", default=None, help="JSON path (default bench/embed.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.world = str(Path(args.out).resolve().parent / "embed-smoke-world")
        args.n_images, args.repeats, args.limit = 24, 1, 0
    elif args.repeats < 3:
        ap.error("--repeats must be >= 3 (timings are compared)")
    out = Path(args.out) if args.out else Path(__file__).with_suffix(".json")

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from actors.catalog.world import make_world
    from actors.core.runtime import Resources, device, init_ray
    from actors.core.workspace import Workspace
    from actors.features.embed import embed_pool
    from actors.features.small import SMALL_CHECKPOINT, train_backbone
    from actors.features.store import features_dir

    world = Path(args.world)
    if not (world / "workspace" / "catalog" / "images.parquet").exists():
        make_world(world, seed=0, n_images=args.n_images, workers=2,
                   size=(192, 144) if args.smoke else (512, 384))
    if not Workspace(world / "workspace").exists(SMALL_CHECKPOINT):
        if args.smoke:  # a seeded random-init assay-small: the weights do not change the work measured
            from actors.features.small import SmallConfig, save_small_checkpoint, small_trunk

            torch.manual_seed(0)
            save_small_checkpoint(Workspace(world / "workspace"), small_trunk(SmallConfig()), SmallConfig())
        else:
            train_backbone(Workspace(world / "workspace"), max_minutes=2.5, progress=False)
    ws = subset_workspace(world, args.limit)
    cat = ws.read_table(IMAGES).to_pylist()
    uris = [r["uri"] for r in sorted(cat, key=lambda r: r["image_id"])
            if r["split"] == "pool" and r["status"] != "error"]
    cores = os.cpu_count() or 1
    res = Resources.auto(pool_size=args.actors or None, batch_size=args.batch_size or None)
    dev = device()
    _patient_ray_start()
    for attempt in range(3):  # on a heavily loaded machine the raylet can miss Ray's fixed 30 s start-up wait
        try:
            init_ray(num_cpus=cores)
            break
        except Exception as e:  # Ray raises a bare Exception for the start-up timeout
            import ray

            ray.shutdown()
            if attempt == 2:
                raise
            print(f"Ray did not start ({e}); retrying", flush=True)
            time.sleep(10)
    runs = []
    for r in range(args.repeats):
        if ws.exists(features_dir(STORE)):
            shutil.rmtree(ws.local_path(features_dir(STORE)))
        rep = embed_pool(ws, model="assay-small", name=STORE, resources=res, progress=False)
        dl = dataloader_loop(ws.uri, uris, res.batch_size, dev, cores)
        pc = per_core_loop(ws.uri, uris, res.batch_size, dev, cores)
        base = max(dl, pc)
        runs.append({"embed_pool_images_per_s": rep.images_per_s, "embed_pool_steady_images_per_s":
                     rep.steady_images_per_s, "startup_s": rep.startup_s, "dataloader_images_per_s": dl,
                     "per_core_images_per_s": pc, "baseline_images_per_s": base,
                     "baseline": "dataloader" if dl >= pc else "per_core", "ratio": rep.images_per_s / base})
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in runs[-1].items()), flush=True)
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    result = {
        "smoke": args.smoke, "command": "python bench/embed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": dev, "cores": cores, "images": len(uris), "backbone": "assay-small", "batch_size": res.batch_size,
        "actors": res.pool_size, "repeats": args.repeats,
        **{k: _stats([x[k] for x in runs]) for k in keys},
        "baseline_wins": {b: sum(x["baseline"] == b for x in runs) for b in ("dataloader", "per_core")},
        "fmap_bytes_per_image": rep.bytes_per_image,
        "notes": "rounds alternate embed_pool, dataloader, per_core; timings taken on a shared 2-core machine with "
                 "other engineers' jobs running are noisy: see min/max and every run",
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
