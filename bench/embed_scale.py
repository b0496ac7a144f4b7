"""Embedding at pool scale: images/s and peak memory of the driver and of the Ray workers, by pool size.

``embed_pool`` (Ray, one Data pipeline per run, actors writing their shards, the driver committing the manifest)
on synthetic pools of ``--sizes`` images, each size in a fresh Python process with its own local Ray instance, so
every peak is that run's own: the driver's peak RSS (``VmHWM``) and each Ray worker's (``VmHWM`` of every process
under this instance's raylet, read before shutdown). If the driver or the workers held per-image state, their peaks
would grow with the pool; with shards written by the actors they should stay flat.

To fit CPU time on a shared 2-core machine the images are small (``--side``, default 160×120 JPEGs: random
backgrounds with a few shapes) and the backbone is assay-small with random weights (the fast one; the weights do not
change the work done). Pool sizes and every setting are in the JSON.

    python bench/embed_scale.py --work /tmp/embed-scale --sizes 2000 5000 20000     # images (not timed, nice)
    flock /tmp/team/timing.lock python bench/embed_scale.py --work /tmp/embed-scale --sizes 2000 5000 20000
    python bench/embed_scale.py --smoke --out /tmp/embed_scale.json                  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_pool(folder: Path, n: int, size: tuple[int, int]) -> None:
    """``n`` deterministic JPEGs ``img-<k>.jpg`` (skips the ones that exist)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for k in range(n):
        path = folder / f"img-{k:06d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(k)
        base = rng.integers(40, 200, (h // 8, w // 8, 3)).astype(np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x, y, s = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16)), int(rng.integers(6, 16))
            d.rectangle((x, y, x + s, y + s), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        im.save(path, quality=90)


def make_workspace(work: Path, n: int, images: Path) -> str:
    """A workspace whose catalog holds the first ``n`` images (pool split) and a random assay-small."""
    import torch

    from actors.catalog.schema import IMAGES
    from actors.core.workspace import Workspace
    from actors.features.small import SmallConfig, save_small_checkpoint, small_trunk
    from apps.jobs import ingest_step

    full = work / "catalog-all"
    if not (full / "catalog" / "images.parquet").exists():
        ingest_step(str(full), str(images), split="pool", check_headers=False)
    ws = Workspace(work / f"ws-{n}")
    if ws.exists("features"):
        ws.delete("features")
    t = Workspace(full).read_table(IMAGES).sort_by("uri")
    ws.write_table(IMAGES, t.slice(0, n))
    torch.manual_seed(0)
    save_small_checkpoint(ws, small_trunk(SmallConfig()), SmallConfig())
    return ws.uri


def _rss_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(next(x for x in (p / "status").read_text().splitlines() if x.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def one_run(ws: str, pool_size: int, batch_size: int, shard_size: int, threads: int) -> dict:
    """Embed the workspace's pool on a fresh local Ray instance; figures of this run (in this process)."""
    import ray

    from actors.core.runtime import Resources, init_ray
    from actors.features.embed import embed_pool

    init_ray(num_cpus=pool_size, object_store_memory=200 * 2**20)
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    peaks: dict[int, int] = {}
    rep = embed_pool(ws, model="assay-small",
                     resources=Resources(pool_size=pool_size, num_cpus=1, batch_size=batch_size),
                     shard_size=shard_size, progress=False, threads=threads)
    for pid in _descendants(raylet):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if cmd.startswith("ray::"):
            peaks[pid] = _rss_kib(pid, "VmHWM")
    manifest = Path(ws) / "features" / "assay-small" / "_manifest.json"
    out = {"n_images": rep.n_images, "n_embedded": rep.n_embedded, "seconds": rep.seconds,
           "images_per_s": rep.images_per_s, "startup_s": rep.startup_s,
           "steady_images_per_s": rep.steady_images_per_s, "shards": rep.shards_written,
           "bytes_per_image": rep.bytes_per_image, "codec": rep.codec,
           "driver_peak_rss_mib": _rss_kib(os.getpid(), "VmHWM") / 1024,
           "worker_peak_rss_mib_max": max(peaks.values(), default=0) / 1024,
           "worker_peak_rss_mib_sum": sum(peaks.values()) / 1024, "n_worker_processes": len(peaks),
           "manifest_kib": manifest.stat().st_size / 1024}
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/embed-scale")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 20000])
    ap.add_argument("--side", type=int, nargs=2, default=[160, 120], metavar=("W", "H"))
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    ap.add_argument("--images-only", action="store_true", help="make the images and catalogs, time nothing")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one size in this process
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one_run(a.one, a.actors, a.batch_size, a.shard_size, a.threads)))
        return
    if a.smoke:
        a.sizes, a.side, a.shard_size, a.batch_size, a.actors = [40], [64, 48], 16, 8, 1  # one actor: one fewer
        # worker process to start (the plumbing is the same; tests/e2e/test_multinode.py runs a pool of 2)
        a.work = str(Path(a.out).parent / "embed-scale-smoke") if a.out else "/tmp/embed-scale-smoke"
    work = Path(a.work)
    images = work / "images"
    make_pool(images, max(a.sizes), tuple(a.side))
    wss = {n: make_workspace(work, n, images) for n in a.sizes}
    if a.images_only:
        return
    runs = []
    for n in a.sizes:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([sys.executable, __file__, "--one", wss[n], "--actors", str(a.actors), "--batch-size",
                            str(a.batch_size), "--shard-size", str(a.shard_size), "--threads", str(a.threads)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        if r.returncode:
            raise SystemExit(f"run of {n} images failed:\n{r.stderr[-4000:]}")
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{n} images: {runs[-1]['images_per_s']:.1f} img/s, driver peak {runs[-1]['driver_peak_rss_mib']:.0f} "
              f"MiB, worker peak {runs[-1]['worker_peak_rss_mib_max']:.0f} MiB", flush=True)
    res = {"smoke": a.smoke, "sizes": a.sizes, "image_size": a.side, "backbone": "assay-small, random init",
           "actors": a.actors, "num_cpus_per_actor": 1, "threads_per_actor": a.threads, "batch_size": a.batch_size,
           "shard_size": a.shard_size, "runs": runs, "loadavg": os.getloadavg(), "cpu_count": os.cpu_count(),
           "notes": "each size in a fresh process and Ray instance; shared 2-core machine with other engineers' "
                    "jobs running, so images/s is noisy; peaks are VmHWM",
           "command": "python bench/embed_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out or Path(__file__).with_suffix(".json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    lines = ["| images | images/s | steady images/s | start-up s | driver peak RSS MiB | worker peak RSS MiB (max / "
             "sum) | shards | manifest KiB |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['n_images']:,} | {r['images_per_s']:.1f} | {r['steady_images_per_s']:.1f} | "
                     f"{r['startup_s']:.0f} | {r['driver_peak_rss_mib']:.0f} | {r['worker_peak_rss_mib_max']:.0f} / "
                     f"{r['worker_peak_rss_mib_sum']:.0f} | {r['shards']} | {r['manifest_kib']:.0f} |")
    md = (f"{a.actors} actors × 1 CPU, {a.side[0]}×{a.side[1]} JPEGs, assay-small (random init), batch "
          f"{a.batch_size}, shards of {a.shard_size}; load average {res['loadavg']}\n\n" + "\n".join(lines) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
