"""Benchmark: does the shipped LCDB prior transfer to the detector curves Assay itself produces?

The prior (``estimators/data/prior.json``) was learned on LCDB classifier accuracy curves. Here the curves are
Assay's own: the default detector (``dense-lite0``: frozen EfficientNet-Lite0, cached stride-8 fused features, the
light FCOS-style head) trained exactly as ``assay learn`` trains it (:func:`actors.detection.train.train_detector`,
the same feature cache, ``TrainConfig(epochs=…)``), on nested random labelled subsets of a world's train split
(8, 11, 16, 23, … up to the whole split), mAP@.5 (percent) on the val split by pycocotools. One curve per world seed.

Protocol (the one ``bench/estimators.py`` applies to LCDB, :func:`bench.estimators.evaluate_curve`): fit on the points
up to 10% (and 20%) of the largest size; the target is the mAP at the whole split minus ``margin`` points (several
margins, each a separate target); the true requirement n* is where the measured curve first reaches it (log-n
interpolation). Compared: the plain power law, power law + τ (the prior's τ), the default CLI
(:func:`estimators.requirement.estimate_requirement` with the shipped prior, as ``assay estimate`` without
``--past``), and ``--past`` with the *other seeds'* detector curves (leave one seed out).

    python bench/prior_transfer.py --smoke                       # seconds: synthetic curves, plumbing only
    nice -n 19 python bench/prior_transfer.py --seeds 2 3 4 --jobs 2 --work /tmp/assay-pt   # the reported run

Writes ``bench/prior_transfer.json`` and ``bench/prior_transfer.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

MARGINS = (1.0, 2.0, 4.0)
METHODS = ("power", "power+tau", "default CLI", "--past")


def sizes_for(n_train: int, first: int = 8) -> list[int]:
    """Geometric sizes first·√2^k up to ``n_train``, the whole split last."""
    out = sorted({int(round(first * 2 ** (k / 2))) for k in range(40) if first * 2 ** (k / 2) < n_train * 0.9})
    return out + [n_train]


def detector_curve(seed: int, s: dict, work: str) -> dict:
    """mAP@.5 (%) of dense-lite0 trained on nested random subsets of world ``seed``'s train split (resumable)."""
    import torch

    torch.set_num_threads(s["threads"])
    from actors.catalog.schema import load_labels
    from actors.catalog.world import make_world
    from actors.core.workspace import Workspace
    from actors.detection.data import FeatureCache, build_data, catalog_rows, labels_by_image
    from actors.detection.evaluate import evaluate_detections
    from actors.detection.models import get_detector
    from actors.detection.train import TrainConfig, predict, train_detector

    out = Path(work) / f"world-{seed}"
    part = Path(work) / f"curve-{seed}.json"
    res = json.loads(part.read_text()) if part.exists() else {"n": [], "map50": [], "seconds": []}
    t0 = time.perf_counter()
    if not (out / "world.json").exists():
        make_world(out, seed=seed, n_images=s["images"], size=tuple(s["size"]), object_area=(0.006, 0.03),
                   classes=("shape", "face"), splits=[tuple(x) for x in s["splits"]], workers=1)
    res.setdefault("world_seconds", time.perf_counter() - t0)
    ws = Workspace(out / "workspace")
    classes = sorted({c for c in load_labels(ws, source="human").column("category").to_pylist() if c})
    det = get_detector("dense-lite0", classes)
    cache = FeatureCache(ws, det)
    rows = catalog_rows(ws)
    train_ids = sorted(i for i, r in rows.items() if r["split"] == "train")
    val_ids = sorted(i for i, r in rows.items() if r["split"] == "val")
    labels = labels_by_image(ws, train_ids + val_ids, classes)
    train_ids = [i for i in train_ids if len(labels[i][0])]  # as `assay learn`: images with boxes only
    order = [train_ids[i] for i in np.random.default_rng([seed, 11]).permutation(len(train_ids))]
    val = build_data(det, [rows[i] for i in val_ids], cache=cache)
    gt = {i: labels[i] for i in val_ids}
    res["n_train"], res["n_val"] = len(order), len(val_ids)
    for n in sizes_for(len(order), s["first"]):
        if n in res["n"]:
            continue
        t1 = time.perf_counter()
        data = build_data(det, [rows[i] for i in order[:n]], labels, cache=cache)
        train_detector(det, data, TrainConfig(epochs=s["epochs"], seed=seed))
        p = predict(det, val)
        m = evaluate_detections(gt, {k: (v["boxes"], v["scores"], v["labels"]) for k, v in p.items()}, classes)
        res["n"].append(n)
        res["map50"].append(100.0 * m.map50)
        res["seconds"].append(time.perf_counter() - t1)
        tmp = part.with_name(part.name + ".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(part)
        print(f"seed {seed}: n={n} mAP@.5={100 * m.map50:.2f} ({res['seconds'][-1]:.0f} s)", flush=True)
    return res


def _partial(work: Path, seed: int) -> dict:
    """The curve a (possibly unfinished) run left in ``work``, with its world's split sizes."""
    c = json.loads((work / f"curve-{seed}.json").read_text())
    if "n_train" not in c:
        coco = {k: json.loads((work / f"world-{seed}" / "annotations" / f"{k}.json").read_text())
                for k in ("train", "val")}
        c["n_train"] = len({a["image_id"] for a in coco["train"]["annotations"]})
        c["n_val"] = len(coco["val"]["images"])
    return c


def cut_curves(curves: dict, max_n: int | None = None) -> dict:
    """Every curve cut at ``max_n`` (default: the largest size every curve reached), sorted by size."""
    cap = max_n if max_n is not None else min(max(c["n"]) for c in curves.values())
    out = {}
    for sd, c in curves.items():
        pts = sorted((n, m) for n, m in zip(c["n"], c["map50"]) if n <= cap)
        out[sd] = {**c, "n": [n for n, _ in pts], "map50": [m for _, m in pts], "cut_at": cap}
    return out


def synthetic_curves(seeds, seed0: int = 0) -> dict:
    """``--smoke``: detector-like curves (saturating power laws in mAP %, noise) in place of trained ones."""
    rng = np.random.default_rng(seed0)
    n = np.array(sizes_for(384), float)
    out = {}
    for sd in seeds:
        top, a, b = rng.uniform(20, 30), rng.uniform(40, 80), -rng.uniform(0.3, 0.6)
        out[sd] = {"n": n.astype(int).tolist(),
                   "map50": np.clip(top - a * n ** b + rng.normal(0, 0.3, len(n)), 0, 100).tolist()}
    return out


def evaluate_transfer(curves: dict, margins=MARGINS, n_boot: int = 200) -> list[dict]:
    """Every method of :func:`bench.estimators.evaluate_curve` on every (seed, margin, fit fraction) task.

    ``--past`` for a seed is learned on the other seeds' curves (same margin, 10% prefix), as a team's own past
    detector curves would be.
    """
    from bench.estimators import evaluate_curve
    from estimators.curves import make_curve
    from estimators.lcdb import LcdbCurve
    from estimators.prior import load_prior, selection_from_tasks, task_estimates

    prior = load_prior()
    objs = {sd: LcdbCurve(int(sd), "dense-lite0", make_curve(c["n"], c["map50"], name=f"seed {sd}"))
            for sd, c in curves.items()}
    rows = []
    for margin in margins:
        tasks = {sd: task_estimates(o.curve, fraction=0.1, margin=margin) for sd, o in objs.items()}
        for sd, o in objs.items():
            others = [t for k, t in tasks.items() if k != sd and t is not None]
            past = selection_from_tasks(others) if others else None
            for frac, r in evaluate_curve((o, prior, past, margin, n_boot)).items():
                rows.append({"seed": sd, "margin": margin, "fraction": frac, "past_curves": len(others), **r})
    return rows


def transfer_tables(rows: list[dict]) -> dict:
    """Median |log(n̂/n*)|, under-estimate and unreachable shares per method: all tasks, and per fit fraction."""
    from bench.estimators import ratio_stats

    def stats(sub):
        n0 = [r["n0"] for r in sub]
        truth = [r["n_star"] for r in sub]
        out = {}
        for k in ("power", "power+tau", "default CLI", "no prior"):
            out[k] = ratio_stats([r["est"][k] for r in sub], truth, n0,
                                 [r["status"][k] for r in sub] if k in sub[0]["status"] else None)
        has = [r for r in sub if "--past" in r["est"]]
        if has:
            out["--past"] = ratio_stats([r["est"]["--past"] for r in has], [r["n_star"] for r in has],
                                        [r["n0"] for r in has], [r["status"]["--past"] for r in has])
        return out

    res = {"all": stats(rows)} if rows else {}
    for frac in sorted({r["fraction"] for r in rows}):
        res[f"fraction {frac}"] = stats([r for r in rows if r["fraction"] == frac])
    for m in sorted({r["margin"] for r in rows}):
        res[f"margin {m:g}"] = stats([r for r in rows if r["margin"] == m])
    return res


def _fmt_n(v) -> str:
    return "unreachable" if v is None or not math.isfinite(v) else f"{v:,.0f}"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# Transfer of the shipped LCDB prior to Assay's detector curves (world seeds {doc['seeds']})", "",
             f"{s['images']} images of {s['size'][0]}×{s['size'][1]} per world (train {s['splits'][0][1]:.0%}, val "
             f"{s['splits'][1][1]:.0%}; shapes + face, 7 classes); dense-lite0 trained as `assay learn` trains it "
             f"({s['epochs']} epochs) on nested random subsets of the train split, mAP@.5 (%) on val. "
             "Fit on the points up to 10% / 20% of the whole split; target = mAP at the whole split − margin "
             f"(margins {', '.join(f'{m:g}' for m in doc['margins'])} points); n* where the measured curve first "
             "reaches it.", ""]
    c0 = next(iter(doc["curves"].values()))
    if c0.get("n_train") and c0.get("cut_at", c0["n_train"]) < c0["n_train"]:
        lines += [f"The curves are cut at n = {c0['cut_at']} of the {c0['n_train']}-image train split (the run was "
                  "stopped there, see the JSON's note): the largest size measured plays the whole split.", ""]
    lines += ["## Curves (mAP@.5 %)", "",
             "| seed | " + " | ".join(f"n={n}" for n in next(iter(doc["curves"].values()))["n"]) + " |",
             "|---|" + "---|" * len(next(iter(doc["curves"].values()))["n"])]
    for sd, c in doc["curves"].items():
        lines.append(f"| {sd} | " + " | ".join(f"{v:.1f}" for v in c["map50"]) + " |")
    lines += ["", "## Estimates against the truth", "",
              "| seed | margin | fit ≤ | n0 | n* | power | power+τ | default CLI (prior) | --past (other seeds) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["tasks"]:
        e = r["est"]
        lines.append(f"| {r['seed']} | {r['margin']:g} | {float(r['fraction']):.0%} | {r['n0']:.0f} | "
                     f"{r['n_star']:.0f} | {_fmt_n(e['power'])} | {_fmt_n(e['power+tau'])} | "
                     f"{_fmt_n(e['default CLI'])} ({r['status']['default CLI']}, {r['default_law']}) | "
                     f"{_fmt_n(e.get('--past'))}{' (' + r['status']['--past'] + ')' if '--past' in e else ''} |")
    for key, st in doc["summary"].items():
        lines += ["", f"## Summary: {key}", "",
                  "| method | tasks | median abs log(n̂/n*) | median n̂/n* | under-estimates | unreachable |",
                  "|---|---|---|---|---|---|"]
        for k in ("power", "power+tau", "default CLI", "--past", "no prior"):
            if k in st:
                v = st[k]
                lines.append(f"| {k} | {v['curves']} | {v['median_abs_log']:.3f} | {v['ratio_median']:.2f} | "
                             f"{v['under_share']:.0%} | {v['unreachable_share']:.0%} |")
    lines += ["", "n̂ below the fitted sizes counts as n0; an unreachable answer counts as an infinite ratio in the "
              "median (it is also its own column). Tasks of one seed share a curve (margins and fit fractions are "
              "not independent draws).", ""]
    if doc.get("verdict"):
        lines += ["## Where the prior helps, and where it does not", "", doc["verdict"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="Synthetic curves, no training: seconds (plumbing only).")
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--size", type=int, nargs=2, default=[256, 192])
    p.add_argument("--epochs", type=int, default=8, help="Epochs per training (the active-learning bench's 8).")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    p.add_argument("--jobs", type=int, default=1, help="Seeds trained in parallel processes.")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--work", default=None, help="Scratch folder for worlds and partial curves (resumable).")
    p.add_argument("--from-partials", action="store_true", help="No training: read the curves --work holds (an "
                   "unfinished run), every seed cut at the largest size all of them reached (or --max-n).")
    p.add_argument("--max-n", type=int, default=None, help="Cut every curve at this size (the 'whole split' of the "
                   "protocol becomes the largest size measured up to it).")
    p.add_argument("--verdict", default=None, help="A file whose text is the summary paragraph of the .md.")
    p.add_argument("--out", default=None, help="JSON path (default bench/prior_transfer.json; with --smoke a temp "
                   "file, never the committed one).")
    a = p.parse_args(argv)
    s = {"images": a.images, "size": a.size, "splits": [["train", 0.6], ["val", 0.4]], "epochs": a.epochs,
         "first": 8, "threads": a.threads}
    t0 = time.perf_counter()
    work = a.work or tempfile.mkdtemp(prefix="assay-pt-")
    if a.smoke:
        curves = synthetic_curves(a.seeds)
    elif a.from_partials:
        curves = {sd: _partial(Path(work), sd) for sd in a.seeds}
        if (Path(work) / "settings.json").exists():  # the settings the curves were trained with
            s = json.loads((Path(work) / "settings.json").read_text())
    elif a.jobs > 1 and len(a.seeds) > 1:
        with ProcessPoolExecutor(min(a.jobs, len(a.seeds)), mp_context=get_context("spawn")) as ex:
            curves = dict(zip(a.seeds, ex.map(detector_curve, a.seeds, [s] * len(a.seeds),
                                              [work] * len(a.seeds))))
    else:
        curves = {sd: detector_curve(sd, s, work) for sd in a.seeds}
    t_train = time.perf_counter() - t0
    curves = cut_curves(curves, a.max_n)
    margins = MARGINS[:1] if a.smoke else MARGINS
    rows = evaluate_transfer(curves, margins, n_boot=10 if a.smoke else a.n_boot)
    doc = {"bench": "prior_transfer", "smoke": a.smoke, "seeds": a.seeds, "settings": s, "margins": list(margins),
           "curves": {str(k): v for k, v in curves.items()}, "tasks": rows, "summary": transfer_tables(rows),
           "train_seconds": t_train, "seconds": time.perf_counter() - t0, "cpu_count": os.cpu_count(),
           "loadavg": list(os.getloadavg()), "torch_threads": a.threads,
           "verdict": Path(a.verdict).read_text().strip() if a.verdict else None,
           "note": "accuracy benchmark; wall times measured on 2 CPU cores shared with other jobs, under nice 19"}
    out = Path(a.out or (Path(work) / "smoke.json" if a.smoke else ROOT / "bench" / "prior_transfer.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    tmp.replace(out)
    md = markdown(doc)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
