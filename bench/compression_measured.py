"""Compression at a budget met in MEASURED latency: latency-aware variants vs Torch-Pruning magnitude pruning at
equal measured ONNX Runtime latency, then fine-tuned on every training image.

Three phases (each resumable from ``--cache``), so that timing runs alone and at normal priority:

* ``search`` (run it under ``flock /tmp/team/timing.lock``): the LUT (workspace cache), Taylor importance on
  ``--taylor`` training images (cached), the whole-graph calibration (:mod:`actors.compression.calibrate`), then
  for every latency-aware variant (LUT raw/calibrated × importance normalisation × minimum keep fraction) the
  measured outer loop to ``--target`` × the original's ONNX Runtime latency; the pre-fine-tuning mAP@.5 of each on
  ``--select`` *training* images (the variant to fine-tune is chosen on those, never on validation) and on the
  validation images; Torch-Pruning's MagnitudePruner with its ratio bisected to the chosen variant's measured ratio.
* ``finetune`` (run it niced): the chosen variant and the magnitude baseline fine-tuned identically
  (``FinetuneConfig``: detection loss + distillation) for ``--epochs`` on every training image; a checkpoint per
  epoch in the workspace (a killed run resumes).
* ``measure`` (under the timing lock): BN folded, exported, int8 (ONNX Runtime static QDQ) — every model timed in
  alternating rounds (``--rounds`` × ``--runs``, 1 thread) and evaluated (mAP@.5, mAP@[.5:.95]) on the validation
  split through ONNX Runtime.

Writes ``bench/<name>.json`` / ``.md`` (``--name``, default ``compression_measured``) after every phase.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = {  # name: (LUT, importance, normalisation, min keep fraction)
    "raw-lut/taylor": ("raw", "taylor", "none", 0.125),
    "calibrated/taylor": ("calibrated", "taylor", "none", 0.125),
    "calibrated/taylor-mean": ("calibrated", "taylor", "mean", 0.125),
    "calibrated/taylor-mean/keep0.35": ("calibrated", "taylor", "mean", 0.35),
    "calibrated/l2-mean": ("calibrated", "magnitude", "mean", 0.125),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", default="/tmp/assay-bench-compression/world-5-600-40/workspace")
    p.add_argument("--run", default="bench5")
    p.add_argument("--phase", choices=("search", "finetune", "measure", "all"), default="all")
    p.add_argument("--target", type=float, default=0.5, help="measured latency / the original's")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--taylor", type=int, default=16)
    p.add_argument("--select", type=int, default=40, help="training images the variant is chosen on")
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--pre-val", type=int, default=40, help="validation images of the pre-fine-tuning mAP")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ft-lr", type=float, default=5e-4)
    p.add_argument("--distill", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (LUT, search and timing)")
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--search-runs", type=int, default=10)
    p.add_argument("--search-rounds", type=int, default=3)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--stat", choices=("p50", "min", "paired"), default="paired",
                   help="per-round statistic the search compares (min: steadier on a shared machine)")
    p.add_argument("--bn-recal", type=int, default=64,
                   help="training images the BN statistics of every pruned model are re-estimated on (0: none)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=str(ROOT / "bench"))
    p.add_argument("--name", default="compression_measured")
    args = p.parse_args(argv)
    cache = Path(args.cache or Path(tempfile.gettempdir()) / f"assay-bench-{args.name}-{args.target:g}")
    cache.mkdir(parents=True, exist_ok=True)
    state_path = cache / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state["setup"] = {k: v for k, v in vars(args).items()}
    phases = ("search", "finetune", "measure") if args.phase == "all" else (args.phase,)
    for ph in phases:
        torch.set_num_threads(args.train_threads if ph == "finetune" else args.threads)
        globals()[f"phase_{ph}"](args, cache, state)
        state_path.write_text(json.dumps(state, indent=1, default=float))
        write(args, state)
    return state


def context(args: argparse.Namespace) -> dict:
    from actors.compression.finetune import load_split
    from actors.compression.net import tensor_module
    from actors.core.workspace import Workspace
    from actors.detection.train import load_detector

    ws = Workspace(args.workspace)
    det = load_detector(ws, f"runs/{args.run}/models/detector.pt")
    val = load_split(ws, "val", list(det.classes), args.max_val)
    return {"ws": ws, "det": det, "base": tensor_module(det), "val": val, "hw": val.hw(), "classes": list(det.classes)}


def phase_search(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.detector import distill_loss
    from actors.compression.calibrate import (calibrate_lut, magnitude_to_measured, plan_to_measured,
                                              profile_convs, ratio_meter)
    from actors.compression.export import save_compressed
    from actors.compression.finetune import evaluate_outputs, load_split, recalibrate_bn, torch_runner
    from actors.compression.latency import build_lut, device_key, load_cached, ort_timer, save_cached
    from actors.compression.net import final_layers
    from actors.compression.prune import group_scores, latency_aware_prune, normalize_scores
    from actors.compression.report import _taylor_loss, timed
    from actors.compression.export import export_onnx, onnx_session

    c = context(args)
    base, hw, det = c["base"], c["hw"], c["det"]
    example = torch.rand(1, 3, *hw)
    key = device_key("cpu") + "-onnxruntime"
    lut = build_lut(base, hw, device=key, cache=load_cached(c["ws"], key), timer=ort_timer(threads=args.threads))
    save_cached(c["ws"], lut)
    sel = load_split(c["ws"], "train", c["classes"], max(args.select, args.taylor))
    scores = {}
    for imp in sorted({VARIANTS[v][1] for v in args.variants.split(",")}):
        f = cache / f"scores-{imp}.npz"
        if not f.exists():
            t0 = time.monotonic()
            s = group_scores(copy.deepcopy(base), example, final_layers(base), imp,
                             _taylor_loss(sel, args.taylor) if imp == "taylor" else None)
            np.savez(f, **{k.replace(".", "/"): v for k, v in s.items()})
            log(f"{imp} importance: {time.monotonic() - t0:.0f} s")
        z = np.load(f)
        scores[imp] = {k.replace("/", "."): z[k] for k in z.files}
    ref = onnx_session(export_onnx(base, str(cache / "original.onnx"), hw), args.threads)
    whole = timed({"original": ref}, np.random.rand(1, 3, *hw).astype(np.float32), args.search_runs,
                  args.search_rounds)["original"]["p50"]
    prof = profile_convs(base, hw, threads=args.threads, workdir=str(cache))
    luts = {"raw": lut, "calibrated": calibrate_lut(lut, prof, whole)}
    state["calibration"] = {"whole_ms": whole, "raw_lut_full_ms": lut.total_ms(),
                            "profile_conv_ms": prof["convs"], "profile_other_ms": prof["other_ms"],
                            "unmapped": prof["unmapped"], "scales": luts["calibrated"].scale,
                            "offset_ms": luts["calibrated"].offset_ms}
    measure = ratio_meter(base, hw, threads=args.threads, runs=args.search_runs, rounds=args.search_rounds,
                          stat=args.stat, workdir=str(cache))
    pre_val = load_split(c["ws"], "val", c["classes"], args.pre_val)
    recal = load_split(c["ws"], "train", c["classes"], args.bn_recal).images if args.bn_recal else []

    def evaluate(net, info):  # pre-fine-tuning accuracy, then the BN statistics re-estimated (kept for FT)
        info["map50_select_train_raw"] = evaluate_outputs(torch_runner(net), net.head, sel_split,
                                                          c["classes"])["map50"]
        info["bn_recalibrated"] = recalibrate_bn(net, recal)
        info["map50_select_train"] = evaluate_outputs(torch_runner(net), net.head, sel_split, c["classes"])["map50"]
        info["map50_val_before_ft"] = evaluate_outputs(torch_runner(net), net.head, pre_val, c["classes"])["map50"]
        with torch.no_grad():  # a continuous proxy when every pruned model's mAP is ~0 before fine-tuning
            info["distill_select_train"] = float(np.mean([float(distill_loss(net(x), base(x)))
                                                          for x in sel_split.images]))
    sel_split = load_split(c["ws"], "train", c["classes"], args.select)
    state.setdefault("variants", {})
    for name in args.variants.split(","):
        lut_kind, imp, norm, min_keep = VARIANTS[name]
        sc = normalize_scores(scores[imp], norm)
        t0 = time.monotonic()

        def prune(net, b, lut=luts[lut_kind], sc=sc, min_keep=min_keep):
            return latency_aware_prune(net, example, lut, b, ignored=final_layers(net), importance=imp, scores=sc,
                                       min_keep=min_keep)
        net, plan, hist = plan_to_measured(lambda: copy.deepcopy(base), prune, args.target, measure, log=log)
        info = {"lut": lut_kind, "importance": imp, "normalisation": norm, "min_keep": min_keep,
                "search": hist, "search_seconds": time.monotonic() - t0, "plan": plan.to_dict()}
        info["measured_ratio"] = measure(net)
        info["measured_ms"] = dict(measure.last)
        evaluate(net, info)
        save_compressed(net, det, str(cache / f"la-{name.replace('/', '_')}.pt"), folded=False)
        state["variants"][name] = info
        log(f"{name}: ratio {info['measured_ratio']:.3f}, mAP@.5 before FT train-select "
            f"{info['map50_select_train']:.3f} / val {info['map50_val_before_ft']:.3f}")
    chosen = max((v for v in args.variants.split(",")),  # mAP first; then the lower distillation loss
                 key=lambda v: (round(state["variants"][v]["map50_select_train"], 3),
                                -state["variants"][v]["distill_select_train"]))
    state["chosen"] = chosen
    r_la = state["variants"][chosen]["measured_ratio"]
    mag, ratio, hist = magnitude_to_measured(lambda: copy.deepcopy(base), example, r_la, measure,
                                             ignored=final_layers, log=log)
    state["magnitude"] = {"ratio": ratio, "search": hist, "matched_to": chosen, "target_ratio": r_la,
                          "measured_ratio": measure(mag), "measured_ms": dict(measure.last)}
    evaluate(mag, state["magnitude"])
    save_compressed(mag, det, str(cache / "magnitude.pt"), folded=False)
    state["loadavg_search"] = list(os.getloadavg())
    log(f"chosen {chosen} (ratio {r_la:.3f}); magnitude ratio {ratio:.3f} measured "
        f"{state['magnitude']['measured_ratio']:.3f}")


def _models(state: dict) -> dict[str, str]:
    return {"latency-aware": f"la-{state['chosen'].replace('/', '_')}", "magnitude": "magnitude"}


def phase_finetune(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.export import load_compressed, save_compressed
    from actors.compression.finetune import FinetuneConfig, finetune, load_split

    c = context(args)
    train = load_split(c["ws"], "train", c["classes"], args.max_train)
    ftc = FinetuneConfig(epochs=args.epochs, lr=args.ft_lr, distill=args.distill)
    state.setdefault("finetune", {})
    for kind, stem in _models(state).items():
        out = cache / f"{stem}.ft{args.epochs}.pt"
        if out.exists():
            continue
        net, _ = load_compressed(str(cache / f"{stem}.pt"))
        ckpt = f"runs/{args.run}/compress-bench/{args.name}-{stem}.pt"
        log(f"fine-tuning {kind} ({stem}) {args.epochs} epochs on {len(train)} training images")
        ft = finetune(net.requires_grad_(True), train, ftc, teacher=c["base"], source=c["det"], ws=c["ws"],
                      ckpt=ckpt, progress=None)
        save_compressed(net, c["det"], str(out), folded=False)
        state["finetune"][kind] = {**ft, "config": vars(ftc), "n_train": len(train)}
        log(f"{kind}: losses {[round(x, 3) for x in ft['losses']]}, {ft['seconds']:.0f} s")


def phase_measure(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.export import load_compressed

    c = context(args)
    nets = {"original": c["base"]}
    for kind, stem in _models(state).items():
        nets[kind] = load_compressed(str(cache / f"{stem}.ft{args.epochs}.pt"))[0]
    measure_nets(nets, c, cache, args, state)


def measure_nets(nets: dict, c: dict, cache: Path, args: argparse.Namespace, state: dict) -> None:
    """Every net of ``nets`` (name -> DenseNet; ``"original"`` first) BN-folded, exported, int8 (static QDQ on
    ``args.calib`` training images), timed in alternating rounds and evaluated on ``c["val"]`` through ONNX
    Runtime; the rows (speed-up and mAP@.5 drop against the original) go into ``state``."""
    from actors.compression.export import export_onnx, onnx_session
    from actors.compression.finetune import evaluate_outputs, load_split, onnx_runner
    from actors.compression.fold import fold_batchnorm
    from actors.compression.quantize import quantize_static
    from actors.compression.report import count, timed

    hw, example = c["hw"], torch.rand(1, 3, *c["hw"])
    calib = [x.numpy() for x in load_split(c["ws"], "train", c["classes"], args.calib).images]
    paths = {}
    for k, net in nets.items():
        folded = copy.deepcopy(net)
        fold_batchnorm(folded, example)
        paths[k] = export_onnx(folded, str(cache / f"m-{k}.onnx"), hw)
        paths[f"{k}+int8"] = quantize_static(paths[k], str(cache / f"m-{k}.int8.onnx"), calib)
    sessions = {k: onnx_session(v, args.threads) for k, v in paths.items()}
    lat = timed(sessions, c["val"].images[0].numpy(), args.runs, args.rounds)
    rows = []
    for k, s in sessions.items():
        net = nets[k.split("+")[0]]
        acc = evaluate_outputs(onnx_runner(s), net.head, c["val"], c["classes"])
        rows.append({"model": k, "latency_ms": lat[k], "map50": acc["map50"], "map": acc["map"],
                     **count(net, hw), "file_bytes": os.path.getsize(paths[k])})
        log(f"{k}: p50 {lat[k]['p50']:.1f} ms, mAP@.5 {acc['map50']:.3f}")
    o = rows[0]
    for r in rows:
        r["speedup"] = o["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["map50_drop_points"] = 100 * (o["map50"] - r["map50"])
    state["rows"], state["n_val"], state["input_hw"] = rows, len(c["val"]), list(hw)
    state["by_model"] = {r["model"]: r for r in rows}
    state["loadavg_measure"] = list(os.getloadavg())
    state["complete"] = True


def write_state(args: argparse.Namespace, state: dict, markdown) -> None:
    """``state`` as ``<args.out>/<args.name>.json`` and its ``markdown(state)`` as ``.md`` (temp file, rename)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(state, indent=1, default=float)), (".md", markdown(state))):
        tmp = out / f".{args.name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{args.name}{suffix}")


def write(args: argparse.Namespace, state: dict) -> None:
    write_state(args, state, markdown)


def markdown(s: dict) -> str:
    st = s["setup"]
    lines = [f"# Compression at a measured latency budget (target {st['target']} of the original)", ""]
    if "calibration" in s:
        cal = s["calibration"]
        lines += [f"Whole-model ONNX Runtime p50 {cal['whole_ms']:.1f} ms vs raw per-layer LUT sum "
                  f"{cal['raw_lut_full_ms']:.1f} ms; calibrated LUT: per-layer scales from the whole-graph profile, "
                  f"offset {cal['offset_ms']:.1f} ms.", "",
                  "| variant (LUT / importance / min keep) | search (budget -> measured ratio) | measured ratio | "
                  "before FT: mAP@.5 train-select raw / BN re-estimated; val; distillation loss |", "|---|---|---|---|"]
        for name, v in s.get("variants", {}).items():
            srch = ", ".join(f"{h['budget']:.2f}->{h['measured']:.2f}" for h in v["search"])
            lines.append(f"| {name} (keep >= {v['min_keep']}) | {srch} | {v['measured_ratio']:.3f} | "
                         f"{100 * v.get('map50_select_train_raw', 0):.1f} / {100 * v['map50_select_train']:.1f}; "
                         f"{100 * v['map50_val_before_ft']:.1f}; distillation loss {v.get('distill_select_train', 0):.3f} |")
        if "magnitude" in s:
            m = s["magnitude"]
            srch = ", ".join(f"{h['ratio']:.2f}->{h['measured']:.2f}" for h in m["search"])
            lines.append(f"| magnitude (Torch-Pruning, ratio {m['ratio']:.3f}) | {srch} | {m['measured_ratio']:.3f} | "
                         f"{100 * m.get('map50_select_train_raw', 0):.1f} / {100 * m['map50_select_train']:.1f}; "
                         f"{100 * m['map50_val_before_ft']:.1f}; distillation loss {m.get('distill_select_train', 0):.3f} |")
        lines += ["", f"Chosen on training images (mAP@.5 after BN re-estimation, then the lower distillation loss to the original): **{s.get('chosen')}**.", ""]
    for k, f in s.get("finetune", {}).items():
        lines.append(f"Fine-tuned {k}: {f['epochs']} epochs on {f['n_train']} training images, losses "
                     f"{', '.join(f'{x:.3f}' for x in f['losses'])} ({f['seconds']:.0f} s).")
    lines += rows_markdown(s)
    return "\n".join(lines) + "\n"


def rows_markdown(s: dict) -> list[str]:
    """The timed models of ``s`` (what :func:`measure_nets` wrote) as Markdown lines; none before the measure phase."""
    if not s.get("rows"):
        return []
    st = s["setup"]
    lines = ["", f"ONNX Runtime CPU, batch 1, {st['threads']} thread, {st['rounds']} alternating rounds x "
             f"{st['runs']} runs; {s['n_val']} validation images; load average at timing "
             f"{s['loadavg_measure'][0]:.2f} (2 shared cores: noisy).", "",
             "| model | p50 ms | spread ms | speed-up | mAP@.5 | drop (pts) | mAP@[.5:.95] | MMACs | params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['model']} | {lat['p50']:.1f} | {lat['spread']:.1f} | {r['speedup']:.2f}x | "
                     f"{100 * r['map50']:.1f} | {r['map50_drop_points']:.1f} | {100 * r['map']:.1f} | "
                     f"{r['macs'] / 1e6:.0f} | {r['params'] / 1e6:.2f} M |")
    return lines


if __name__ == "__main__":
    main()
