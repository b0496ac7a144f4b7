"""Compression benchmark: latency–mAP points of the dense-lite0 detector on the embedded world, CPU, one run.

Points: the original; BN-folded; Torch-Pruning's MagnitudePruner (uniform ratio, bisected to the latency-aware
plan's LUT latency); latency-aware (LUT + knapsack, Taylor importance) at several budgets — each pruned model
fine-tuned the same way (``FinetuneConfig``: detection loss + distillation) — each with and without ONNX Runtime
static int8 (per-channel weights, QDQ, MinMax calibration on training images); and the SPIQ-style data-free int8
(simulated in PyTorch: accuracy only).

Latency: ONNX Runtime CPU, batch 1, at the world's image size, ``--threads`` intra-op threads (default 1: the
machine may be shared), all models timed in alternating rounds (``--rounds`` × ``--runs`` calls) in one process;
p50 is the median of the round p50s, ``spread`` is max-min of the round p50s. PyTorch-eager latency of the
original and the BN-folded model is given too (ONNX Runtime folds BN itself, so there they coincide).
Accuracy: mAP@.5 and mAP@[.5:.95] on the validation split, decoded outside the graph by the detector's code.

``python bench/compression.py`` writes ``bench/compression.json`` and ``.md``; ``--smoke`` runs a tiny world into
``--out`` in a few minutes (what ``tests/bench/test_compression_smoke.py`` runs). Pruned models are cached
(weights-only files) in the system temp folder (``<out>/cache/`` for ``--smoke``), so a killed run resumes without
re-pruning; the JSON/Markdown are rewritten after every measured model and say when a run did not finish.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(args: argparse.Namespace) -> tuple[object, str]:
    """The workspace with a trained detector checkpoint (built and trained on first use)."""
    from actors.catalog.world import WorldConfig, make_world
    from actors.core.workspace import Workspace
    from actors.detection.data import FeatureCache, build_data, catalog_rows, labels_by_image
    from actors.detection.models import get_detector
    from actors.detection.train import TrainConfig, train_detector

    CATEGORIES = WorldConfig().categories()  # the default world's (make_world below uses the default classes)

    if args.workspace:
        ws = Workspace(args.workspace)
        return ws, f"runs/{args.run}/models/detector.pt"
    root = Path(args.world_dir or Path(tempfile.gettempdir()) / "assay-bench-compression") / \
        f"world-{args.seed}-{args.images}-{args.detector_epochs}"
    if args.smoke:
        root = Path(args.out) / f"world-{args.seed}"
    if not (root / "world.json").exists():
        w, h = args.size
        make_world(root, seed=args.seed, n_images=args.images, size=(w, h), workers=1,
                   splits=(("train", 0.5), ("val", 0.25), ("pool", 0.25)))
    ws = Workspace(str(root / "workspace"))
    rel = f"runs/{args.run}/models/detector.pt"
    if not ws.exists(rel):
        log("training the detector head (frozen Lite0 trunk, cached features)")
        det = get_detector("dense-lite0", CATEGORIES)
        rows = list(catalog_rows(ws, ["train"]).values())
        data = build_data(det, rows, labels_by_image(ws, [r["image_id"] for r in rows], CATEGORIES),
                          cache=FeatureCache(ws, det))
        train_detector(det, data, TrainConfig(epochs=args.detector_epochs), ws=ws, ckpt=rel)
    return ws, rel


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", help="existing workspace with runs/RUN/models/detector.pt (default: build a world)")
    p.add_argument("--run", default="bench")
    p.add_argument("--seed", type=int, default=5, help="world seed (defaults were tuned on seed 1)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(512, 384))
    p.add_argument("--detector-epochs", type=int, default=24)
    p.add_argument("--budgets", default="0.7,0.5,0.35")
    p.add_argument("--mag-budgets", default=None, help="budgets that get a magnitude baseline (default: all)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per pruned model (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-threads", type=int, default=None,
                   help="torch threads of Taylor scoring and fine-tuning (default: --threads; the LUT and the "
                        "timing keep --threads)")
    p.add_argument("--lut-runtime", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="where the per-layer LUT is timed (the shipped runtime by default)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--taylor", type=int, default=8, help="training images for the Taylor importance")
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "bench"))
    p.add_argument("--name", default="compression")
    p.add_argument("--ft-lr", type=float, default=5e-4, help="fine-tuning learning rate")
    p.add_argument("--distill", type=float, default=1.0, help="distillation weight (0: labels only)")
    p.add_argument("--importance", choices=("taylor", "magnitude"), default="taylor",
                   help="channel importance of the latency-aware plans")
    p.add_argument("--phase", choices=("all", "models", "measure"), default="all",
                   help="models: prune + fine-tune into the cache and stop (run it niced); measure: time and "
                        "evaluate the cached models (run it under the timing lock)")
    p.add_argument("--world-dir", default=None, help="where worlds with trained detectors are kept (default: temp)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.size, args.detector_epochs = 16, (160, 120), 2
        args.budgets, args.epochs, args.runs, args.rounds, args.calib = "0.5", 1, 2, 1, 4
        args.max_train, args.taylor = 4, 2
    return run(args)


def run(args: argparse.Namespace) -> dict:
    from actors.compression.export import export_onnx, load_compressed, onnx_session, save_compressed
    from actors.compression.finetune import (FinetuneConfig, evaluate_outputs, finetune, load_split, onnx_runner,
                                             torch_runner)
    from actors.compression.fold import fold_batchnorm
    from actors.compression.latency import (build_lut, device_key, load_cached, ort_timer, save_cached,
                                            torch_latency)
    from actors.compression.net import final_layers, tensor_module
    from actors.compression.prune import group_scores, latency_aware_prune, lut_ms_of, magnitude_prune_to
    from actors.compression.quantize import fake_quantize, quantize_static, spiq_ranges
    from actors.compression.report import _taylor_loss, count, timed
    from actors.detection.train import load_detector

    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    out = Path(args.out)
    cache = out / "cache" if args.smoke else Path(tempfile.gettempdir()) / \
        f"assay-bench-{args.name}-{args.seed}-{args.images}-{args.detector_epochs}-cache"
    cache.mkdir(parents=True, exist_ok=True)
    ws, rel = prepare(args)
    det = load_detector(ws, rel)
    classes = list(det.classes)
    val = load_split(ws, "val", classes, args.max_val)
    train = load_split(ws, "train", classes, args.max_train)
    calib_split = load_split(ws, "train", classes, max(args.calib, args.taylor))
    hw = val.hw()
    log(f"{len(val)} val / {len(train)} train images at {hw[1]}x{hw[0]}; threads {args.threads}")
    base = tensor_module(det)
    example = torch.rand(1, 3, *hw)
    key = device_key("cpu") + ("-onnxruntime" if args.lut_runtime == "onnxruntime" else "")
    t0 = time.monotonic()
    timer = ort_timer(threads=args.threads) if args.lut_runtime == "onnxruntime" else None
    lut = build_lut(base, hw, device=key, cache=load_cached(ws, key), timer=timer)
    save_cached(ws, lut)
    lut_s = time.monotonic() - t0
    log(f"LUT {key}: {len(lut.entries)} signatures, {lut_s:.0f} s (0 when cached)")
    torch.set_num_threads(args.train_threads or args.threads)

    models: dict[str, dict] = {}
    nets: dict[str, torch.nn.Module] = {}
    folded = copy.deepcopy(base)
    fold = fold_batchnorm(folded, example)
    nets["original"], nets["bn-folded"] = base, folded
    models["original"] = {"kind": "original", "lut_ms": lut_ms_of(base, lut)}
    models["bn-folded"] = {"kind": "folded", "lut_ms": lut_ms_of(folded, lut), "fold_max_abs_diff": fold.max_abs_diff,
                           "folds": len(fold.folded)}
    budgets = [float(b) for b in args.budgets.split(",")]
    mag_budgets = [float(b) for b in (args.mag_budgets or args.budgets).split(",")]
    memo: dict[str, object] = {}

    def taylor_scores():  # once for all budgets, and only when a model is not cached yet
        if "scores" not in memo:
            t0 = time.monotonic()
            memo["scores"] = group_scores(copy.deepcopy(base), example, final_layers(base), "taylor",
                                          _taylor_loss(calib_split, args.taylor))
            log(f"Taylor importance on {args.taylor} training images: {time.monotonic() - t0:.0f} s")
        return memo["scores"]
    ftc = FinetuneConfig(epochs=args.epochs, lr=args.ft_lr, distill=args.distill)

    spiq_for = f"latency-aware-{budgets[len(budgets) // 2]}"

    def tuned(name: str, make) -> torch.nn.Module:
        path = cache / f"{name}.pt"
        if path.exists():
            net, _ = load_compressed(str(path))
            info = json.loads((cache / f"{name}.json").read_text())
        else:
            net, info = make()
            if ftc.epochs > 0:
                info["map50_before_finetune"] = evaluate_outputs(torch_runner(net), net.head, val, classes)["map50"]
            info["finetune"] = finetune(net, train, ftc, teacher=base, source=det)
            info["finetune_config"] = vars(ftc) if not hasattr(ftc, "__dataclass_fields__") else \
                {k: getattr(ftc, k) for k in ftc.__dataclass_fields__}
            ranges = spiq_ranges(net) if name == spiq_for else None  # needs the BN statistics: before folding
            fold_batchnorm(net, example)
            if ranges is not None:
                fq, counts = fake_quantize(net, ranges)
                info["spiq"] = {**evaluate_outputs(torch_runner(fq), net.head, val, classes), **counts}
            save_compressed(net, det, str(path))
            (cache / f"{name}.json").write_text(json.dumps(info))
        models[name] = info
        log(f"{name}: LUT {info['lut_ms']:.1f} ms")
        return net

    for b in budgets:
        def make_la(b=b):
            net = copy.deepcopy(base)
            plan = latency_aware_prune(net, example, lut, b, ignored=final_layers(net), importance=args.importance,
                                       scores=taylor_scores() if args.importance == "taylor" else None)
            return net, {"kind": "latency-aware", "importance": args.importance, "budget": b,
                         "lut_ms": plan.predicted_ms,
                         "feasible": plan.feasible, "plan": plan.to_dict()}
        nets[f"latency-aware-{b}"] = tuned(f"latency-aware-{b}", make_la)
        if b in mag_budgets:
            target = models[f"latency-aware-{b}"]["lut_ms"]

            def make_mag(target=target, b=b):
                net, ratio = magnitude_prune_to(lambda: copy.deepcopy(base), example, lut, target, ignored=final_layers)
                return net, {"kind": "magnitude (Torch-Pruning)", "budget": b, "ratio": ratio,
                             "lut_ms": lut_ms_of(net, lut)}
            nets[f"magnitude-{b}"] = tuned(f"magnitude-{b}", make_mag)

    if args.phase == "models":
        log(f"models cached in {cache}; measure them with --phase measure")
        return {"cache": str(cache), "models": sorted(models)}
    torch.set_num_threads(args.threads)
    log("export + int8 (ONNX Runtime static QDQ, per-channel weights)")
    calib = [x.numpy() for x in calib_split.images[:args.calib]]
    paths = {}
    for name, net in nets.items():
        if name == "original":
            continue  # exported unfolded below: ONNX Runtime folds BN itself
        paths[name] = export_onnx(net, str(cache / f"{name}.onnx"), hw)
        if name != "bn-folded":
            paths[f"{name}+int8"] = quantize_static(paths[name], str(cache / f"{name}.int8.onnx"), calib)
    paths["original"] = export_onnx(base, str(cache / "original.onnx"), hw)
    paths["original+int8"] = quantize_static(paths["bn-folded"], str(cache / "original.int8.onnx"), calib)
    sessions = {k: onnx_session(v, args.threads) for k, v in paths.items()}
    log(f"timing {len(sessions)} models: {args.rounds} rounds x {args.runs} runs")
    lat = timed(sessions, val.images[0].numpy(), args.runs, args.rounds)
    eager = {k: torch_latency(nets[k], hw, runs=max(3, args.runs // 3)) for k in ("original", "bn-folded")}
    log("accuracy")
    rows: list[dict] = []
    fq, counts = fake_quantize(folded, spiq_ranges(base))
    spiq = {"original": {**evaluate_outputs(torch_runner(fq), folded.head, val, classes), **counts}}
    spiq.update({k: v["spiq"] for k, v in models.items() if "spiq" in v})
    order = ["original"] + [k for k in sessions if k != "original"]  # the reference first
    for k in order:
        s = sessions[k]
        base_name = k.split("+")[0]
        head = nets[base_name].head
        acc = evaluate_outputs(onnx_runner(s), head, val, classes)
        info = models.get(base_name, {})
        c = count(nets[base_name], hw)
        rows.append({"model": k, **{kk: v for kk, v in info.items() if kk not in ("plan", "finetune", "spiq")},
                     "int8": k.endswith("+int8"), "latency_ms": lat[k], "map50": acc["map50"], "map": acc["map"],
                     "params": c["params"], "macs": c["macs"], "file_bytes": os.path.getsize(paths[k])})
        log(f"{k}: mAP@.5 {acc['map50']:.3f}, p50 {lat[k]['p50']:.1f} ms")
        write(args, out, rows, key, hw, val, train, lut_s, eager, spiq, models, t_start)
    return write(args, out, rows, key, hw, val, train, lut_s, eager, spiq, models, t_start, final=True)


def write(args, out, rows, key, hw, val, train, lut_s, eager, spiq, models, t_start, final=False) -> dict:
    """Write the JSON + Markdown (after every measured model, so a killed run leaves its points)."""
    o = next(r for r in rows if r["model"] == "original")
    for r in rows:
        r["speedup"] = o["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["map50_drop_points"] = 100 * (o["map50"] - r["map50"])
    result = {"complete": final,"machine": {"cpu": key, "threads": args.threads, "python": platform.python_version(),
                          "torch": torch.__version__, "shared": "2 cores shared with other engineers' jobs: "
                          "timings are noisy (spread per model given)"},
              "setup": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
              "input_hw": list(hw), "n_val": len(val), "n_train": len(train), "lut_seconds": lut_s,
              "eager_ms": eager, "rows": rows, "spiq_data_free": spiq,
              "plans": {k: v.get("plan") for k, v in models.items() if v.get("plan")},
              "seconds": time.monotonic() - t_start, "loadavg": list(os.getloadavg())}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{args.name}.md").write_text(markdown(result))
    if final:
        log(f"wrote {out / args.name}.json/.md in {result['seconds']:.0f} s")
        print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [f"# Compression benchmark ({r['input_hw'][1]}x{r['input_hw'][0]}, {r['n_val']} val images)", "",
             f"ONNX Runtime CPU, batch 1, {r['machine']['threads']} thread(s), `{r['machine']['cpu']}`; "
             f"{r['machine']['shared']}." + ("" if r.get("complete") else " **Partial: the run did not finish.**"),
             "",
             "| model | int8 | LUT ms | p50 ms | p95 ms | spread ms | speed-up | mAP@.5 | drop (pts) | mAP@[.5:.95] "
             "| MMACs | params | mAP@.5 before FT |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lat = x["latency_ms"]
        bft = x.get("map50_before_finetune")
        lines.append(f"| {x['model'].split('+')[0]} | {'yes' if x['int8'] else ''} | {x.get('lut_ms', 0):.1f} | "
                     f"{lat['p50']:.1f} | {lat['p95']:.1f} | {lat['spread']:.1f} | {x['speedup']:.2f}x | "
                     f"{100 * x['map50']:.1f} | {x['map50_drop_points']:.1f} | {100 * x['map']:.1f} | "
                     f"{x['macs'] / 1e6:.0f} | {x['params'] / 1e6:.2f} M | "
                     f"{'' if bft is None else f'{100 * bft:.1f}'} |")
    e = r["eager_ms"]
    lines += ["", f"PyTorch eager p50: original {e['original']['p50']:.1f} ms, "
              f"BN-folded {e['bn-folded']['p50']:.1f} ms.",
              ""]
    for k, v in r["spiq_data_free"].items():
        lines.append(f"Data-free SPIQ-style int8 (simulated) of {k}: mAP@.5 {100 * v['map50']:.1f}, "
                     f"mAP@[.5:.95] {100 * v['map']:.1f} ({v['static_inputs']} convs with static per-channel input "
                     f"ranges, {v['dynamic_inputs']} dynamic).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
