"""The detector's learnability ceiling: each detector trained on *all* training labels of the default world.

What a detector can reach when labels are not the limit bounds everything built on it (active learning, the rare
class, compression). The world is the targeted-selection benchmark's (:func:`bench.targeted_selection.prepare_world`:
the default emoji world, 512×384, 20 categories); the detector trains on every labeled image outside ``val`` and
``queries`` and is evaluated on

* ``val``: new images of the drawings it trained on (new placements, sizes, backgrounds, clutter);
* ``queries``: images of *held-out drawings* of each category (category-level generalisation, the harder test).

Reported per detector and evaluation split: mAP@.5 and mAP@[.5:.95] over all objects and by object area
(``<1%`` of the image, ``>=1%``), the training time on this machine's cores (trunk features cached once, timed apart),
and the number of ground-truth boxes behind each figure. ``--set key=value`` overrides head/training options
(``depth=3``, ``epochs=40``, ``lr=0.002``…) for the measured attempts.

    python bench/detector_ceiling.py --world /tmp/dc/seed1 --seed 1 --n-images 1000 --out /tmp/dc/seed1.json  # tuning
    python bench/detector_ceiling.py --world /tmp/dc/seed0 --seed 0 --n-images 1000 --tuning-json /tmp/dc/seed1.json
    python bench/detector_ceiling.py --world /tmp/dc/seed0 --seed 0 --n-images 1000 --append \
        --detectors fcos-head-lite0 retinanet-head-lite0 ssdlite-head-lite0                  # the torchvision peers
    python bench/detector_ceiling.py --smoke --out-dir /tmp/dc-smoke                               # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.detection.data import FeatureCache, build_data, catalog_rows, labels_by_image  # noqa: E402
from actors.detection.evaluate import evaluate_detections  # noqa: E402
from actors.detection.models import DEFAULT_DETECTOR, get_detector  # noqa: E402
from actors.detection.train import TrainConfig, predict, train_detector  # noqa: E402
from actors.catalog.schema import LABELS  # noqa: E402
from bench.targeted_selection import SPLITS, prepare_world  # noqa: E402

EVAL_SPLITS = ("val", "queries")
AREA_BINS = {"<1%": (0.0, 0.01), ">=1%": (0.01, 1.0)}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_sets(items: list[str]) -> tuple[dict, dict]:
    """``key=value`` overrides split into (detector options, TrainConfig fields)."""
    det, train = {}, {}
    for it in items:
        k, _, v = it.partition("=")
        (train if k in TRAIN_KEYS else det)[k] = _value(v)
    return det, train


def run_one(ws, name: str, classes: list[str], rows: dict, opts: dict, train_opts: dict) -> dict:
    """Train ``name`` on the training rows, evaluate on each evaluation split; figures and timings."""
    det = get_detector(name, classes, **opts)
    train_rows = [r for r in rows.values() if r["split"] not in EVAL_SPLITS]
    labels = labels_by_image(ws, list(rows), classes, sources=("human", "world", "coco"))
    train_rows = [r for r in train_rows if len(labels[r["image_id"]][1])]
    cache = FeatureCache(ws, det) if det.cached else None
    t = time.perf_counter()
    data = build_data(det, train_rows, labels, cache=cache)
    evals = {s: build_data(det, [r for r in rows.values() if r["split"] == s], labels, cache=cache)
             for s in EVAL_SPLITS}
    feat_s = time.perf_counter() - t
    cfg = TrainConfig(**{**TrainConfig().__dict__, **train_opts})
    res = train_detector(det, data, cfg)
    out = {"detector": name, "options": opts, "train": cfg.__dict__, "n_train_images": len(data),
           "n_train_boxes": int(sum(len(b) for b in data.boxes)), "features_s": feat_s, "train_s": res.seconds,
           "final_loss": res.losses[-1] if res.losses else None, "eval": {}}
    for split, ed in evals.items():
        t = time.perf_counter()
        dets = predict(det, ed)
        pred_s = time.perf_counter() - t
        gt = {i: (b.numpy(), lab.numpy()) for i, b, lab in zip(ed.ids, ed.boxes, ed.labels)}
        w, h = ed.sizes[0]
        ranges = {k: (lo * w * h, hi * w * h) for k, (lo, hi) in AREA_BINS.items()}
        rep = evaluate_detections(gt, {k: (v["boxes"], v["scores"], v["labels"]) for k, v in dets.items()},
                                  classes, area_ranges=ranges)
        out["eval"][split] = {"map50": rep.map50, "map": rep.map, "n_images": rep.n_images, "n_gt": rep.n_gt,
                              "by_area": rep.by_area, "per_class_ap50": rep.per_class_ap50,
                              "predict_images_per_s": len(ed) / max(pred_s, 1e-9)}
    return out


def _fmt(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(result: dict) -> str:
    lines = [f"# Detector ceiling (world seed {result['seed']}, {result['n_images']} images, "
             f"{result['threads']} threads)", "",
             "mAP in percent. `val`: new images of the training drawings; `queries`: held-out drawings.", ""]
    lines += _table(result["runs"])
    if "tuning" in result:
        t = result["tuning"]
        lines += ["", f"## Tuning world (seed {t['seed']}, {t['n_images']} images)", ""] + _table(t["runs"])
    return "\n".join(lines) + "\n"


def _table(runs: list[dict]) -> list[str]:
    lines = ["| detector | options | split | mAP@.5 | mAP@.5 <1% | mAP@.5 >=1% | mAP@[.5:.95] | boxes (<1% / >=1%) "
             "| train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        opt = ", ".join(f"{k}={v}" for k, v in {**r["options"], **r.get("overrides", {})}.items()) or "defaults"
        for split, e in r["eval"].items():
            a, b = e["by_area"]["<1%"], e["by_area"][">=1%"]
            lines.append(f"| {r['detector']} | {opt} | {split} | {_fmt(e['map50'])} | {_fmt(a['map50'])} | "
                         f"{_fmt(b['map50'])} | {_fmt(e['map'])} | {a['n_gt']} / {b['n_gt']} | {r['train_s']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=Path, help="world directory (made when missing); default <out-dir>/seed<seed>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--detectors", nargs="*", default=[DEFAULT_DETECTOR],
                    help="detectors to train (none with --append --tuning-json: only attach the tuning runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a head/detector option or a TrainConfig field, for every detector")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/assay-bench-dc"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--append", action="store_true", help="add these runs to --out instead of replacing it")
    ap.add_argument("--tuning-json", type=Path,
                    help="a run of this script on the tuning world: kept as the result's 'tuning' (seed, runs)")
    ap.add_argument("--smoke", action="store_true", help="a 40-image world, 1 epoch: plumbing only")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sets = list(a.set)
    if a.smoke:
        a.n_images, sets = 40, sets + ["epochs=1"]
        a.out = a.out_dir / "detector_ceiling.json"
    world = a.world or a.out_dir / f"seed{a.seed}"
    ws, _ = prepare_world(world, a.n_images, a.seed, 0, train=False)
    rows = catalog_rows(ws)
    classes = sorted({r["category"] for r in ws.read_table(LABELS).to_pylist()})
    det_opts, train_opts = parse_sets(sets)
    result = {"smoke": a.smoke, "seed": a.seed, "n_images": a.n_images, "threads": a.threads, "splits": [list(s) for s in SPLITS],
              "classes": classes, "load_avg": os.getloadavg(), "runs": []}
    if a.append and a.out.exists():
        earlier = json.loads(a.out.read_text())
        result["runs"] = earlier["runs"]
        if "tuning" in earlier:
            result["tuning"] = earlier["tuning"]
    if a.tuning_json:
        tuned = json.loads(a.tuning_json.read_text())
        result["tuning"] = {"seed": tuned["seed"], "n_images": tuned["n_images"], "runs": tuned["runs"]}
    result["command"] = "python bench/detector_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in a.detectors:
        r = run_one(ws, name, classes, rows, det_opts, train_opts)
        r["overrides"] = dict(train_opts)
        r["load_avg_after"] = os.getloadavg()
        result["runs"].append(r)
        for split, e in r["eval"].items():
            print(f"{name} {split}: mAP@.5 {_fmt(e['map50'])} (<1% {_fmt(e['by_area']['<1%']['map50'])}, "
                  f">=1% {_fmt(e['by_area']['>=1%']['map50'])}), mAP {_fmt(e['map'])}; train {r['train_s']:.0f}s",
                  flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(a.out)
    a.out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
