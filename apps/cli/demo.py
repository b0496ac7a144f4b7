"""``assay demo``: the whole flow on the embedded world, offline, on whatever machine this is.

world → catalog → detector learning curve (active learning) → embed (Ray) → index → mine (template vs. global) →
estimate → plan → compress the detector (latency budget 0.5, a short fine-tune, few val images: the before/after
table).

Targeted selection uses the default backbone of ``assay embed`` (the ImageNet EfficientNet-Lite0 trunk, pretrained
and frozen: nothing to train). Every step is resumable: a second ``assay demo`` on the same folder reuses the world,
the learning curve, the feature shards and the index, and re-runs only the cheap steps. Each step calls one library
function; this module only chooses the demo's settings and prints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import JsonOpt, SeedOpt
from apps.cli.output import console, emit, fmt, styled, table, whole_samples

DEMO_DIR = "./assay-demo"


def _step(title: str) -> float:
    console.rule(styled((title, "bold")))
    return time.perf_counter()


def _done(t0: float, what: str, steps: dict | None = None) -> None:
    secs = time.perf_counter() - t0
    console.print(styled((f"{what} in {secs:.1f}s", "dim")))
    if steps is not None:
        steps[what] = round(secs, 1)


def _world(root: Path, ws_dir: Path, n_images: int, seed: int):
    from actors.core.workspace import Workspace
    from actors.catalog.world import make_world

    ws = Workspace(ws_dir)
    if (root / "world" / "world.json").exists():
        console.print(f"reusing the world in {root / 'world'}")
        return ws
    s = make_world(root / "world", seed=seed, n_images=n_images, workspace=ws, workers=os.cpu_count() or 1,
                   progress=True)
    console.print(f"{s.n_images} images, {s.n_objects} objects, {len(s.categories)} categories "
                  f"({', '.join(f'{k} {v}' for k, v in s.images_per_split.items())})")
    return ws


def _catalog(ws) -> dict:
    from actors.catalog.schema import catalog_summary

    summary = catalog_summary(ws)
    rows = [(split, sum(c.values()), c.get("ok", 0), c.get("error", 0))
            for split, c in summary["images_by_split"].items()]
    console.print(table("catalog", ["split", "images", "ok", "error"], rows))
    return summary


DEMO_LEARN = dict(initial=5, budget=30, rounds=2, min_steps=200, epochs=20)  # chosen on world seed 0: 3.1 -> 18.8


def _curve(ws, seed: int):
    """Measure the detector's learning curve with a short active-learning run (mAP@.5 on the val split vs labeled
    images); reused when already there. Every round trains at least ``min_steps`` steps, so a small labeled set is
    not also an undertrained model: the curve shows what more labels buy."""
    from actors.active.rounds import LearnConfig, run_learning
    from actors.catalog.schema import load_images
    from actors.detection.train import TrainConfig

    splits = load_images(ws, columns=["split"]).column("split").to_pylist()
    n_train, n_pool = splits.count("train"), splits.count("pool")
    d = DEMO_LEARN
    cfg = LearnConfig(rounds=d["rounds"], budget=max(1, min(d["budget"], n_pool // 3)),
                      initial=max(1, min(d["initial"], n_train)), strategy="uncertainty_robustness", max_pool=60,
                      max_eval=40, seed=seed,
                      train=TrainConfig(epochs=d["epochs"], min_steps=d["min_steps"], seed=seed))
    console.print("mAP@.5: the detector's mean over categories of average precision on the val images, a detection "
                  "counting when its box overlaps a labeled box by half or more; 0% finds nothing, 100% finds every "
                  "object with no false alarm")
    seen: dict[int, float] = {}

    def said(r: int, row: dict) -> None:
        seen[r] = row["value"]
        vs = f", {row['value'] / seen[0]:.1f}x round 0" if r and seen.get(0, 0) > 0 else ""
        console.print(f"round {r}: {row['n_labeled']} labeled images, mAP@.5 {row['value']:.1f}%{vs} "
                      f"({row['seconds']:.0f}s)")

    rep = run_learning(ws, cfg, run_id="demo-learn", progress=True, on_round=said)
    n, v = rep.n_labeled, rep.map50
    console.print(table("learning curve (detector mAP@.5 on val, active learning: uncertainty + robustness)",
                        ["labeled images", "mAP@.5 %", "x round 0"],
                        [(a, f"{b:.1f}", f"{b / v[0]:.1f}" if v[0] > 0 else "–") for a, b in zip(n, v)]))
    return n, v


def _embed_and_index(ws) -> dict:
    from actors.features.embed import embed_pool
    from actors.selection.index import add_to_index

    rep = embed_pool(ws, splits=("pool",), progress=True)  # the default backbone: pretrained, nothing to train
    console.print(f"embedded {rep.n_embedded} images this run with {rep.backbone} ({rep.shards_skipped} shards "
                  f"already done, {rep.n_errors} errors), {rep.bytes_per_image / 1024:.0f} KiB per image")
    mans = {kind: add_to_index(ws, rep.model, kind=kind, progress=False) for kind in ("region", "global")}
    console.print(f"index: {mans['region'].n:,} region vectors ({mans['region'].factory}), "
                  f"{mans['global'].n:,} whole-image vectors")
    return {"embed": vars(rep), "index": {k: vars(m) for k, m in mans.items()}}


def _query(ws):
    """The first held-out query image and its smallest labelled object."""
    from actors.catalog.schema import load_images, load_labels

    imgs = load_images(ws, split="queries").to_pylist()
    labels = load_labels(ws, split="queries").to_pylist()
    if not imgs or not labels:
        raise UserError("the demo world has no query images with labels; use more --images")
    by_id = {r["image_id"]: r for r in imgs}
    lab = min((r for r in labels if r["image_id"] in by_id),
              key=lambda r: (r["image_id"] != imgs[0]["image_id"], (r["x1"] - r["x0"]) * (r["y1"] - r["y0"])))
    return by_id[lab["image_id"]], lab


def _mine(ws, top_k: int) -> dict:
    from actors.catalog.schema import load_images, load_labels
    from actors.selection.mine import mine

    img, lab = _query(ws)
    box = (lab["x0"], lab["y0"], lab["x1"], lab["y1"])
    pool_classes: dict[str, set] = {}
    for r in load_labels(ws, split="pool").to_pylist():
        pool_classes.setdefault(r["image_id"], set()).add(r["category"])
    out = {"query": {"uri": img["uri"], "box": box, "category": lab["category"],
                     "area_pct": 100 * (box[2] - box[0]) * (box[3] - box[1]) / (img["width"] * img["height"])}}
    console.print(f"query: {lab['category']} at {tuple(round(b) for b in box)} in {Path(img['uri']).name} "
                  f"({out['query']['area_pct']:.2f}% of the image)")
    n_pool = len(load_images(ws, split="pool"))
    chance = sum(lab["category"] in c for c in pool_classes.values()) / max(1, n_pool)
    out["chance"] = chance
    for method in ("template", "global"):
        sel = mine(ws, image=img["uri"], boxes=[box], top_k=top_k, method=method)
        hits = [(h.image_id, h.score, lab["category"] in pool_classes.get(h.image_id, set()), h.box)
                for h in sel.hits]
        precision = sum(h[2] for h in hits) / max(1, len(hits))
        out[method] = {"query_id": sel.query_id, "precision": precision,
                       "hits": [{"image_id": i, "score": s, "has_class": c, "box": b} for i, s, c, b in hits]}
        if method == "template":
            console.print(table(f"top {top_k} by template matching (selections/{sel.query_id}.parquet)",
                                ["rank", "image_id", "score", "contains " + lab["category"], "matched box"],
                                [(r + 1, i, s, "yes" if c else "no", ",".join(f"{v:.0f}" for v in b))
                                 for r, (i, s, c, b) in enumerate(hits)]))
        console.print(f"{method}: precision@{top_k} = {precision:.2f} (share of the top {top_k} that hold a "
                      f"{lab['category']}; a random pick: {chance:.2f}, so {precision / max(chance, 1e-9):.1f}x chance)")
        if method == "template":
            sheet = _sheet(ws, img, box, sel, lambda h: lab["category"] in pool_classes.get(h.image_id, ()))
            out[method]["sheet"] = str(sheet)
            console.print(f"the hits, matched boxes drawn (green: holds a {lab['category']}, red: does not): {sheet}")
    return out


def _sheet(ws, img: dict, box, sel, correct) -> Path:
    """The template hits as a contact sheet next to the selection: selections/<query_id>.png."""
    from actors.catalog.schema import load_images
    from actors.core.images import load_image
    from actors.selection.sheet import contact_sheet

    uris = {r["image_id"]: r["uri"] for r in load_images(ws, split="pool").to_pylist()}
    return contact_sheet(load_image(img["uri"]), [box], sel.hits, lambda i: load_image(uris[i]),
                         ws.local_path(f"selections/{sel.query_id}.png"), correct=correct)


def _estimate_and_plan(n, v) -> dict:
    from estimators.curves import CurveError, make_curve
    from estimators.loc import DEFAULT_CAP_FACTOR, plan_collection
    from estimators.prior import load_prior
    from estimators.requirement import estimate_requirement

    try:
        curve = make_curve(n, v, name="detector val mAP@.5")
    except CurveError as e:  # e.g. a tiny --images world whose detector found nothing in any round
        console.print(f"no estimate or plan: the learning curve cannot be fitted ({e}); a larger world "
                      "(--images) gives the detector enough labeled images to learn from")
        return {"skipped": str(e)}
    target = min(99.0, round(max(v) + 5.0))
    prior = load_prior()  # as `assay estimate` / `assay plan` without --past
    source = f"default: the shipped {prior.describe()}"
    console.print(f"using {source}")
    est = estimate_requirement(curve, target, selection=prior.selection, prior=source).to_dict()
    lo, hi = est["interval"]
    if est["required_n"] is None:
        console.print(f"to reach {target:g}% val mAP@.5: unreachable by the fitted curve "
                      f"({est.get('reason') or 'no reason given'}; law {est['law']}, now {max(n):,} images)")
    else:
        console.print(f"to reach {target:g}% val mAP@.5: n = {est['required_n']:,.0f} labeled images "
                      f"(interval {fmt(lo) if lo is not None else 'unbounded'} – "
                      f"{fmt(hi) if hi is not None else 'unbounded'}, law {est['law']}; now {max(n):,})")
    plan = plan_collection(curve, target, cost=1.0, risk=0.1, rounds=3,  # the cap of `assay plan` and the app
                          correction=prior.correction("power")).to_dict()
    console.print(table(f"LOC plan: cost 1 per image, acceptable risk 10%, at most {DEFAULT_CAP_FACTOR:g}x today's "
                        "set, 3 rounds",
                        ["round", "collect", "cumulative total"],
                        [(i + 1, a, t) for i, (a, t) in
                         enumerate(whole_samples(plan["amounts"], plan["totals"], max(n)))]))
    console.print(f"expected cost {fmt(plan['expected_cost'])}, risk of missing the target {plan['risk']:.1%}"
                  + (f" ({plan['note']})" if plan.get("note") else ""))
    return {"target": target, "estimate": est, "plan": plan}


DEMO_COMPRESS = dict(latency=0.5, finetune_epochs=1, max_val_images=12, max_train_images=12, taylor_images=4,
                     timing_runs=5, lut_fractions=(0.25, 0.5, 1.0), distill_steps=20)


def compress_note(report: dict) -> str:
    """What the demo's compression is: a smoke run of every step, whose latency is measured but whose accuracy
    change, on a handful of images after a few training steps, says little about a real compression."""
    cfg, n_val = report.get("config", {}), report["models"]["original"]["accuracy"].get("n_images")
    return (f"note: this is a quick pass through every compression step, not a real compression: "
            f"{cfg.get('distill_steps')} distillation steps (default 1500) on {cfg.get('max_train_images')} "
            f"training images, accuracy on {n_val} val images. The latency is measured; the mAP change is not "
            "the one a full run gives. For that: assay compress -w WS --run RUN --out DIR (the defaults).")


def _compress(ws, ws_dir: Path) -> dict:
    """Compress the learning run's detector to half its latency (:data:`DEMO_COMPRESS`: a short distillation,
    12 val images so it stays quick) and print the before/after table and what it is; a finished report is
    reused."""
    import json

    from actors.compression.report import CompressConfig, compress_run, summary

    out = ws_dir / "runs" / "demo-learn" / "compressed"
    if (out / "report.json").exists():
        console.print(f"reusing the compressed model in {out}")
        rep = json.loads((out / "report.json").read_text())
    else:
        rep = compress_run(ws, "demo-learn", str(out), CompressConfig(**DEMO_COMPRESS), log=console.print)
    console.print(summary(rep).split("\n\nPruning plan")[0])
    note = compress_note(rep)
    console.print(note)
    console.print(f"wrote {out}/model.onnx, model.pt, report.json, summary.md")
    return {"out": str(out), "note": note, "models": {k: {"params": m["params"], "macs": m["macs"], "file_bytes": m["file_bytes"],
                                            "latency_ms": m["latency_ms"], "accuracy": m["accuracy"]}
                                        for k, m in rep["models"].items()}}


def demo(out: Annotated[Optional[str], typer.Option(
             "--out", help=f"Folder for the demo world and workspace (default {DEMO_DIR}; with -w only: the "
                           "workspace folder, the world in WORKSPACE/world).")] = None,
         workspace: Annotated[Optional[str], typer.Option(
             "--workspace", "-w", help="Workspace the demo uses (default OUT/workspace).")] = None,
         images: Annotated[int, typer.Option("--images", help="World size (images).")] = 600,
         top_k: Annotated[int, typer.Option("--top-k", help="Hits to show.")] = 10,
         train_minutes: Annotated[float, typer.Option(
             "--train-minutes", hidden=True,
             help="Ignored: the demo no longer trains a backbone (kept so older command lines run).")] = 1.5,
         seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Run the whole flow on the embedded world (no data, no GPU, no network needed)."""
    root = Path(out or (workspace if workspace else DEMO_DIR)).resolve()
    ws_dir = Path(workspace).resolve() if workspace else root / "workspace"
    result: dict = {"out": str(root), "workspace": str(ws_dir), "step_seconds": {}}
    steps = result["step_seconds"]
    console.quiet = as_json  # --json: stdout carries only the JSON document (progress bars go to stderr)
    start = time.perf_counter()
    try:
        t0 = _step("1. world")
        ws = _world(root, ws_dir, images, seed)
        _done(t0, "world", steps)
        t0 = _step("2. catalog")
        result["catalog"] = _catalog(ws)
        t0 = _step("3. the detector's learning curve (active learning)")
        n, v = _curve(ws, seed)
        result["curve"] = {"n": n, "value": v}
        _done(t0, "learning curve", steps)
        t0 = _step("4. embed the pool on Ray and index it")
        result.update(_embed_and_index(ws))
        _done(t0, "embed + index", steps)
        t0 = _step("5. targeted selection")
        result["mine"] = _mine(ws, top_k)
        _done(t0, "mining", steps)
        _step("6. how much more data, and when to collect it")
        result["estimate"] = _estimate_and_plan(n, v)
        t0 = _step("7. compress the detector (latency budget 0.5)")
        result["compress"] = _compress(ws, ws_dir)
        _done(t0, "compression", steps)
        result["seconds"] = round(time.perf_counter() - start, 1)
        console.print(f"demo finished in {result['seconds']:.0f}s (wall time of every step above)")
    finally:
        console.quiet = False  # also when a step fails: the console is shared by every later command
    if as_json:
        emit(result, True, lambda r: None)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
