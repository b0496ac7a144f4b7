"""Benchmark: `assay embed` on the default backbone against the fastest plain loop of the same trunk, and the CPU's limit.

Sides, each in a fresh process per round, on the same images, rounds alternating (``--repeats`` ≥ 3) so machine
noise hits all alike; imports are outside every timing, model loading and worker start-up inside:

* ``ray``: :func:`~actors.features.embed.embed_pool` on a new local Ray instance (``assay embed --ray``): actors
  (``Resources.auto()``) decode, run the trunk, PQ-encode and write zstd Parquet shards; the driver commits the
  manifest. Ray's own start (``init_ray``) is timed apart (``ray_init_s``) and left out of images/s.
* ``in_process``: the same function with ``local=True`` (``assay embed --local``): one process, the next batch
  decoded on a thread while the trunk runs on all cores.
* ``dataloader``: the plain loop a team would write: a ``torch.utils.data.DataLoader`` with one decode worker per
  core stacking float batches, the trunk in ONNX Runtime on all cores in the main process, fp16 output, nothing
  written.
* ``per_core``: one single-threaded process per core, each decoding its share and running the trunk in ONNX Runtime
  (1 thread), fp16 output, nothing written.
* ``torch_dataloader`` (the first ``--torch-images`` images only): the DataLoader loop with the trunk in PyTorch,
  channels-last, all cores: what the product ran before ONNX Runtime.

The baseline of a round is the faster of ``dataloader`` and ``per_core``. Reported: every round; the median, min and
max of each side's images/s and of each product path / baseline; the break-even size above which a cold Ray start
pays for itself over in-process (Ray start included); the trunk's GFLOP per image (``torch.utils.flop_counter``)
against the best fp32 matmul / 3×3 convolution throughput measured on these cores (all threads): the CPU's limit in
images/s and each side's fraction of it; peak RSS of each side (Ray: the driver and the largest actor); the load
average before and after. Writes ``bench/embed.json`` and ``bench/embed.md``.

    python bench/embed.py --world /tmp/eb/w2k --repeats 3      # a 2,000-image default world, every split
    python bench/embed.py --smoke --out /tmp/embed.json         # seconds: a tiny world, 1 round
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STORE = "bench-embed"
PLAIN = ("dataloader", "per_core")


def _peak_rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _trunk(threads: int, runtime: str):
    """(callable B×3×H×W float tensor -> features, extractor name): the default backbone's trunk."""
    import torch

    from actors.features.backbones import get_backbone
    from actors.features.embed import DEFAULT_BACKBONE, DEFAULT_BACKBONE_CFG
    from actors.features.onnx_trunk import OnnxTrunk

    torch.set_num_threads(threads)
    ext = get_backbone(DEFAULT_BACKBONE, **DEFAULT_BACKBONE_CFG).eval()
    if runtime == "onnxruntime":
        return OnnxTrunk(ext, threads=threads)
    ext = ext.to(memory_format=torch.channels_last)

    def run(x):
        with torch.no_grad():
            return ext(x.contiguous(memory_format=torch.channels_last))
    return run


class _Decoded:
    """Dataset: uri -> 3×H×W float tensor in [0, 1] (decoded and converted in the loader's worker)."""

    def __init__(self, uris: list[str]) -> None:
        self.uris = uris

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int):
        import torch

        from actors.core.images import load_image

        return torch.from_numpy(load_image(self.uris[i])).permute(2, 0, 1).float().div_(255)


def _collate(items):
    """Stack same-size images (the world's images share one size); lists of single images otherwise."""
    import torch

    shapes = {tuple(t.shape) for t in items}
    return [torch.stack(items)] if len(shapes) == 1 else [t[None] for t in items]


def _dataloader(uris: list[str], batch_size: int, cores: int, runtime: str) -> dict:
    import torch

    t0 = time.perf_counter()
    trunk = _trunk(cores, runtime)
    dl = torch.utils.data.DataLoader(_Decoded(uris), batch_size=batch_size, num_workers=cores, collate_fn=_collate,
                                     prefetch_factor=2, multiprocessing_context="spawn")
    n, first = 0, None
    for batch in dl:
        for x in batch:
            n += len(trunk(x).half().numpy())
        first = first or (n, time.perf_counter())
    end = time.perf_counter()
    secs = end - t0
    return {"images": n, "seconds": secs, "images_per_s": n / secs, "peak_rss_mib": _peak_rss_mib(),
            "startup_s": first[1] - t0, "steady_images_per_s": (n - first[0]) / (end - first[1])}


def _per_core_worker(args: tuple[list[str], int]) -> tuple[int, float]:
    import torch

    from actors.core.images import load_image

    uris, batch_size = args
    t0 = time.perf_counter()
    trunk = _trunk(1, "onnxruntime")
    n, first = 0, None
    for i in range(0, len(uris), batch_size):
        x = torch.stack([torch.from_numpy(load_image(u)).permute(2, 0, 1).float().div_(255)
                         for u in uris[i:i + batch_size]])
        n += len(trunk(x).half().numpy())
        first = first or (n, time.perf_counter())
    end = time.perf_counter()
    return n, _peak_rss_mib(), first[1] - t0, (n - first[0]) / max(end - first[1], 1e-9)


def _per_core(uris: list[str], batch_size: int, cores: int) -> dict:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        out = list(pool.map(_per_core_worker, [(uris[k::cores], batch_size) for k in range(cores)]))
    secs = time.perf_counter() - t0
    n = sum(o[0] for o in out)
    return {"images": n, "seconds": secs, "images_per_s": n / secs, "peak_rss_mib": max(o[1] for o in out),
            "startup_s": max(o[2] for o in out), "steady_images_per_s": sum(o[3] for o in out)}


def _raylet_workers_peak_mib() -> float:
    """Largest peak RSS among this Ray instance's worker processes (``ray::…``), MiB."""
    import ray

    from bench.embed_scale import _descendants, _rss_kib

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    peaks = [_rss_kib(pid, "VmHWM") for pid in _descendants(raylet)
             if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")]
    return max(peaks, default=0) / 1024


def _product(ws_uri: str, local: bool) -> dict:
    """``assay embed --local`` / ``--ray`` on the workspace's images (a fresh store)."""
    from actors.core.runtime import init_ray
    from actors.features.embed import embed_pool

    out: dict = {}
    if not local:
        t0 = time.perf_counter()
        init_ray()
        out["ray_init_s"] = time.perf_counter() - t0
    rep = embed_pool(ws_uri, name=STORE, splits=None, local=local, progress=False)
    out.update(images=rep.n_embedded, seconds=rep.seconds, images_per_s=rep.n_embedded / rep.seconds,
               startup_s=rep.startup_s, steady_images_per_s=rep.steady_images_per_s, mode=rep.mode,
               peak_rss_mib=_peak_rss_mib(), bytes_per_image=rep.bytes_per_image, codec=rep.codec)
    if not local:
        out["actor_peak_rss_mib"] = _raylet_workers_peak_mib()
        import ray

        ray.shutdown()
    return out


def _side(args: tuple) -> dict:
    """Run one side in this (fresh) process; imports done before the side's own timing starts."""
    side, ws_uri, uris, batch_size, cores = args
    import torch  # noqa: F401 - imported before timing, as for every side

    import actors.features.embed  # noqa: F401
    import onnxruntime  # noqa: F401

    if side in ("ray", "in_process"):
        import ray  # noqa: F401

        return _product(ws_uri, local=side == "in_process")
    if side == "dataloader":
        return _dataloader(uris, batch_size, cores, "onnxruntime")
    if side == "torch_dataloader":
        return _dataloader(uris, batch_size, cores, "torch")
    if side == "per_core":
        return _per_core(uris, batch_size, cores)
    raise ValueError(side)


def run_side(side: str, ws_uri: str, uris: list[str], batch_size: int, cores: int) -> dict:
    """One side in a fresh spawned process (its own imports, memory and threads)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # not daemonic: it may start workers
        return pool.submit(_side, (side, ws_uri, uris, batch_size, cores)).result()


def cpu_limit(hw: tuple[int, int], cores: int) -> dict:
    """The trunk's GFLOP per image at ``hw`` and the best measured fp32 GFLOP/s of these cores (matmul, 3×3 conv)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from actors.features.backbones import get_backbone
    from actors.features.embed import DEFAULT_BACKBONE, DEFAULT_BACKBONE_CFG

    torch.set_num_threads(cores)
    ext = get_backbone(DEFAULT_BACKBONE, **DEFAULT_BACKBONE_CFG).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        ext(torch.rand(1, 3, *hw))
    gflop = fc.get_total_flops() / 1e9

    def best(fn, flop: float, reps: int = 5) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return flop / min(ts) / 1e9

    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    matmul = best(lambda: a @ b, 2 * 2048 ** 3)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.rand(8, 256, 64, 64)
    with torch.no_grad():
        conv_gf = best(lambda: conv(x), 2 * 8 * 256 * 256 * 9 * 64 * 64)
    peak = max(matmul, conv_gf)
    return {"trunk_gflop_per_image": gflop, "input_hw": list(hw), "matmul_gflop_s": matmul, "conv3x3_gflop_s": conv_gf,
            "peak_gflop_s": peak, "limit_images_per_s": peak / gflop, "threads": cores}


def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and x == x]
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs))} if xs else {}


def break_even(ray: dict, local: dict, shard: int) -> float:
    """Images above which a cold Ray start (its init included) finishes sooner than in-process, from the two runs'
    start-up (call -> first shard committed) and steady rates; inf when Ray's steady rate is not the higher."""
    r_ray, r_loc = ray["steady_images_per_s"], local["steady_images_per_s"]
    if not (r_ray > r_loc > 0):
        return math.inf
    extra = ray["ray_init_s"] + ray["startup_s"] - local["startup_s"]
    return shard + max(0.0, extra) / (1 / r_loc - 1 / r_ray)


def subset_workspace(world: Path, limit: int):
    """A workspace holding the first ``limit`` images (every split) of the world's catalog."""
    from actors.catalog.schema import IMAGES
    from actors.core.workspace import Workspace

    src = Workspace(world / "workspace")
    if not limit:
        return src
    ws = Workspace(world / f"bench-embed-{limit}")
    if not ws.exists(IMAGES):
        ws.write_table(IMAGES, src.read_table(IMAGES).sort_by("image_id").slice(0, limit))
    return ws


def trunk_runtimes(uris: list[str], cores: int, batch: int = 16, calib: int = 32) -> dict:
    """Seconds per image of the default trunk alone (decoded images, batch ``batch``, all cores; best of 3) under
    PyTorch channels-last, ``torch.compile``, ONNX Runtime fp32 and ONNX Runtime int8 (static QDQ, per-channel
    weights, calibrated on ``calib`` other images of the world), and how close the int8 cells are to fp32 (median
    cosine over every cell). The int8 trunk's effect on targeted selection is measured by
    ``bench/targeted_selection.py --int8-trunk`` (kept within 0.01); it is not the product's default yet."""
    import warnings

    import torch

    from actors.core.images import load_image
    from actors.features.backbones import get_backbone
    from actors.features.embed import DEFAULT_BACKBONE, DEFAULT_BACKBONE_CFG
    from actors.features.onnx_trunk import OnnxTrunk, quantize_int8

    torch.set_num_threads(cores)
    ext = get_backbone(DEFAULT_BACKBONE, **DEFAULT_BACKBONE_CFG).eval()
    ims = [torch.from_numpy(load_image(u)).permute(2, 0, 1).float().div_(255) for u in uris[:batch + calib]]
    x = torch.stack(ims[:batch])

    def best(fn) -> float:
        fn()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts) / batch

    out: dict = {"batch": batch, "threads": cores, "input_hw": list(x.shape[-2:])}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl = ext.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        ref = cl(xc).numpy()
        out["torch_channels_last_s"] = best(lambda: cl(xc))
        t = time.perf_counter()
        compiled = torch.compile(ext)
        compiled(xc)
        out["torch_compile_warmup_s"] = time.perf_counter() - t
        out["torch_compile_s"] = best(lambda: compiled(xc))
    fp32 = OnnxTrunk(ext, threads=cores)
    out["onnxruntime_fp32_s"] = best(lambda: fp32(x))
    int8 = OnnxTrunk(None, cores, model=quantize_int8(fp32.model, (im[None].numpy() for im in ims[batch:])))
    out["onnxruntime_int8_s"] = best(lambda: int8(x))
    y = int8(x).numpy()
    cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    out["int8_cell_cosine_median"] = float(np.median(cos))
    out["int8_cell_cosine_p5"] = float(np.percentile(cos, 5))
    return out


def markdown(result: dict) -> str:
    s, lim = result["summary"], result["cpu_limit"]
    lines = [f"# Embedding throughput ({result['images']:,} images, {result['repeats']} alternating rounds)", "",
             f"`{result['command']}`; load average before / after {result['load_before'][0]:.2f} / "
             f"{result['load_after'][0]:.2f}. Trunk: {lim['trunk_gflop_per_image']:.2f} GFLOP per "
             f"{lim['input_hw'][1]}×{lim['input_hw'][0]} image; these cores' best measured fp32 throughput "
             f"{lim['peak_gflop_s']:.0f} GFLOP/s (matmul {lim['matmul_gflop_s']:.0f}, 3×3 conv "
             f"{lim['conv3x3_gflop_s']:.0f}): a limit of {lim['limit_images_per_s']:.1f} images/s.", "",
             "| side | images/s median (min–max) | / baseline | of the CPU limit | start-up s | after it, images/s | "
             "/ baseline after start-up | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for side in result["sides"]:
        st = s[f"{side}_images_per_s"]
        ratio = s.get(f"{side}_vs_baseline") or {}
        lines.append(f"| {side} | {st['median']:.1f} ({st['min']:.1f}–{st['max']:.1f}) | "
                     f"{ratio.get('median', math.nan):.2f} | {st['median'] / lim['limit_images_per_s']:.0%} | "
                     f"{s[f'{side}_startup_s'].get('median', math.nan):.1f} | "
                     f"{s[f'{side}_steady_images_per_s'].get('median', math.nan):.1f} | "
                     f"{(s.get(f'{side}_steady_vs_baseline') or {}).get('median', math.nan):.2f} | "
                     f"{s[f'{side}_peak_rss_mib']['median']:.0f} |")
    def m(key: str, stat: str = "median") -> float:
        return s.get(key, {}).get(stat, math.nan)

    lines += ["", f"Ray's own start (not in the table): {m('ray_init_s'):.1f} s (median). Start-up: until the first "
              "shard (256 images) is written for Assay's paths, the first batch for the plain loops (model load and "
              "worker start included). Break-even for a cold Ray start over in-process: "
              f"{m('break_even_images'):,.0f} images ({m('break_even_images', 'min'):,.0f}–"
              f"{m('break_even_images', 'max'):,.0f}).", ""]
    rt = result.get("trunk_runtimes")
    if rt:
        ms = {k: 1000 * rt[f"{k}_s"] for k in ("torch_channels_last", "torch_compile", "onnxruntime_fp32",
                                                   "onnxruntime_int8")}
        lines += [f"The trunk alone (`--runtimes`), ms per image, batch {rt['batch']}, {rt['threads']} threads: PyTorch "
                  f"channels-last {ms['torch_channels_last']:.1f}, torch.compile {ms['torch_compile']:.1f} (after "
                  f"{rt['torch_compile_warmup_s']:.0f} s of compiling), ONNX Runtime fp32 {ms['onnxruntime_fp32']:.1f}, "
                  f"ONNX Runtime int8 {ms['onnxruntime_int8']:.1f} (cells' cosine to fp32: median "
                  f"{rt['int8_cell_cosine_median']:.3f}, 5th percentile {rt['int8_cell_cosine_p5']:.3f}; not shipped "
                  "until its targeted-selection recall is measured).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="/tmp/assay_world2k", help="world folder (generated when empty)")
    ap.add_argument("--n-images", type=int, default=2000, help="world size when it has to be generated")
    ap.add_argument("--limit", type=int, default=0, help="embed only the first N catalog images (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds (>= 3)")
    ap.add_argument("--torch-images", type=int, default=200, help="images for the PyTorch reference loop")
    ap.add_argument("--smoke", action="store_true", help="tiny world, 1 round (seconds); needs --out")
    ap.add_argument("--out", default=None, help="JSON path (default bench/embed.json, and .md beside it)")
    ap.add_argument("--runtimes", action="store_true",
                    help="only time the trunk under each runtime and add it to the existing JSON (trunk_runtimes)")
    args = ap.parse_args(argv)
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.world = str(Path(args.out).resolve().parent / "embed-smoke-world")
        args.n_images, args.repeats, args.limit, args.torch_images = 24, 1, 0, 8
    elif args.repeats < 3:
        ap.error("--repeats must be >= 3 (timings are compared)")
    out = Path(args.out) if args.out else Path(__file__).with_suffix(".json")

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from actors.catalog.schema import IMAGES
    from actors.catalog.world import make_world
    from actors.core.images import load_image
    from actors.core.runtime import IN_PROCESS_BELOW, Resources, cpu_count
    from actors.features.store import features_dir

    world = Path(args.world)
    if not (world / "workspace" / "catalog" / "images.parquet").exists():
        make_world(world, seed=1, n_images=args.n_images, workers=2, size=(192, 144) if args.smoke else (512, 384))
    ws = subset_workspace(world, args.limit)
    uris = [r["uri"] for r in sorted(ws.read_table(IMAGES).to_pylist(), key=lambda r: r["image_id"])
            if r["status"] != "error"]
    cores = cpu_count()
    if args.runtimes:
        result = json.loads(out.read_text())
        result["trunk_runtimes"] = {"command": "python bench/embed.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "load_before": os.getloadavg()[0],
            **trunk_runtimes(uris, cores)}
        print(json.dumps(result["trunk_runtimes"], indent=1))
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        return
    res = Resources.auto()
    hw = load_image(uris[0]).shape[:2]
    load_before = list(os.getloadavg())
    limit = cpu_limit(tuple(hw), cores)
    sides = ["ray", "in_process", "dataloader", "per_core", "torch_dataloader"]
    runs = []
    for r in range(args.repeats):
        row: dict = {}
        for side in sides:
            if side in ("ray", "in_process") and ws.exists(features_dir(STORE)):
                shutil.rmtree(ws.local_path(features_dir(STORE)))
            some = uris[:args.torch_images] if side == "torch_dataloader" else uris
            row[side] = run_side(side, ws.uri, some, res.batch_size, cores)
        base = max(row[p]["images_per_s"] for p in PLAIN)
        row["baseline"] = max(PLAIN, key=lambda p: row[p]["images_per_s"])
        steady = max(row[p]["steady_images_per_s"] for p in PLAIN)
        for side in sides:
            row[side]["vs_baseline"] = row[side]["images_per_s"] / base
            row[side]["steady_vs_baseline"] = row[side]["steady_images_per_s"] / steady
        be = break_even(row["ray"], row["in_process"], 256)
        row["break_even_images"] = be if math.isfinite(be) else None  # None: Ray's steady rate was not the higher
        runs.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{s} {row[s]['images_per_s']:.1f} img/s ({row[s]['vs_baseline']:.2f}x)"
                                             for s in sides)
              + f"; Ray init {row['ray']['ray_init_s']:.1f} s; break-even {be:,.0f} images",
              flush=True)
    summary = {}
    for side in sides:
        summary[f"{side}_images_per_s"] = _stats([x[side]["images_per_s"] for x in runs])
        summary[f"{side}_vs_baseline"] = _stats([x[side]["vs_baseline"] for x in runs])
        summary[f"{side}_steady_vs_baseline"] = _stats([x[side]["steady_vs_baseline"] for x in runs])
        summary[f"{side}_of_limit"] = _stats([x[side]["images_per_s"] / limit["limit_images_per_s"] for x in runs])
        summary[f"{side}_peak_rss_mib"] = _stats([x[side]["peak_rss_mib"] for x in runs])
        summary[f"{side}_steady_images_per_s"] = _stats([x[side]["steady_images_per_s"] for x in runs])
        summary[f"{side}_startup_s"] = _stats([x[side]["startup_s"] for x in runs])
    summary["baseline_images_per_s"] = _stats([max(x[p]["images_per_s"] for p in PLAIN) for x in runs])
    summary["baseline_of_limit"] = _stats([max(x[p]["images_per_s"] for p in PLAIN) / limit["limit_images_per_s"]
                                           for x in runs])
    summary["ray_actor_peak_rss_mib"] = _stats([x["ray"]["actor_peak_rss_mib"] for x in runs])
    summary["ray_init_s"] = _stats([x["ray"]["ray_init_s"] for x in runs])
    summary["baseline_steady_images_per_s"] = _stats([max(x[p]["steady_images_per_s"] for p in PLAIN) for x in runs])
    summary["ray_with_init_images_per_s"] = _stats([x["ray"]["images"] / (x["ray"]["seconds"] + x["ray"]["ray_init_s"])
                                                    for x in runs])
    summary["onnx_vs_torch_dataloader"] = _stats([x["dataloader"]["images_per_s"] / x["torch_dataloader"]["images_per_s"]
                                                  for x in runs])
    summary["break_even_images"] = _stats([x["break_even_images"] for x in runs])
    summary["baseline_wins"] = {p: sum(x["baseline"] == p for x in runs) for p in PLAIN}
    default = "ray" if len(uris) >= IN_PROCESS_BELOW else "in_process"
    summary["default_path"] = {"side": default, "in_process_below": IN_PROCESS_BELOW,
                               "vs_baseline": summary[f"{default}_vs_baseline"],
                               "steady_vs_baseline": summary[f"{default}_steady_vs_baseline"]}
    result = {
        "smoke": args.smoke, "command": "python bench/embed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": "cpu", "cores": cores, "images": len(uris), "image_hw": list(hw), "backbone": "efficientnet-lite0",
        "backbone_cfg": {"stride": 16}, "batch_size": res.batch_size, "actors": res.pool_size,
        "repeats": args.repeats, "torch_images": args.torch_images, "sides": sides, "cpu_limit": limit,
        "load_before": load_before, "load_after": list(os.getloadavg()), "summary": summary,
        "notes": "each side in a fresh process per round, rounds alternate; imports outside the timings, model load "
                 "and worker start inside; Ray's own start (ray_init_s) apart. baseline = the faster of dataloader "
                 "and per_core (plain loops, trunk in ONNX Runtime, fp16 output, nothing written). torch_dataloader "
                 "runs the first torch_images images only.",
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1, default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
