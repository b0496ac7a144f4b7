"""``assay compress``: a workspace run's detector in, a smaller faster one out, with the measured proof.

:func:`compress_run` loads the run's detector checkpoint (``runs/<run>/models/*.pt``, read by
``actors.detection``), builds its tensor module (:mod:`~actors.compression.net`), and then:

1. builds the per-layer latency LUT on this device at the validation size: ``lut="profile"`` (default) reads
   each layer's cost from a whole-graph ONNX Runtime profile of the original and scales it with the channel
   counts by MACs; ``lut="grid"`` times every conv alone over a channel grid (cached in the workspace per device);
2. prunes to ``latency`` × the LUT latency with the knapsack (:mod:`~actors.compression.prune`), importance from
   Taylor scores on training images (magnitude when there are none) — by default inside the trunk only, the head's
   input channels kept (``protect_head``) — distills the pruned trunk back to the original trunk's map on
   unlabeled training + pool images (:mod:`~actors.compression.distill`, ``distill_steps``, checkpointed to
   ``runs/<run>/compress/``) and then fine-tunes its head on the frozen trunk's cached maps (``head_epochs``);
   without distillation (or with ``ray``) it fine-tunes the whole pruned network with the
   detector training loop (:mod:`~actors.compression.finetune`; on Ray Train with ``ray``:
   :mod:`~actors.compression.ray_finetune`), checkpointed every epoch to ``runs/<run>/compress/`` and resumed
   from there when run again. With ``measured_steps > 0`` the budget is met in *measured* latency instead
   (:mod:`~actors.compression.calibrate`): the LUT is calibrated on a whole-graph ONNX Runtime profile of the
   original, and up to ``measured_steps`` plans are built, exported and timed against the original (paired
   calls) while the LUT budget is moved until the measured ratio meets ``latency``; every step is in the report
   (``measured_search``);
3. folds BN (:mod:`~actors.compression.fold`), exports ONNX + the weights-only state dict
   (:mod:`~actors.compression.export`), and with ``int8`` the ONNX Runtime static int8 model calibrated on
   training images (:mod:`~actors.compression.quantize`);
4. measures original and compressed in the *same* harness and process: ONNX Runtime CPU, batch 1, at the
   validation size, ``threads`` intra-op threads, alternating rounds of ``timing_runs`` calls; accuracy on the
   validation split through the same decoding; params, FLOPs (Torch-Pruning's counter, multiply-accumulates)
   and file sizes;
5. writes ``model.onnx`` (+ ``model.int8.onnx``), ``model.pt``, ``report.json`` and ``summary.md`` into ``out``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from actors.compression.verdict import accuracy_warnings, changes
from actors.core.errors import UserError


@dataclass
class CompressConfig:
    """What ``assay compress`` does; ``get_default_config()`` gives the shipped defaults."""

    latency: float = 0.5
    int8: bool = False
    data_free: bool = False
    importance: str = "taylor"
    finetune_epochs: int = 2
    finetune_lr: float = 5e-4
    calib_images: int = 32
    taylor_images: int = 16
    threads: int = 1
    timing_runs: int = 20
    timing_rounds: int = 3
    lut_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
    round_to: int = 8
    max_val_images: int | None = None
    max_train_images: int | None = None
    ray: bool = False
    seed: int = 0
    measured_steps: int = 0  # > 0: meet the budget in measured ONNX Runtime latency (calibrated LUT + outer loop)
    lut: str = "profile"  # "profile": whole-graph per-layer cost scaled by MACs; "grid": isolated-conv grid
    protect_head: bool = True  # the head's input (the trunk's output channels) is never pruned
    distill_steps: int = 1500  # feature distillation of the pruned trunk (needs protect_head); 0: none
    head_epochs: int = 12  # after distillation: the head fine-tuned on the frozen trunk's cached maps
    head_lr: float = 1e-3
    distill_images: int = 450  # unlabeled train + pool images it may use (held in memory as float tensors)

    @classmethod
    def get_default_config(cls) -> "CompressConfig":
        return cls()


def find_checkpoint(ws: Any, run: str) -> str:
    """Workspace-relative path of run ``run``'s detector checkpoint: ``detector.pt``, else the latest round's
    (``round-<r>.pt``, highest ``r``; ``assay learn`` writes those), else the last ``*.pt`` by name."""
    import re

    base = f"runs/{run}/models"
    if ws.exists(f"{base}/detector.pt"):
        return f"{base}/detector.pt"
    names = [n for n in ws.listdir(base, ".pt") if not n.endswith(".data.pt")]
    if not names:
        raise UserError(f"{ws.path(base)}: no detector checkpoint (*.pt) for run {run!r}; train one with `assay learn`")

    def order(n: str) -> tuple:
        m = re.search(r"(\d+)\.pt$", n)
        return (m is not None, int(m.group(1)) if m else 0, n)
    return f"{base}/{max(names, key=order)}"


def count(net: torch.nn.Module, hw: tuple[int, int]) -> dict[str, float]:
    """Parameters and multiply-accumulates (Torch-Pruning's op counter) at input H×W."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(net, torch.rand(1, 3, *hw))
    return {"params": int(params), "macs": int(macs)}


def timed(sessions: dict[str, Any], x: np.ndarray, runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Alternating rounds of batch-1 ONNX Runtime calls; p50/p95 over all calls and the spread of round p50s."""
    from actors.compression.latency import measure_latency

    per: dict[str, list[dict]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            per[k].append(measure_latency(lambda s=s, name=name: s.run(None, {name: x}), warmup=2, runs=runs))
    out = {}
    for k, ms in per.items():
        p50s = [m["p50"] for m in ms]
        out[k] = {"p50": float(np.median(p50s)), "p95": float(np.median([m["p95"] for m in ms])),
                  "p50_rounds": p50s, "spread": float(max(p50s) - min(p50s)), "runs": runs * rounds}
    return out


def _taylor_loss(train: Any, n: int) -> Callable[[torch.nn.Module], torch.Tensor] | None:
    from actors.compression.finetune import detection_loss

    idx = [i for i in range(len(train)) if len(train.labels[i])][:n]
    if not idx:
        return None

    def loss(net: torch.nn.Module) -> torch.Tensor:
        return sum(detection_loss(net, train.images[i], torch.from_numpy(np.asarray(train.boxes[i], np.float32)),
                                  torch.from_numpy(np.asarray(train.labels[i], np.int64))) for i in idx) / len(idx)
    return loss


def _lut(ws: Any, base: torch.nn.Module, hw: tuple[int, int], key: str, cfg: CompressConfig, out: str,
         log: Callable[[str], None]) -> tuple[Any, str | None]:
    """The LUT the knapsack plans on: ``"grid"`` — every conv timed alone in ONNX Runtime over the channel grid
    (cached in the workspace per device), calibrated on the whole-graph profile when the budget is met in measured
    latency; ``"profile"`` — :func:`actors.compression.calibrate.profile_lut`."""
    from actors.compression.calibrate import calibrate_lut, profile_convs, profile_lut
    from actors.compression.latency import build_lut, load_cached, ort_timer, save_cached

    if cfg.lut == "profile":
        lut = profile_lut(base, hw, threads=cfg.threads, workdir=out, device=f"{key}-macs")
        log(f"latency LUT {key}: whole-graph profile of {len(lut.scale)} convs, scaled by MACs "
            f"({lut.total_ms():.1f} ms in all)")
        return lut, None
    lut = build_lut(base, hw, device=key, cache=load_cached(ws, key), fractions=cfg.lut_fractions,
                    timer=ort_timer(threads=cfg.threads))
    rel = save_cached(ws, lut)
    log(f"latency LUT {lut.device}: {len(lut.entries)} layer signatures ({rel})")
    if cfg.measured_steps > 0:
        lut = calibrate_lut(lut, profile_convs(base, hw, threads=cfg.threads, workdir=out))
    return lut, rel


def _distill(ws: Any, run: str, pruned: torch.nn.Module, base: torch.nn.Module, train: Any, classes: list[str],
             cfg: CompressConfig, tag: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Feature distillation of the pruned trunk on unlabeled training + pool images (BN statistics re-estimated
    first), checkpointed to ``runs/<run>/compress/distill-<tag>.pt``; None when switched off."""
    if cfg.distill_steps <= 0 or not cfg.protect_head:
        return None
    from actors.compression.distill import DistillConfig, distill_trunk
    from actors.compression.finetune import load_split, recalibrate_bn

    n = cfg.distill_images
    images = list(train.images[:n])
    if len(images) < n:
        images += load_split(ws, "pool", classes, n - len(images)).images
    if not images:
        return None
    recalibrate_bn(pruned, images[:64])
    dcfg = DistillConfig(steps=cfg.distill_steps, seed=cfg.seed)
    log(f"distilling the pruned trunk: {dcfg.steps} steps on {len(images)} unlabeled images")
    res = distill_trunk(pruned, base, images, dcfg, ws=ws, ckpt=f"runs/{run}/compress/distill-{tag}.pt")
    return {**res, "images": len(images), "config": {**asdict(dcfg), "crop": list(dcfg.crop)}}


def resume_tag(cfg: CompressConfig) -> str:
    """The name part of a compression's resumable checkpoints (``runs/<run>/compress/*-<tag>.pt``).

    Every option that changes the pruned network a distillation or fine-tune starts from is in it (importance,
    budget, LUT kind, seed, head protection, measured steps, rounding, Taylor images), so a run with other options
    never meets a checkpoint of another start; the same options resume."""
    head = "head" if cfg.protect_head else "nohead"
    extra = f"-m{cfg.measured_steps}" if cfg.measured_steps else ""
    return (f"{cfg.importance}-{cfg.latency:g}-{cfg.lut}-s{cfg.seed}-{head}{extra}-r{cfg.round_to}"
            f"-t{cfg.taylor_images}")


def compress_run(ws: Any, run: str, out: str, cfg: CompressConfig | None = None, *,
                 checkpoint: str | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Compress run ``run``'s detector into ``out``; returns the report (also written to ``out/report.json``).

    Torch's intra-op thread count is set to ``cfg.threads`` for the run and restored when it ends (or fails)."""
    threads = torch.get_num_threads()
    try:
        return _compress_run(ws, run, out, cfg, checkpoint=checkpoint, log=log)
    finally:
        torch.set_num_threads(threads)


def _compress_run(ws: Any, run: str, out: str, cfg: CompressConfig | None, *, checkpoint: str | None,
                  log: Callable[[str], None]) -> dict[str, Any]:
    from actors.compression.export import decoding_params, export_onnx, onnx_session, save_compressed
    from actors.compression.finetune import FinetuneConfig, evaluate_outputs, finetune, load_split, onnx_runner
    from actors.compression.fold import fold_batchnorm
    from actors.compression.latency import device_key
    from actors.compression.net import final_layers, head_convs, tensor_module
    from actors.compression.prune import latency_aware_prune
    from actors.compression.quantize import fake_quantize, quantize_static, spiq_ranges
    from actors.detection.train import load_detector

    cfg = cfg or CompressConfig()
    if cfg.importance not in ("taylor", "magnitude"):
        raise UserError(f"--importance must be taylor or magnitude, got {cfg.importance!r}")
    if cfg.lut not in ("profile", "grid"):
        raise UserError(f"--lut must be profile or grid, got {cfg.lut!r}")
    if not 0 < cfg.latency <= 1:
        raise UserError(f"--latency must be in (0, 1] (a fraction of the original latency), got {cfg.latency}")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rel = checkpoint or find_checkpoint(ws, run)
    try:
        det = load_detector(ws, rel)
    except UserError as e:  # torch's unpickling messages run over several lines: keep the one naming the file
        raise UserError(str(e).strip().splitlines()[0]) from e
    classes = list(det.classes)
    val = load_split(ws, "val", classes, cfg.max_val_images)
    train = load_split(ws, "train", classes, cfg.max_train_images)
    if not len(val):
        raise UserError(f"{ws.path('catalog')}: no readable images in split 'val' to measure accuracy on")
    hw = val.hw()
    os.makedirs(out, exist_ok=True)
    log(f"detector {det.config.get('name')} from {rel}; {len(val)} val / {len(train)} train images at {hw[1]}x{hw[0]}")

    base = tensor_module(det)
    example = torch.rand(1, 3, *hw)
    key = device_key("cpu") + "-onnxruntime"  # the LUT is timed in the runtime the model ships in
    lut, lut_rel = _lut(ws, base, hw, key, cfg, out, log)
    protected = head_convs if cfg.protect_head else final_layers

    pruned = copy.deepcopy(base)
    importance = cfg.importance if train and cfg.importance == "taylor" else "magnitude"
    loss = _taylor_loss(train, cfg.taylor_images) if importance == "taylor" else None
    importance = importance if loss is not None or importance == "magnitude" else "magnitude"
    measured: list[dict] = []
    if cfg.measured_steps > 0:
        from actors.compression.calibrate import plan_to_measured, ratio_meter
        from actors.compression.prune import group_scores

        scores = group_scores(copy.deepcopy(base), example, protected(base), importance, loss)
        meter = ratio_meter(base, hw, threads=cfg.threads, runs=10, rounds=3, stat="paired")

        def prune(net: torch.nn.Module, b: float) -> Any:
            return latency_aware_prune(net, example, lut, b, ignored=protected(net), importance=importance,
                                       scores=scores, round_to=cfg.round_to)
        pruned, plan, measured = plan_to_measured(lambda: copy.deepcopy(base), prune, cfg.latency, meter,
                                                  iterations=cfg.measured_steps, log=log)
        import shutil

        shutil.rmtree(meter.workdir, ignore_errors=True)
    else:
        plan = latency_aware_prune(pruned, example, lut, cfg.latency, ignored=protected(pruned),
                                   importance=importance, loss_fn=loss, round_to=cfg.round_to)
    log(f"plan: LUT {plan.full_ms:.1f} -> {plan.predicted_ms:.1f} ms (target {plan.target_ms:.1f})")
    tag = resume_tag(cfg)
    distilled = _distill(ws, run, pruned, base, train, classes, cfg, tag, log)
    head_only = distilled is not None and not cfg.ray  # distilled: the trunk stays, the head learns its map
    ftc = (FinetuneConfig(epochs=cfg.head_epochs, lr=cfg.head_lr, batch_size=8, seed=cfg.seed, head_only=True)
           if head_only else FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, seed=cfg.seed))
    log(f"fine-tuning the {'head on the cached trunk maps' if head_only else 'whole network'}")
    ckpt = f"runs/{run}/compress/finetune-{tag}{'-head' if head_only else ''}.pt"  # resumable: same start, same file
    if cfg.ray:
        from actors.compression.ray_finetune import finetune_on_ray
        from actors.core.runtime import init_ray

        init_ray()
        ft = finetune_on_ray(ws, pruned, det, train, ckpt, ftc, teacher=base)
    else:
        ft = finetune(pruned, train, ftc, teacher=base, source=det, ws=ws, ckpt=ckpt)

    spiq = spiq_ranges(pruned) if cfg.data_free else None  # needs the BN statistics: before folding
    folded_base = copy.deepcopy(base)
    fold_base = fold_batchnorm(folded_base, example)
    fold_pruned = fold_batchnorm(pruned, example)
    paths = {"original": export_onnx(folded_base, os.path.join(out, ".original.onnx"), hw),
             "compressed": export_onnx(pruned, os.path.join(out, "model.onnx"), hw)}
    save_compressed(pruned, det, os.path.join(out, "model.pt"),
                    extra={"source_checkpoint": str(ws.path(rel)), "plan": plan.to_dict()})
    if cfg.int8:  # calibrated on training images (validation only when there are none)
        calib = [x.numpy() for x in (train.images or val.images)[:cfg.calib_images]]
        paths["compressed_int8"] = quantize_static(paths["compressed"], os.path.join(out, "model.int8.onnx"), calib)
    sessions = {k: onnx_session(p, cfg.threads) for k, p in paths.items()}
    log("measuring latency (ONNX Runtime, batch 1) and accuracy")
    lat = timed(sessions, val.images[0].numpy(), cfg.timing_runs, cfg.timing_rounds)
    acc = {k: evaluate_outputs(onnx_runner(s), det.head if k == "original" else pruned.head, val, classes)
           for k, s in sessions.items()}
    counts = {"original": count(folded_base, hw), "compressed": count(pruned, hw)}
    counts["compressed_int8"] = counts["compressed"]
    report = {
        "run": run, "checkpoint": str(ws.path(rel)), "detector": det.config.get("name"), "classes": classes,
        "device": key, "runtime": "onnxruntime CPUExecutionProvider", "threads": cfg.threads,
        "input_hw": list(hw), "config": asdict(cfg), "importance": importance,
        "fold": {"original": fold_base.to_dict(), "compressed": fold_pruned.to_dict()},
        "plan": plan.to_dict(), "distill": distilled, "finetune": ft, "lut": lut_rel, "lut_kind": cfg.lut,
        "protect_head": cfg.protect_head, "measured_search": measured,
        "models": {k: {"latency_ms": lat[k], "accuracy": acc[k], **counts[k],
                       "file_bytes": os.path.getsize(p), "file": os.path.basename(p)} for k, p in paths.items()},
        "file_bytes": FILE_BYTES,
        "decoding": "outside the graph: sigmoid scores, centre -/+ ltrb boxes on the stride grid, NMS "
                    "(actors.compression.net.decode / DenseHead.decode; numpy only: "
                    "actors.compression.export.decode_numpy with decoding_params)",
        "decoding_params": decoding_params(pruned.head),
    }
    if spiq is not None:
        from actors.compression.finetune import torch_runner

        fq, n = fake_quantize(pruned, spiq)
        report["data_free_int8"] = {"method": "SPIQ-style static per-channel input ranges from BN/GN statistics, "
                                              "int8 per-channel weights; simulated in PyTorch (accuracy only)",
                                    "accuracy": evaluate_outputs(torch_runner(fq), pruned.head, val, classes), **n}
    os.remove(paths["original"])  # measured like the others (its ONNX file), then removed: out/ ships one model
    report["models"]["original"]["checkpoint"] = os.path.basename(rel)
    report["models"]["original"]["checkpoint_bytes"] = len(ws.read_bytes(rel))
    report["accuracy_change"] = changes(report)  # mAP@.5 change beside every speed-up
    report["warnings"] = accuracy_warnings(report)
    _write(os.path.join(out, "report.json"), json.dumps(report, indent=1))
    _write(os.path.join(out, "summary.md"), summary(report))
    return report


FILE_BYTES = ("every model's file_bytes is the size of its own ONNX file as exported here (fp32 weights, int8 for "
              "compressed_int8; BN folded; the whole network): like with like. The original's checkpoint_bytes is "
              "its training checkpoint (trainable weights and optimizer state; a frozen trunk's weights come from "
              "the backbone), not comparable")


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def summary(report: dict[str, Any]) -> str:
    """The human-readable table of a report (Markdown)."""
    m = report["models"]
    o = m["original"]
    lines = [f"# Compressed {report['detector']} (run {report['run']})", "",
             f"Device `{report['device']}`, {report['runtime']}, {report['threads']} thread(s), batch 1, input "
             f"{report['input_hw'][1]}x{report['input_hw'][0]}; accuracy on {o['accuracy']['n_images']} val images.",
             "", "| model | params | GMACs | ONNX MB | p50 ms | p95 ms | speed-up | mAP@.5 change | mAP@.5 | "
             "mAP@[.5:.95] |", "|---|---|---|---|---|---|---|---|---|---|"]
    change = changes(report)
    for k, r in m.items():
        lines.append(f"| {k} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e9:.2f} | {r['file_bytes'] / 1e6:.2f} | "
                     f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
                     f"{o['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x | "
                     f"{'-' if k == 'original' else format(change[k]['points'], '+.1f')} | "
                     f"{100 * r['accuracy']['map50']:.1f} | {100 * r['accuracy']['map']:.1f} |")
    lines += ["", "ONNX MB: each model's own exported ONNX file (the whole network, BN folded): like with like."
              + (f" The original's training checkpoint ({o['checkpoint']}, {o['checkpoint_bytes'] / 1e6:.2f} MB) holds "
                 "its trainable weights and optimizer state, not the network: not comparable."
                 if "checkpoint_bytes" in o else "")]
    warned = accuracy_warnings(report)
    if warned:
        lines += [""] + warned
    p = report["plan"]
    lines += ["", f"Pruning plan ({report['importance']} importance): LUT latency {p['full_ms']:.1f} -> "
              f"{p['predicted_ms']:.1f} ms (target {p['target_ms']:.1f}); kept importance {p['kept_importance']:.2f}.",
              "", "| layer | in | in kept | out | out kept |", "|---|---|---|---|---|"]
    for name, l in p["layers"].items():
        lines.append(f"| {name} | {l['in']} | {l['in_kept']} | {l['out']} | {l['out_kept']} |")
    if report.get("distill"):
        d = report["distill"]
        lines += ["", f"Trunk distilled to the original's map: {d['steps']} steps (resumed from "
                  f"{d['resumed_from']}) on {d['images']} unlabeled images, loss "
                  f"{' -> '.join(f'{x:.3f}' for x in d['losses'][:1] + d['losses'][-1:])}."]
    if "data_free_int8" in report:
        d = report["data_free_int8"]
        lines += ["", f"Data-free int8 ({d['method']}): mAP@.5 {100 * d['accuracy']['map50']:.1f}, "
                  f"mAP@[.5:.95] {100 * d['accuracy']['map']:.1f}."]
    f = report["fold"]["compressed"]
    lines += ["", f"BN folding: {len(f['folded'])} folds, max abs output difference {f['max_abs_diff']:.2e}.",
              "", "Box decoding and NMS run outside the exported graph: " + report["decoding"] + "."]
    return "\n".join(lines) + "\n"


__all__ = ["CompressConfig", "find_checkpoint", "count", "timed", "compress_run", "resume_tag", "summary"]
