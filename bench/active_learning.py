"""Benchmark: active-learning strategies on the embedded world (detector mAP@.5 vs labeled images).

For each world seed (the defaults were tuned on seed 1; the report uses other seeds), the same initial labeled
set and budget for every strategy: random, entropy, coreset, uncertainty+robustness (cascade + class balance) and
uncertainty+robustness+pseudo-labels, and mined-first: targeted selection mines the pool for the class round 0
detects worst (one query: that class's largest box in the initial labeled set, ``mine`` top budget × rounds), those
images are labeled first (``assay learn --priority``) and uncertainty+robustness fills the rest. Round 0 is trained
once per seed and shared (same data, same seed: the same model), then each strategy runs its rounds. The mined
class's AP@.5 is recorded per round for every strategy. Reported: mAP@.5 per round (mean and per seed), the labels each
strategy needs to reach random's final mAP (linear interpolation on the mean curve), and wall time per round.

CPU sizing (2 shared cores): worlds of 256×192 images (objects 17–38 px), the 7 shape + face classes, cached
EfficientNet-Lite0 features, one torch thread per process.

    python bench/active_learning.py --smoke --out /tmp/al.json          # seconds: plumbing only
    python bench/active_learning.py --seeds 2 3 4 --jobs 3              # the reported run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRATEGIES = ("random", "entropy", "coreset", "uncertainty_robustness", "uncertainty_robustness+pseudo",
              "mined_first")
STORE = "efficientnet-lite0"  # the pool's region features targeted selection mines (the product's default store)
TUNING_SEED = 1


def _settings(a: argparse.Namespace) -> dict:
    if a.smoke:
        return {"images": 40, "size": [128, 96], "initial": 6, "budget": 4, "rounds": 1, "epochs": 1,
                "splits": [["train", 0.3], ["val", 0.3], ["pool", 0.4]], "max_pool": None}
    return {"images": a.images, "size": a.size, "initial": a.initial, "budget": a.budget, "rounds": a.rounds,
            "epochs": a.epochs, "splits": [["train", 0.15], ["val", 0.25], ["pool", 0.6]], "max_pool": None,
            "warm_start": a.warm_start, "pseudo_threshold": a.pseudo_threshold, "min_steps": a.min_steps}


def run_seed(seed: int, s: dict, work: str, names: tuple[str, ...] = STRATEGIES, tag: str = "") -> dict:
    """All strategies on one world seed; returns {strategy: {n_labeled, map50, map, seconds}}."""
    import torch

    torch.set_num_threads(1)  # on 2 shared cores one thread per process is several times faster than two
    from actors.active.rounds import LearnConfig, run_learning
    from actors.catalog.world import make_world
    from actors.core.workspace import Workspace
    from actors.detection.train import TrainConfig

    out = Path(work) / f"world-{seed}"
    t0 = time.perf_counter()
    if not (out / "world.json").exists():
        make_world(out, seed=seed, n_images=s["images"], size=tuple(s["size"]), object_area=(0.006, 0.03),
                   classes=("shape", "face"), splits=[tuple(x) for x in s["splits"]], workers=1)
    ws = Workspace(out / "workspace")
    world_s = time.perf_counter() - t0
    partial = Path(work) / f"partial-{seed}.json"
    res: dict = json.loads(partial.read_text()) if partial.exists() else {}
    res.setdefault("world_seconds", world_s)
    first = f"bench-random{tag}" if ws.exists(f"runs/bench-random{tag}/models/round-0.pt") else None
    for name in names:
        priority = None
        if name == "mined_first":
            if first is None:
                raise RuntimeError("mined_first needs round 0 of an earlier strategy (run random first)")
            priority, res["mined_query"] = _mined_priority(ws, f"runs/{first}", s["budget"] * s["rounds"])
        strategy, pseudo = name.split("+")[0], name.endswith("+pseudo")
        strategy = "uncertainty_robustness" if name == "mined_first" else strategy
        extra = {"pseudo_threshold": s["pseudo_threshold"]} if s.get("pseudo_threshold") is not None else {}
        cfg = LearnConfig(rounds=s["rounds"], budget=s["budget"], strategy=strategy, pseudo=pseudo,
                          initial=s["initial"], max_pool=s["max_pool"], seed=seed,
                          warm_start=bool(s.get("warm_start")), **extra,
                          train=TrainConfig(epochs=s["epochs"], min_steps=s.get("min_steps", 0), seed=seed))
        run_id = f"bench-{name.replace('+', '-')}{tag}"
        if first is not None and first != run_id:  # round 0 is the same model for every strategy: reuse it
            ws.makedirs(f"runs/{run_id}/models")
            shutil.copy(ws.local_path(f"runs/{first}/models/round-0.pt"), ws.local_path(f"runs/{run_id}/models/round-0.pt"))
        t1 = time.perf_counter()
        rep = run_learning(ws, cfg, run_id=run_id, progress=False, priority=priority)
        first = first or run_id
        res[name] = {"n_labeled": rep.n_labeled, "map50": rep.map50, "map": rep.map, "seconds": rep.seconds,
                     "total_seconds": time.perf_counter() - t1,
                     "per_class_ap50": [m["per_class_ap50"] for m in ws.read_json(f"runs/{run_id}/metrics.json")]}
        (Path(work) / f"partial-{seed}.json").write_text(json.dumps(res))
        print(f"seed {seed} {name}: " + ", ".join(f"{n}:{m:.1f}" for n, m in zip(rep.n_labeled, rep.map50)),
              flush=True)
    return res


def _mined_priority(ws, run_dir: str, top_k: int) -> tuple[list[str], dict]:
    """(pool ids targeted selection returns for the class round 0 detects worst, what was asked): the query is
    that class's largest box in round 0's labeled set; the pool is embedded into :data:`STORE` and indexed first."""
    from actors.catalog.schema import load_labels
    from actors.detection.data import catalog_rows
    from actors.features.embed import embed_pool
    from actors.selection.index import build_index
    from actors.selection.mine import mine

    ap0 = ws.read_json(f"{run_dir}/metrics.json")[0]["per_class_ap50"]
    labeled = {r["image_id"] for r in ws.read_table(f"{run_dir}/labeled.parquet").to_pylist()}
    boxes = [r for r in load_labels(ws, source="human").to_pylist() if r["image_id"] in labeled]
    present = sorted({r["category"] for r in boxes})
    weakest = min(present, key=lambda c: (ap0.get(c) or 0.0, c))
    q = max((r for r in boxes if r["category"] == weakest), key=lambda r: ((r["x1"] - r["x0"]) * (r["y1"] - r["y0"]),
                                                                           r["image_id"]))
    t = time.perf_counter()
    embed_pool(ws, model=STORE, splits=("pool",), local=True, progress=False)
    build_index(ws, STORE, progress=False)
    rows = catalog_rows(ws)
    box = [q["x0"], q["y0"], q["x1"], q["y1"]]
    sel = mine(ws, image=rows[q["image_id"]]["uri"], boxes=[box], top_k=top_k, model=STORE, write=True)
    return [h.image_id for h in sel.hits], {"category": weakest, "round0_ap50": ap0.get(weakest),
                                            "image_id": q["image_id"], "box": box, "top_k": top_k,
                                            "seconds": time.perf_counter() - t}


def labels_to_reach(n: list[float], m: list[float], target: float) -> float | None:
    """Smallest n at which the piecewise-linear curve (n, m) reaches ``target``; None if it never does."""
    for i, (ni, mi) in enumerate(zip(n, m)):
        if mi >= target:
            if i == 0:
                return float(ni)
            n0, m0 = n[i - 1], m[i - 1]
            return float(n0 + (target - m0) / (mi - m0) * (ni - n0))
    return None


def summarize(per_seed: dict, s: dict) -> dict:
    names = [k for k in STRATEGIES if all(k in r for r in per_seed.values())]
    mean = {k: np.mean([per_seed[sd][k]["map50"] for sd in per_seed], 0).tolist() for k in names}
    std = {k: np.std([per_seed[sd][k]["map50"] for sd in per_seed], 0).tolist() for k in names}
    n = next(iter(per_seed.values()))[names[0]]["n_labeled"]
    target = mean["random"][-1]
    need = {k: labels_to_reach(n, mean[k], target) for k in names}
    per_round_s = {k: np.mean([per_seed[sd][k]["seconds"][1:] for sd in per_seed]).item() if s["rounds"] else None
                   for k in names}
    beats = ({k: bool(all(a > b for a, b in zip(mean[k][1:], mean["entropy"][1:]))) for k in names}
             if "entropy" in mean else {k: False for k in names})
    mined = {}
    if all("mined_query" in per_seed[sd] for sd in per_seed):  # the mined class's AP@.5 per round, mean over seeds
        mined = {k: np.mean([[100.0 * (r.get(per_seed[sd]["mined_query"]["category"]) or 0.0)
                              for r in per_seed[sd][k]["per_class_ap50"]] for sd in per_seed], 0).tolist()
                 for k in names if all("per_class_ap50" in per_seed[sd][k] for sd in per_seed)}
    return {"n_labeled": n, "mean_map50": mean, "std_map50": std, "random_final_map50": target,
            "mined_class_ap50": mined,
            "mined_classes": {str(sd): per_seed[sd].get("mined_query", {}).get("category") for sd in per_seed},
            "labels_to_reach_random_final": need,
            "fraction_of_random_labels": {k: (v / n[-1] if v is not None else None) for k, v in need.items()},
            "beats_entropy_every_round": beats, "seconds_per_round": per_round_s,
            "round0_seconds": np.mean([per_seed[sd][names[0]]["seconds"][0] for sd in per_seed]).item()}


def markdown(doc: dict) -> str:
    s, sm = doc["settings"], doc["summary"]
    steps = f" (at least {s['min_steps']} steps)" if s.get("min_steps") else ""
    lines = [f"# Active learning on the embedded world (seeds {doc['seeds']}, tuned on seed {TUNING_SEED})", "",
             f"{s['images']} images of {s['size'][0]}×{s['size'][1]}, shapes + face (7 classes); initial {s['initial']}"
             f" labeled, budget {s['budget']} per round, {s['rounds']} rounds, {s['epochs']} epochs per round"
             f"{steps}; "
             "detector dense-lite0 (frozen EfficientNet-Lite0, cached stride-8 fused features, light FCOS-style head).",
             "", "mAP@.5 (%) on the val split, mean ± std over seeds:", "",
             "| strategy | " + " | ".join(f"n={n}" for n in sm["n_labeled"]) + " | labels to reach random's final |"
             " fraction of random's | beats entropy every round | s/round |",
             "|---|" + "---|" * (len(sm["n_labeled"]) + 4)]
    for k, m in sm["mean_map50"].items():
        need = sm["labels_to_reach_random_final"][k]
        frac = sm["fraction_of_random_labels"][k]
        lines.append(f"| {k} | " + " | ".join(f"{a:.1f} ± {b:.1f}" for a, b in zip(m, sm["std_map50"][k]))
                     + f" | {'not reached' if need is None else f'{need:.0f}'} | "
                     f"{'–' if frac is None else f'{frac:.0%}'} | {'yes' if sm['beats_entropy_every_round'][k] else 'no'}"
                     f" | {sm['seconds_per_round'][k]:.0f} |")
    if sm.get("mined_class_ap50"):
        lines += ["", "AP@.5 (%) of the class mined-first mined (the class round 0 detected worst; per seed "
                  f"{json.dumps(sm['mined_classes'])}), mean over seeds:", "",
                  "| strategy | " + " | ".join(f"n={n}" for n in sm["n_labeled"]) + " |",
                  "|---|" + "---|" * len(sm["n_labeled"])]
        for k, m in sm["mined_class_ap50"].items():
            lines.append(f"| {k} | " + " | ".join(f"{a:.1f}" for a in m) + " |")
    lines += ["", f"Round 0 (shared): {sm['round0_seconds']:.0f} s. Wall times are on 2 CPU cores shared with other "
              "jobs (noisy).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="A tiny run in seconds (plumbing only).")
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--size", type=int, nargs=2, default=[256, 192])
    p.add_argument("--initial", type=int, default=20)
    p.add_argument("--budget", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--min-steps", type=int, default=0, help="At least this many gradient steps a round "
                   "(TrainConfig.min_steps: a small labeled set is not also an undertrained model).")
    p.add_argument("--warm-start", action="store_true", help="Rounds >= 1 fine-tune the previous round's model.")
    p.add_argument("--pseudo-threshold", type=float, default=None, help="Pseudo-label confidence (default: "
                   "LearnConfig's).")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES,
                   help="Run only these (others are taken from --work's partial results).")
    p.add_argument("--tag", default="", help="Suffix of the run ids (a rerun next to earlier runs).")
    p.add_argument("--jobs", type=int, default=1, help="Seeds run in parallel processes.")
    p.add_argument("--work", default=None, help="Scratch folder for the worlds (default: a temp dir).")
    p.add_argument("--out", default=None, help="JSON path (default bench/active_learning.json; with --smoke a temp "
                   "file, never the committed one).")
    p.add_argument("--from-partials", action="store_true", help="Summarize what --work holds (an unfinished run).")
    a = p.parse_args(argv)
    seeds = [2] if a.smoke else a.seeds
    if TUNING_SEED in seeds and not a.smoke:
        print(f"note: seed {TUNING_SEED} is the tuning seed", file=sys.stderr)
    s = _settings(a)
    work = a.work or tempfile.mkdtemp(prefix="assay-al-")
    t0 = time.perf_counter()
    if a.from_partials:
        per_seed = {sd: json.loads((Path(work) / f"partial-{sd}.json").read_text()) for sd in seeds
                    if (Path(work) / f"partial-{sd}.json").exists()}
    elif a.jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(a.jobs, len(seeds)), mp_context=get_context("spawn")) as ex:
            per_seed = dict(zip(seeds, ex.map(run_seed, seeds, [s] * len(seeds), [work] * len(seeds),
                                              [tuple(a.strategies)] * len(seeds), [a.tag] * len(seeds))))
    else:
        per_seed = {sd: run_seed(sd, s, work, tuple(a.strategies), a.tag) for sd in seeds}
    doc = {"bench": "active_learning", "smoke": a.smoke, "seeds": seeds, "tuning_seed": TUNING_SEED, "settings": s,
           "per_seed": {str(k): v for k, v in per_seed.items()}, "summary": summarize(per_seed, s),
           "seconds": time.perf_counter() - t0, "cpu_count": os.cpu_count(), "torch_threads": 1,
           "loadavg": list(os.getloadavg()),
           "note": "wall times measured on 2 CPU cores shared with other jobs"}
    out = Path(a.out or (Path(work) / "smoke.json" if a.smoke else ROOT / "bench" / "active_learning.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    if not a.work and not (a.smoke and not a.out):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
