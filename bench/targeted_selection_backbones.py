"""Targeted selection by backbone, against the peers a team would use today; tuned on one world seed, reported on
another.

Backbones (each embeds the pool into its own store; template matching = coarse FAISS stage + fine re-rank):
``assay-small`` (trained from scratch on the world's train split), ``lite0-s8`` / ``lite0-s16`` (the ImageNet
EfficientNet-Lite0 trunk, frozen, cut at stride 8 / 16), ``lite0ft-s8`` / ``lite0ft-s16`` (the same trunk fine-tuned
on the world's train-split labels with assay-small's ROI prototype loss, a fixed number of optimisation steps).

1. **Tune** on world ``--tune-seed``: every backbone with the library's matcher settings and ``--cell-pools`` /
   ``--candidates``; the best (template recall@100 on objects < 1%, ties by precision@10) becomes the default.
2. **Report** on world ``--seed`` with the chosen settings, on the same queries: every backbone's template matching,
   and the peers: (a) ``knn-lite0-s*``: whole-image kNN with the pretrained Lite0 (``global`` on its store),
   (b) ``patch-proposals``: FiftyOne-style patch similarity over detector proposals
   (:mod:`bench.targeted_selection_peers`), (c) chance.

Worlds, query objects (held out of the pool), metrics and chance are those of ``bench/targeted_selection.py``.

    python bench/targeted_selection_backbones.py --tune-dir /tmp/bts/w1 --tune-view-of /tmp/tsb/seed1 \\
        --report-dir /tmp/bts/w0 --report-view-of /tmp/tsb/seed0 --tune-seed 1 --seed 0 --queries 50 \\
        --tune-queries 30 --cell-pools 2 --candidates 150 --steps 100 \\
        --backbones assay-small lite0-s8 lite0-s16 lite0ft-s8

(the committed run; assay-small's and lite0-s8's measurements and the patch peer's proposals were cached in each
world's workspace by earlier invocations of the same code on the same queries, and reused). Every store is int8 at
the backbone's own stride (:data:`STORE`), whatever the product's store default. Fine-tuning time is recorded per
world (``training.<world>.<key>.train_s``).

    python bench/targeted_selection_backbones.py --smoke      # seconds; JSON under --out-dir
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import targeted_selection as ts  # noqa: E402
import targeted_selection_peers as peers  # noqa: E402

from actors.core.workspace import Workspace  # noqa: E402
from actors.selection.match import SCALES  # noqa: E402
from actors.selection.mine import Selector  # noqa: E402

# name -> (backbone spec, backbone options, fine-tune stride or None)
BACKBONES = {"assay-small": ("assay-small", {}, None),
             "lite0-s8": ("efficientnet-lite0", {"stride": 8}, None),
             "lite0-s16": ("efficientnet-lite0", {"stride": 16}, None),
             "lite0ft-s8": ("efficientnet-lite0-ft", {"stride": 8}, 8),
             "lite0ft-s16": ("efficientnet-lite0-ft", {"stride": 16}, 16)}


# every backbone's store in one format (that of the committed runs), whatever the product's store default: int8 cells
# at the backbone's own stride, so the comparison is between backbones, not codecs or cell sizes
STORE = {"codec": "int8", "pool": 1}
CACHED_ONLY = False  # --assemble: report what earlier invocations measured, compute nothing new


def ensure_backbone(ws: Workspace, key: str, steps: int, lr: float, log: dict) -> None:
    """Train what ``key`` needs on the world's train split (skipped when its checkpoint exists)."""
    from actors.features.lite0 import finetuned_checkpoint
    from actors.features.small import SMALL_CHECKPOINT, train_backbone

    spec, _, ft = BACKBONES[key]
    rel = SMALL_CHECKPOINT if spec == "assay-small" else finetuned_checkpoint(ft) if ft is not None else None
    if rel is None:
        return
    if not ws.exists(rel) and CACHED_ONLY:
        return
    timing = Path(ws.local_path("bts_train_seconds.json"))  # training wall time, kept for later invocations
    if not ws.exists(rel):
        kw = {"name": "efficientnet-lite0", "stride": ft, "lr": lr} if ft is not None else {}
        rep = train_backbone(ws, steps=steps, progress=False, **kw)
        print(f"trained {key}: val accuracy {rep.val_accuracy:.3f} in {rep.seconds:.0f} s", flush=True)
        done = json.loads(timing.read_text()) if timing.exists() else {}
        done[key] = {"train_s": rep.seconds, "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}
        timing.write_text(json.dumps(done))
    ck = torch.load(ws.path(rel), map_location="cpu", weights_only=True)  # what the checkpoint says it trained
    log[key] = {"checkpoint": rel, "steps": ck.get("steps"), "epochs": ck.get("epoch"), "seed": ck.get("seed"),
                **{k: float(v) for k, v in (ck.get("metrics") or {}).items()},
                **(json.loads(timing.read_text()).get(key, {}) if timing.exists() else {})}


def ensure_store(ws: Workspace, key: str, threads: int) -> dict:
    """Embed the pool with ``key`` (resumable) and build its global index once."""
    from actors.features.embed import embed_pool
    from actors.selection.index import build_index, index_dir

    spec, cfg, _ = BACKBONES[key]
    name = f"bts-{key}"
    if CACHED_ONLY:
        return {"store": name}
    t = time.perf_counter()
    rep = embed_pool(ws, model=spec, name=name, splits=("pool",), progress=False, local=True, backbone_cfg=cfg,
                     threads=threads, **STORE)
    if not ws.exists(f"{index_dir(name, 'global')}/manifest.json"):
        build_index(ws, name, kind="global", factory="Flat", progress=False)
    return {"store": name, "cell_stride": rep.cell_stride, "dim": rep.dim, "embed_s": time.perf_counter() - t,
            "fmap_bytes_per_image": rep.bytes_per_image}


def measure(ws: Workspace, key: str, cfg: dict, queries: list[dict], truth: tuple, methods=("template",)) -> dict:
    """Template (and ``methods``) figures of one backbone and configuration; cached in the workspace
    (``bts_measured.json``), so separate invocations (one per backbone, in parallel) add up and a re-run resumes."""
    cache = Path(ws.local_path("bts_measured.json"))
    tag = json.dumps({"backbone": key, **cfg, "methods": list(methods), "queries": [q["box"] + [q["uri"]]
                                                                                    for q in queries]},
                     sort_keys=True)
    done = json.loads(cache.read_text()) if cache.exists() else {}
    if tag in done:
        return done[tag]
    if CACHED_ONLY:
        return None
    out = _measure(ws, key, cfg, queries, truth, methods)
    done = json.loads(cache.read_text()) if cache.exists() else {}
    done[tag] = out
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(done))
    tmp.replace(cache)
    return out


def _measure(ws: Workspace, key: str, cfg: dict, queries: list[dict], truth: tuple, methods) -> dict:
    name = f"bts-{key}"
    idx = ts.build_region(ws, name, cfg["cell_pool"])
    fmaps = ts.encode_queries(ws, name, queries)
    sel = Selector(ws, preload=True)
    out = {"index_region": idx}
    for m in methods:
        sels = ts.run_method(sel, name, m, queries, fmaps, candidates=cfg["candidates"], scales=cfg["scales"])
        out[m] = ts.evaluate(sels, queries, truth, localizes=m == "template")
        b = out[m]["bins"]["<1%"]
        print(f"  {key} {m} {cfg}: R@100<1% {b['recall@100']:.3f} P@10<1% {b['precision@10']:.3f}", flush=True)
    return out


def small_bin(r: dict) -> tuple[float, float]:
    b = r["bins"]["<1%"]
    return b["recall@100"] or 0.0, b["precision@10"] or 0.0


def tune(ws: Workspace, keys: list[str], queries: list[dict], truth: tuple, a, log: dict) -> dict:
    tried, not_measured = [], []
    for key in keys:
        ensure_backbone(ws, key, a.steps, a.lr, log)
        store = ensure_store(ws, key, a.threads)
        for cp in a.cell_pools:
            for cand in a.candidates:
                cfg = {"cell_pool": cp, "candidates": cand, "scales": list(SCALES)}
                m = measure(ws, key, cfg, queries, truth)
                if m is None:
                    not_measured.append({"backbone": key, **cfg})
                    continue
                r = m["template"]
                rec, prec = small_bin(r)
                tried.append({"backbone": key, **cfg, "recall@100_<1%": rec, "precision@10_<1%": prec,
                              "latency_ms_p50": r["latency_ms_p50"],
                              "cell_stride": 16 if key.endswith("s16") else 8})
    best = max(tried, key=lambda t: (round(t["recall@100_<1%"], 3), round(t["precision@10_<1%"], 3)))
    return {"tried": tried, "not_measured": not_measured,
            "chosen": {k: best[k] for k in ("backbone", "cell_pool", "candidates", "scales")},
            "criterion": "template recall@100 on objects < 1% (3 decimals), ties by precision@10"}


def report(ws: Workspace, keys: list[str], chosen: dict, queries: list[dict], truth: tuple, a, log: dict,
           out_dir: Path) -> dict:
    cfg = {k: chosen[k] for k in ("cell_pool", "candidates", "scales")}
    res: dict = {"config": cfg, "n_queries": len(queries), "backbones": {}, "chance": ts.chance(queries, truth)}
    keys = list(keys) + [chosen["backbone"]] * (chosen["backbone"] not in keys)
    for key in keys:
        ensure_backbone(ws, key, a.steps, a.lr, log)
        store = ensure_store(ws, key, a.threads)
        methods = ("template", "global") if key in ("lite0-s8", "lite0-s16") else ("template",)
        m = measure(ws, key, cfg, queries, truth, methods)
        if m is None:
            res.setdefault("not_measured", []).append(key)
            continue
        res["backbones"][key] = {"store": store, **m}
    peers_out: dict = {}
    for key in ("lite0-s8", "lite0-s16"):
        if key in res["backbones"]:
            peers_out[f"knn-{key}"] = res["backbones"][key].pop("global")
    if a.patch and not (CACHED_ONLY and not (out_dir / "patch_peer.npz").exists()):
        prep = peers.prepare(ws, out_dir / "patch_peer.npz", n_train=a.patch_train, epochs=a.patch_epochs,
                             top_n=a.patch_top_n)
        r = ts.evaluate(peers.run(prep, queries), queries, truth, localizes=True)
        peers_out["patch-proposals"] = {**r, "info": {k: float(v) for k, v in
                                                                               prep["info"].items()}}
        print(f"  patch peer: R@100<1% {small_bin(r)[0]:.3f} P@10<1% {small_bin(r)[1]:.3f}", flush=True)
    res["peers"] = peers_out
    ch = res["chance"]["bins"]["<1%"]
    best_peer = max((small_bin(v)[0] for v in peers_out.values()), default=0.0)
    best_key = chosen["backbone"] if chosen["backbone"] in res["backbones"] else None
    t_rec, t_prec = small_bin(res["backbones"][best_key]["template"]) if best_key else (None, None)
    res["summary"] = {"default_backbone": chosen["backbone"], "template_recall@100_<1%": t_rec,
                      "template_precision@10_<1%": t_prec, "best_peer_recall@100_<1%": best_peer,
                      "recall_over_best_peer": t_rec / best_peer if best_peer and t_rec is not None else None,
                      "chance_recall@100_<1%": ch["recall@100"], "chance_precision@10_<1%": ch["precision@10"],
                      "precision_over_chance": t_prec / ch["precision@10"] if ch["precision@10"] and t_prec is not None
                      else None}
    return res


def markdown(res: dict) -> str:
    rep = res["report"]
    lines = [f"Report world {res['report_dir']} (seed {res['report_seed']}; chosen on seed {res['tune_seed']}): "
             f"{rep['n_pool']} pool images, {rep['n_queries']} held-out queries; chosen {res['tuning']['chosen']}",
             "", "| method | n (<1%) | P@10 | R@100 | loc@10 |", "|---|---|---|---|---|"]
    rows = [(f"template, {k}", v["template"]) for k, v in rep["backbones"].items()]
    rows += list(rep["peers"].items()) + [("chance", rep["chance"])]
    for name, r in rows:
        b = r["bins"]["<1%"]
        loc = "–" if b.get("loc@10") is None else f"{b['loc@10']:.3f}"
        lines.append(f"| {name} | {b['n']} | {b['precision@10']:.3f} | {b['recall@100']:.3f} | {loc} |")
    lines += ["", f"Summary: {json.dumps(rep['summary'])}", "", f"Tuning ({res['tuning']['criterion']}):", "",
              "| backbone | cell_pool | candidates | R@100 (<1%) | P@10 (<1%) | p50 ms |", "|---|---|---|---|---|---|"]
    for t in res["tuning"]["tried"]:
        lines.append(f"| {t['backbone']} | {t['cell_pool']} | {t['candidates']} | {t['recall@100_<1%']:.3f} | "
                     f"{t['precision@10_<1%']:.3f} | {t['latency_ms_p50']:.0f} |")
    lines += ["", "Trained backbones (per world; train_s: wall time of the training run, on the loaded machine):", "",
              "| world | backbone | steps | val crop accuracy | train s |", "|---|---|---|---|---|"]
    for world, log in res["training"].items():
        for key, t in log.items():
            ts_ = t.get("train_s")
            lines.append(f"| {world} | {key} | {t.get('steps')} | {t.get('val_accuracy', float('nan')):.3f} | "
                         f"{'–' if ts_ is None else f'{ts_:.0f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune-dir", required=False, help="world folder of the tuning seed (made when missing)")
    ap.add_argument("--report-dir", required=False, help="world folder of the report seed (made when missing)")
    ap.add_argument("--tune-view-of", help="make --tune-dir as a 500-image view of this bigger world (make_view)")
    ap.add_argument("--report-view-of", help="make --report-dir as a 500-image view of this bigger world")
    ap.add_argument("--n-images", type=int, default=2000, help="world size when a world has to be made")
    ap.add_argument("--tune-seed", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--tune-queries", type=int, default=30)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--report-backbones", nargs="+", default=None, help="default: --backbones")
    ap.add_argument("--cell-pools", type=int, nargs="+", default=[2])
    ap.add_argument("--candidates", type=int, nargs="+", default=[400])
    ap.add_argument("--steps", type=int, default=300, help="optimisation steps of every trained backbone")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (Lite0)")
    ap.add_argument("--no-patch", dest="patch", action="store_false", help="skip the detector-proposal peer")
    ap.add_argument("--patch-train", type=int, default=150, help="train images of the proposal detector")
    ap.add_argument("--patch-epochs", type=int, default=12)
    ap.add_argument("--patch-top-n", type=int, default=20, help="proposals kept per pool image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune-only", action="store_true", help="measure --backbones on the tuning world and stop "
                    "(results cached in its workspace: separate invocations add up)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out-dir", default="/tmp/assay-bench-tsb")
    ap.add_argument("--out", default=None, help="JSON path (default bench/targeted_selection_backbones.json)")
    ap.add_argument("--assemble", action="store_true", help="write the JSON from what earlier invocations "
                    "measured (cached in each workspace); nothing is trained, embedded or measured anew")
    a = ap.parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = a.assemble
    if a.tune_seed == a.seed:
        ap.error("--tune-seed must differ from --seed")
    out_dir, size = Path(a.out_dir), (512, 384)
    if a.smoke:
        a.n_images, a.queries, a.tune_queries, a.steps, a.candidates = 48, 4, 4, 2, [20]
        a.backbones, a.patch_train, a.patch_epochs = ["lite0-s16", "lite0ft-s16"], 8, 1
        size = (192, 144)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = Path(a.out or (out_dir / "targeted_selection_backbones.json" if a.smoke
                         else Path(__file__).with_name("targeted_selection_backbones.json")))
    torch.set_num_threads(a.threads)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    t0, log = time.perf_counter(), {"tune": {}, "report": {}}
    for folder, src, seed in ((a.tune_dir, a.tune_view_of, a.tune_seed), (a.report_dir, a.report_view_of, a.seed)):
        if src and folder and not (Path(folder) / "workspace/catalog/images.parquet").exists():
            make_view(Path(src), Path(folder), seed)
    ws_t, world_t = _world(a.tune_dir, out_dir, a.tune_seed, a.n_images, size)
    truth_t = ts.load_truth(ws_t)
    tq = ts.pick_queries(truth_t[0], a.tune_queries, a.tune_seed)
    tuning = {**tune(ws_t, a.backbones, tq, truth_t, a, log["tune"]), "n_queries": len(tq), "world": world_t,
              "chance": ts.chance(tq, truth_t), "n_pool": truth_t[3]}
    if a.tune_only:
        print(json.dumps(tuning["tried"], indent=1))
        return
    ws_r, world_r = _world(a.report_dir, out_dir, a.seed, a.n_images, size)
    truth_r = ts.load_truth(ws_r)
    rq = ts.pick_queries(truth_r[0], a.queries, a.seed)
    rep = report(ws_r, a.report_backbones or a.backbones, tuning["chosen"], rq, truth_r, a, log["report"],
                 Path(ws_r.local_path(".")))
    rep["n_pool"] = truth_r[3]
    res = {"smoke": a.smoke, "tune_seed": a.tune_seed, "report_seed": a.seed, "report_dir": str(a.report_dir),
           "tune_dir": str(a.tune_dir), "image_size": list(size), "threads": a.threads, "steps": a.steps,
           "lr": a.lr, "tuning": tuning, "report": rep, "training": log, "report_world": world_r,
           "loadavg": list(os.getloadavg()), "wall_s": time.perf_counter() - t0,
           "command": "python bench/targeted_selection_backbones.py " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:])}
    md = markdown(res)
    print(md)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2, default=float) + "\n")
    tmp.replace(out)
    out.with_suffix(".md").write_text(md)
    print(f"wrote {out} and .md")


VIEW = {"train": 125, "val": 25, "pool": 312}  # the bench's split shares of a 500-image world


def make_view(src: Path, dst: Path, seed: int) -> None:
    """A 500-image world view of a bigger world in ``src``: :data:`VIEW` images per split drawn by ``seed``, every
    query-split image kept; images are shared (catalog rows copied, URIs unchanged)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = pq.read_table(src / "workspace/catalog/images.parquet")
    rows, rng, keep = img.to_pylist(), np.random.default_rng(seed), set()
    for split, n in VIEW.items():
        ids = sorted(r["image_id"] for r in rows if r["split"] == split)
        keep |= {ids[i] for i in rng.permutation(len(ids))[:n]}
    keep |= {r["image_id"] for r in rows if r["split"] == "queries"}
    (dst / "workspace/catalog").mkdir(parents=True, exist_ok=True)
    pq.write_table(img.filter(pa.array([r["image_id"] in keep for r in rows])), dst / "workspace/catalog/images.parquet")
    lab = pq.read_table(src / "workspace/catalog/labels.parquet")
    pq.write_table(lab.filter(pa.array([i in keep for i in lab.column("image_id").to_pylist()])),
                   dst / "workspace/catalog/labels.parquet")
    (dst / "bench_prepare.json").write_text(json.dumps({"seed": seed, "view_of": str(src), "splits": VIEW}))


def _world(folder: str | None, out_dir: Path, seed: int, n: int, size: tuple[int, int]) -> tuple[Workspace, dict]:
    """The world in ``folder`` (made when missing, with the targeted-selection splits); its generation record."""
    from actors.catalog.world import make_world

    d = Path(folder or out_dir / f"seed{seed}")
    if not (d / "workspace" / "catalog" / "images.parquet").exists():
        s = make_world(d, seed=seed, n_images=n, size=size, progress=False, workers=2, splits=ts.SPLITS)
        (d / "bench_prepare.json").write_text(json.dumps({"seed": seed, "n_images": n, "world_seconds": s.seconds}))
    info = json.loads((d / "bench_prepare.json").read_text()) if (d / "bench_prepare.json").exists() else {}
    return Workspace(d / "workspace"), info


if __name__ == "__main__":
    main()
