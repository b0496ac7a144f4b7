"""Compression with the trunk distilled back: latency-aware vs Torch-Pruning magnitude pruning at equal MEASURED
latency, both pruned inside the trunk only (the head's input kept), both recovered identically.

Per budget in ``--targets`` (fractions of the original's measured ONNX Runtime latency):

1. ``search`` (timing: run under ``flock /tmp/team/timing.lock``): the ``profile`` LUT (per-layer cost from a
   whole-graph ONNX Runtime profile of the original, scaled by MACs), Taylor importance on ``--taylor`` training
   images, the measured outer loop to the target (:func:`actors.compression.calibrate.plan_to_measured`), then
   Torch-Pruning's ``MagnitudePruner`` with its ratio bisected to the latency-aware model's measured ratio.
2. ``recover`` (niced): for both, BN statistics re-estimated on 64 unlabeled images, the trunk distilled to the
   original trunk's map (:mod:`actors.compression.distill`, ``--steps`` on unlabeled train + pool images, resumable
   checkpoints in the workspace), then the head fine-tuned on the frozen trunk's cached maps (``--head-epochs``,
   the detector's own training loop, labeled training images). mAP@.5 on the validation split after every stage.
3. ``measure`` (timing): every model BN-folded, exported, int8 (ONNX Runtime static QDQ, calibrated on training
   images), timed in alternating rounds (``--rounds`` × ``--runs``, 1 thread) and evaluated through ONNX Runtime.

Writes ``bench/<name>.json`` / ``.md`` after every phase; ``--smoke`` runs every phase on a tiny world in seconds.
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

import torch  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", default="/tmp/assay-bench-compression/world-5-600-40/workspace")
    p.add_argument("--run", default="bench5")
    p.add_argument("--world-seed", type=int, default=None,
                   help="build (or reuse) the 600-image world of this seed with a 40-epoch detector, run benchSEED, "
                        "instead of --workspace/--run (the defaults were tuned on seed 5)")
    p.add_argument("--phase", choices=("search", "recover", "measure", "all"), default="all")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5])
    p.add_argument("--taylor", type=int, default=16)
    p.add_argument("--steps", type=int, default=1500, help="distillation steps")
    p.add_argument("--crop", type=int, nargs=2, default=[128, 192])
    p.add_argument("--unlabeled", type=int, default=1000, help="train + pool images distillation may use")
    p.add_argument("--head-epochs", type=int, default=12)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--search-steps", type=int, default=6)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=str(ROOT / "bench"))
    p.add_argument("--name", default="compression_distilled")
    p.add_argument("--smoke", action="store_true", help="a tiny world, every phase, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args = _smoke(args)
    elif args.world_seed is not None:
        args = _world(args)
    cache = Path(args.cache or Path(tempfile.gettempdir()) / f"assay-bench-{args.name}")
    cache.mkdir(parents=True, exist_ok=True)
    state_path = cache / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state["setup"] = {k: v for k, v in vars(args).items()}
    for ph in (("search", "recover", "measure") if args.phase == "all" else (args.phase,)):
        torch.set_num_threads(args.train_threads if ph == "recover" else args.threads)
        globals()[f"phase_{ph}"](args, cache, state)
        state_path.write_text(json.dumps(state, indent=1, default=float))
        write(args, state)
    return state


def _smoke(args: argparse.Namespace) -> argparse.Namespace:
    from actors.catalog.world import make_world
    from apps.cli.main import main as cli

    root = Path(args.cache or tempfile.mkdtemp(prefix="assay-cd-smoke-"))
    ws = root / "ws"
    if not (ws / "runs" / "s" / "models").exists():
        make_world(root / "world", seed=5, n_images=24, size=(128, 96), object_area=(0.02, 0.06),
                   classes=("shape",), workers=1, workspace=ws)
        assert cli(["learn", "--workspace", str(ws), "--rounds", "0", "--initial", "8", "--epochs", "1",
                    "--run", "s", "--json"]) == 0
    args.workspace, args.run, args.cache = str(ws), "s", str(root / "cache")
    args.targets, args.steps, args.head_epochs, args.taylor = [0.6], 3, 1, 2
    args.runs, args.rounds, args.search_steps, args.calib, args.unlabeled = 2, 1, 2, 2, 8
    return args


def _world(args: argparse.Namespace) -> argparse.Namespace:
    """Point ``args`` at world ``--world-seed`` (512×384, 600 images, detector head trained 40 epochs), built once."""
    from bench.compression import prepare

    run = f"bench{args.world_seed}"
    ws, _ = prepare(argparse.Namespace(workspace=None, run=run, seed=args.world_seed, images=600, size=(512, 384),
                                       detector_epochs=40, world_dir=None, smoke=False, out=args.out))
    args.workspace, args.run = ws.uri, run
    return args


def context(args: argparse.Namespace) -> dict:
    from actors.compression.finetune import load_split
    from actors.compression.net import tensor_module
    from actors.core.workspace import Workspace
    from actors.detection.train import load_detector

    ws = Workspace(args.workspace)
    det = load_detector(ws, next(f"runs/{args.run}/models/{f}" for f in sorted(os.listdir(
        ws.path(f"runs/{args.run}/models"))) if f.endswith(".pt")))
    val = load_split(ws, "val", list(det.classes), args.max_val)
    return {"ws": ws, "det": det, "base": tensor_module(det), "val": val, "hw": val.hw(), "classes": list(det.classes)}


def _key(kind: str, target: float) -> str:
    return f"{kind}-{target:g}"


def phase_search(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.calibrate import magnitude_to_measured, plan_to_measured, profile_lut, ratio_meter
    from actors.compression.export import save_compressed
    from actors.compression.finetune import load_split
    from actors.compression.net import head_convs
    from actors.compression.prune import group_scores, latency_aware_prune
    from actors.compression.report import _taylor_loss

    c = context(args)
    base, hw, det = c["base"], c["hw"], c["det"]
    example = torch.rand(1, 3, *hw)
    lut = profile_lut(base, hw, threads=args.threads, workdir=str(cache))
    sel = load_split(c["ws"], "train", c["classes"], args.taylor)
    scores = group_scores(copy.deepcopy(base), example, head_convs(base), "taylor", _taylor_loss(sel, args.taylor))
    measure = ratio_meter(base, hw, threads=args.threads, runs=10, rounds=3, stat="paired", workdir=str(cache))
    state.setdefault("pruned", {})
    for t in args.targets:
        if _key("magnitude", t) in state["pruned"]:
            continue

        def prune(net, b):
            return latency_aware_prune(net, example, lut, b, ignored=head_convs(net), importance="taylor",
                                       scores=scores)
        net, plan, hist = plan_to_measured(lambda: copy.deepcopy(base), prune, t, measure,
                                           iterations=args.search_steps, log=log)
        r = measure(net)
        save_compressed(net, det, str(cache / f"{_key('latency-aware', t)}.pt"), folded=False)
        state["pruned"][_key("latency-aware", t)] = {"search": hist, "measured_ratio": r, "plan": plan.to_dict()}
        mag, ratio, mh = magnitude_to_measured(lambda: copy.deepcopy(base), example, r, measure,
                                               ignored=head_convs, steps=args.search_steps, log=log)
        save_compressed(mag, det, str(cache / f"{_key('magnitude', t)}.pt"), folded=False)
        state["pruned"][_key("magnitude", t)] = {"search": mh, "ratio": ratio, "measured_ratio": measure(mag)}
        log(f"target {t}: latency-aware measured {r:.3f}, magnitude (ratio {ratio:.3f}) "
            f"{state['pruned'][_key('magnitude', t)]['measured_ratio']:.3f}")
    state["loadavg_search"] = list(os.getloadavg())


def phase_recover(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.distill import DistillConfig, distill_trunk
    from actors.compression.export import load_compressed, save_compressed
    from actors.compression.finetune import (FinetuneConfig, evaluate_outputs, finetune, load_split,
                                             recalibrate_bn, torch_runner)

    c = context(args)
    train = load_split(c["ws"], "train", c["classes"])
    unlabeled = (train.images + load_split(c["ws"], "pool", c["classes"]).images)[:args.unlabeled]
    state.setdefault("recover", {})
    acc = lambda net: evaluate_outputs(torch_runner(net), net.head, c["val"], c["classes"])["map50"]  # noqa: E731
    if "original" not in state["recover"]:
        state["recover"]["original"] = {"map50": acc(c["base"])}
    for key in state.get("pruned", {}):
        if (cache / f"{key}.rec.pt").exists():
            continue
        net, _ = load_compressed(str(cache / f"{key}.pt"))
        info = {"map50_pruned": acc(net)}
        recalibrate_bn(net, unlabeled[:64])
        info["map50_bn"] = acc(net)
        dcfg = DistillConfig(steps=args.steps, crop=tuple(args.crop))
        t0 = time.monotonic()
        info["distill"] = distill_trunk(net, c["base"], unlabeled, dcfg, ws=c["ws"],
                                        ckpt=f"runs/{args.run}/compress-bench/{args.name}-{key}.pt",
                                        progress=lambda s, n, loss: log(f"{key} distill {s}/{n} {loss:.3f}")
                                        if s % 50 == 0 else None)
        info["map50_distilled"] = acc(net)
        ftc = FinetuneConfig(epochs=args.head_epochs, lr=args.head_lr, batch_size=8, head_only=True)
        info["head_ft"] = finetune(net.requires_grad_(True), train, ftc, source=c["det"])
        info["map50_head_ft"] = acc(net)
        info["seconds"] = time.monotonic() - t0
        info["n_unlabeled"], info["n_train"] = len(unlabeled), len(train)
        save_compressed(net, c["det"], str(cache / f"{key}.rec.pt"), folded=False)
        state["recover"][key] = info
        log(f"{key}: mAP@.5 pruned {info['map50_pruned']:.3f} -> BN {info['map50_bn']:.3f} -> distilled "
            f"{info['map50_distilled']:.3f} -> head FT {info['map50_head_ft']:.3f}")


def phase_measure(args: argparse.Namespace, cache: Path, state: dict) -> None:
    from actors.compression.export import load_compressed
    from bench.compression_measured import measure_nets

    c = context(args)
    nets = {"original": c["base"]}
    for key in state.get("pruned", {}):
        nets[key] = load_compressed(str(cache / f"{key}.rec.pt"))[0]
    measure_nets(nets, c, cache, args, state)


def write(args: argparse.Namespace, state: dict) -> None:
    from bench.compression_measured import write_state

    write_state(args, state, markdown)


def markdown(s: dict) -> str:
    st = s["setup"]
    where = (f"--world-seed {st['world_seed']}" if st.get("world_seed") is not None
             else f"--workspace {st['workspace']} --run {st['run']}") + \
        (f" --name {st['name']}" if st.get("name", "compression_distilled") != "compression_distilled" else "")
    lines = ["# Compression with the trunk distilled back (latency-aware vs magnitude at equal measured latency)",
             "", f"Command: `python bench/compression_distilled.py {where} "
             f"--targets {' '.join(f'{t:g}' for t in st['targets'])} --steps {st['steps']} "
             f"--head-epochs {st['head_epochs']}`", ""]
    if s.get("pruned"):
        lines += ["| model | search | measured ratio |", "|---|---|---|"]
        for k, v in s["pruned"].items():
            srch = ", ".join(f"{h.get('budget', h.get('ratio')):.2f}->{h['measured']:.2f}" for h in v["search"])
            lines.append(f"| {k} | {srch} | {v['measured_ratio']:.3f} |")
    if s.get("recover"):
        lines += ["", "Validation mAP@.5 (PyTorch) after each recovery stage:", "",
                  "| model | pruned | BN re-estimated | trunk distilled | head fine-tuned | seconds |",
                  "|---|---|---|---|---|---|"]
        for k, v in s["recover"].items():
            if k == "original":
                lines.append(f"| original | {100 * v['map50']:.1f} | | | | |")
                continue
            lines.append(f"| {k} | {100 * v['map50_pruned']:.1f} | {100 * v['map50_bn']:.1f} | "
                         f"{100 * v['map50_distilled']:.1f} | {100 * v['map50_head_ft']:.1f} | {v['seconds']:.0f} |")
    from bench.compression_measured import rows_markdown

    lines += rows_markdown(s)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
