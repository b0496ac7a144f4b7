"""How good are assay-small's region features for object-level template matching?

Trains (or loads) ``assay-small`` on a world's train split, then measures on its val split:

* crop accuracy over (classes + background) from :func:`actors.features.backbones.train_backbone` vs majority / chance;
* an object-retrieval proxy of the real use: every val object's box vector (the matcher's own definition,
  :func:`actors.features.regions.region_vectors` on the :class:`~actors.features.encoder.RegionEncoder` grid:
  ROI-align 1×1, centred with the mean cell vector of the images used, unit norm) is a query against all other val objects plus as many random background boxes; mAP and
  precision@10 of retrieving same-class objects. The same proxy runs for baselines (random-init trunk, mean/std RGB
  of the box) and for a random ranking (chance).

Run::

    python -c "from actors.catalog.world import make_world; make_world('/tmp/bq_world', seed=0, n_images=2000, workers=2)"
    python bench/backbone_quality.py --world /tmp/bq_world --tag after

Prints a table of every tag stored so far and writes ``bench/backbone_quality.json`` (results keyed by tag).
``--n-images N`` generates the world first when ``--world`` holds none (``--world-seed``). ``--smoke``: a 40-image
world of 192x144 in a temporary folder, 3 s of training, JSON to ``--out`` (seconds; checks the pipeline only).
Training stops at ``--max-minutes`` of wall time, so on a loaded machine it takes fewer steps: the JSON records
the epochs it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.catalog.schema import IMAGES, LABELS
from actors.features.backbones import get_backbone
from actors.features.small import SMALL_CHECKPOINT, train_backbone
from actors.features.encoder import CELL_STRIDE, RegionEncoder
from actors.features.regions import box_vectors, centre_normalize
from actors.core.images import load_image
from actors.core.workspace import Workspace

HERE = os.path.dirname(os.path.abspath(__file__))
BACKGROUND = "__background__"


# ------------------------------------------------------------------------------------------------ data
def val_objects(ws: Workspace, split: str, max_images: int) -> dict[str, list[dict]]:
    """image uri -> its labeled boxes, for the first ``max_images`` images of ``split`` (sorted ids)."""
    imgs = ws.read_table(IMAGES, columns=["image_id", "uri", "split", "status"]).to_pylist()
    uris = {r["image_id"]: r["uri"] for r in imgs if r["split"] == split and r["status"] != "error"}
    out: dict[str, list[dict]] = {}
    for r in ws.read_table(LABELS).to_pylist():
        if r["image_id"] in uris and r.get("status", "ok") in ("ok", None):
            out.setdefault(uris[r["image_id"]], []).append(r)
    return {u: out[u] for u in sorted(out)[:max_images]}


def background_boxes(boxes: np.ndarray, sizes: np.ndarray, hw: tuple[int, int], n: int,
                     rng: np.random.Generator, tries: int = 50) -> np.ndarray:
    """n boxes with sizes drawn from ``sizes`` (M×2 w, h) that overlap no labeled box (N×4)."""
    h, w = hw
    out = []
    for _ in range(n * tries):
        if len(out) >= n:
            break
        bw, bh = sizes[rng.integers(len(sizes))]
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        b = np.array([x0, y0, x0 + bw, y0 + bh])
        iw = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
        ih = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
        if np.all(iw * ih == 0):
            out.append(b)
    return np.array(out, np.float32).reshape(-1, 4)


def dataset(ws: Workspace, split: str, max_images: int, seed: int):
    """(images, per-image boxes N×4, labels) with one background box per object."""
    objs = val_objects(ws, split, max_images)
    sizes = np.array([[r["x1"] - r["x0"], r["y1"] - r["y0"]] for rs in objs.values() for r in rs], np.float32)
    rng = np.random.default_rng(seed)
    images, boxes, labels = [], [], []
    for uri, rs in objs.items():
        img = load_image(uri)
        b = np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rs], np.float32)
        bg = background_boxes(b, sizes, img.shape[:2], len(rs), rng)
        images.append(img)
        boxes.append(np.concatenate([b, bg]))
        labels += [r["category"] for r in rs] + [BACKGROUND] * len(bg)
    return images, boxes, np.array(labels)


# ------------------------------------------------------------------------------------------------ vectors
@torch.no_grad()
def roi_vectors(extractor, images, boxes) -> np.ndarray:
    """One vector per box, exactly as the matcher builds it (:func:`actors.features.regions.region_vectors`):
    ROI-align 1×1 on the RegionEncoder grid, centred with the mean cell vector of these images (the pool mean's
    analogue), unit norm -> N×C."""
    enc = RegionEncoder(extractor, pool=max(1, CELL_STRIDE // extractor.stride), device="cpu", batch_size=8)
    raw, cells = [], []
    for fm, b in zip(enc.encode_batch(images), boxes):
        x = torch.from_numpy(np.asarray(fm.fmap, np.float32))[None]  # 1×C×h×w
        cells.append(x.mean(dim=(2, 3)))
        raw.append(box_vectors(x.expand(len(b), -1, -1, -1), torch.from_numpy(b).float(), fm.stride_y, fm.stride_x))
    return centre_normalize(torch.cat(raw), torch.cat(cells).mean(0)).numpy()


def rgb_vectors(images, boxes) -> np.ndarray:
    """Mean and std RGB inside each box, z-scored per dimension -> N×6."""
    out = []
    for img, bs in zip(images, boxes):
        for x0, y0, x1, y1 in bs.round().astype(int):
            p = img[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)].reshape(-1, 3).astype(np.float32)
            out.append(np.concatenate([p.mean(0), p.std(0)]))
    v = np.array(out)
    return (v - v.mean(0)) / (v.std(0) + 1e-6)


def ncc_normalize(v: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm per vector (what NCC does to a 1×1 template)."""
    v = v - v.mean(1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)


# ------------------------------------------------------------------------------------------------ retrieval
def retrieval(v: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """Every non-background item queries all others; mAP and P@k of same-class retrieval."""
    sim = v @ v.T  # N×N
    np.fill_diagonal(sim, -np.inf)
    aps, pks = [], []
    for q in np.flatnonzero(labels != BACKGROUND):
        order = np.argsort(-sim[q], kind="stable")[:-1]  # drop self (last, -inf)
        rel = labels[order] == labels[q]
        if not rel.any():
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()))
        pks.append(float(rel[:k].mean()))
    return {"mAP": float(np.mean(aps)), f"P@{k}": float(np.mean(pks)), "n_queries": len(aps)}


def chance(labels: np.ndarray) -> dict[str, float]:
    """Expected mAP / P@10 of a random ranking (≈ fraction of relevant items)."""
    obj = labels[labels != BACKGROUND]
    frac = [(np.sum(labels == c) - 1) / (len(labels) - 1) for c in obj if np.sum(labels == c) > 1]
    return {"mAP": float(np.mean(frac)), "P@10": float(np.mean(frac))}


# ------------------------------------------------------------------------------------------------ driver
def run(args) -> dict:
    torch.set_num_threads(args.threads)
    if not os.path.exists(os.path.join(args.world, "workspace", "catalog", "images.parquet")):
        from actors.catalog.world import make_world

        make_world(args.world, seed=args.world_seed, n_images=args.n_images, workers=2,
                   size=(192, 144) if args.smoke else (512, 384))
    ws = Workspace(os.path.join(args.world, "workspace"))
    if args.load and ws.exists(SMALL_CHECKPOINT):
        ckpt = torch.load(ws.path(SMALL_CHECKPOINT), map_location="cpu", weights_only=True)
        train = {"val_accuracy": ckpt.get("metrics", {}).get("val_accuracy"), "seconds": None,
                 "majority": None, "chance": None, "epochs": ckpt.get("epoch")}
    else:
        extra = {k: v for k, v in (("epochs", args.epochs), ("repeats", args.repeats)) if v is not None}
        if args.steps is not None:
            extra = {"steps": args.steps}
        rep = train_backbone(ws, seed=args.seed, max_minutes=args.max_minutes, progress=False, **extra)
        train = {k: getattr(rep, k) for k in ("val_accuracy", "train_accuracy", "majority", "chance", "seconds",
                                               "epochs", "n_train", "n_val", "stopped_early")}
    images, boxes, labels = dataset(ws, "val", args.max_images, args.seed)
    trained = get_backbone("assay-small", workspace=ws)
    torch.manual_seed(args.seed)
    rand = get_backbone("assay-small", random_init=True, stride=trained.stride)
    t0 = time.monotonic()
    res = {"assay-small": retrieval(roi_vectors(trained, images, boxes), labels)}
    embed_s = time.monotonic() - t0
    res["random-init"] = retrieval(roi_vectors(rand, images, boxes), labels)
    for key in args.lite0:  # pretrained / fine-tuned Lite0 trunks: "s8", "s16", "ft-s8", "ft-s16"
        ft, stride = key.startswith("ft-"), int(key.split("s")[-1])
        ext = get_backbone("efficientnet-lite0-ft" if ft else "efficientnet-lite0", workspace=ws, stride=stride)
        res[f"lite0-{key}"] = retrieval(roi_vectors(ext, images, boxes), labels)
    res["mean-rgb"] = retrieval(ncc_normalize(rgb_vectors(images, boxes)), labels)
    res["chance"] = chance(labels)
    return {"world": os.path.abspath(args.world), "train": train, "retrieval": res,
            "n_objects": int(np.sum(labels != BACKGROUND)), "n_background": int(np.sum(labels == BACKGROUND)),
            "n_images": len(images), "stride": trained.stride, "dim": trained.dim,
            "embed_seconds": embed_s, "threads": args.threads,
            "ratio_vs_random_init": res["assay-small"]["mAP"] / res["random-init"]["mAP"],
            "ratio_vs_mean_rgb": res["assay-small"]["mAP"] / res["mean-rgb"]["mAP"]}


def table(results: dict) -> str:
    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    head = ("| tag | val acc | majority | mAP | P@10 | mAP random-init | mAP mean-rgb | mAP chance | "
            "× random-init | × mean-rgb | train s |")
    rows = [head, "|" + "---|" * 11]
    for tag, r in results.items():
        t, q = r["train"], r["retrieval"]
        rows.append(f"| {tag} | {f(t['val_accuracy'])} | {f(t['majority'])} | {f(q['assay-small']['mAP'])} | "
                    f"{f(q['assay-small']['P@10'])} | {f(q['random-init']['mAP'])} | {f(q['mean-rgb']['mAP'])} | "
                    f"{f(q['chance']['mAP'])} | {f(r['ratio_vs_random_init'], '{:.2f}')} | "
                    f"{f(r['ratio_vs_mean_rgb'], '{:.2f}')} | {f(t['seconds'], '{:.0f}')} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", help="a world made by `assay world` (holds workspace/)")
    p.add_argument("--n-images", type=int, default=1000, help="world size when --world holds none yet")
    p.add_argument("--world-seed", type=int, default=0, help="world seed when --world holds none yet")
    p.add_argument("--smoke", action="store_true", help="tiny world, 3 s of training (seconds); needs --out")
    p.add_argument("--tag", default="current", help="name of this run in the JSON / table")
    p.add_argument("--load", action="store_true", help="use the workspace's existing assay-small checkpoint")
    p.add_argument("--max-minutes", type=float, default=2.5)
    p.add_argument("--steps", type=int, default=None, help="a fixed number of training steps (no wall-clock budget)")
    p.add_argument("--epochs", type=int, default=None, help="train_backbone's epochs (default: its own)")
    p.add_argument("--repeats", type=int, default=None, help="train_backbone's passes per epoch (default: its own)")
    p.add_argument("--max-images", type=int, default=200, help="val images used by the retrieval proxy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lite0", nargs="*", default=[], help="also Lite0 trunks: s8 s16 (pretrained) ft-s8 ft-s16 "
                   "(fine-tuned, from the workspace)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default bench/backbone_quality.json)")
    args = p.parse_args(argv)
    if args.smoke:
        if not args.out:
            p.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.world = args.world or os.path.join(os.path.dirname(os.path.abspath(args.out)), "bq-smoke-world")
        args.n_images, args.max_minutes, args.max_images, args.epochs = 40, 0.05, 8, args.epochs or 1
    if not args.world:
        p.error("--world is required")
    args.out = args.out or os.path.join(HERE, "backbone_quality.json")
    result = run(args)
    result["command"] = "python bench/backbone_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["smoke"] = args.smoke
    stored = {}
    if os.path.exists(args.out):
        with open(args.out) as fh:
            stored = json.load(fh)
    stored[args.tag] = result
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(stored, fh, indent=2)
    os.replace(tmp, args.out)
    print(table(stored))


if __name__ == "__main__":
    main()
