"""The FiftyOne-style patch-similarity peer of ``bench/targeted_selection_backbones.py``.

What a team would do today with FiftyOne (``compute_patch_embeddings`` + a similarity index over patches): run a
detector over the pool, embed every box it proposes, and rank pool images by their best patch's similarity to the
query box. Here the detector is the active-learning detector (``dense-lite0``: frozen ImageNet Lite0 trunk, stride-8
map fused with the upsampled stride-16 map, FCOS-style head) trained on the world's train split for a fixed number
of epochs; its detections are used **class-agnostically** (labels ignored, the top ``top_n`` boxes per image by
score after its class-agnostic NMS). Each box is embedded as the ROI-align 1×1 vector of the same pretrained fused
map (:func:`actors.features.regions.box_vectors`), centred with the mean proposal vector of the pool and made unit
norm (the same centring the matcher gets); an image's score is its best proposal's cosine to the query box.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from actors.core.workspace import Workspace
from actors.selection.match import Hit
from actors.selection.mine import Selection


def _images(rows: list[dict]) -> torch.Tensor:
    from actors.core.images import load_image

    return torch.from_numpy(np.stack([load_image(r["uri"]) for r in rows])).permute(0, 3, 1, 2).float() / 255.0


def prepare(ws: Workspace, out: Path, *, n_train: int = 150, epochs: int = 12, top_n: int = 20,
            batch_size: int = 8) -> dict:
    """Train the detector, propose ``top_n`` boxes per pool image and embed them; saved to ``out`` (.npz, reused)."""
    from actors.detection.data import FeatureCache, build_data, catalog_rows, labels_by_image
    from actors.detection.models import get_detector
    from actors.detection.train import TrainConfig, predict, train_detector
    from actors.features.regions import box_vectors

    if out.exists():
        z = np.load(out, allow_pickle=False)
        return {"ids": z["ids"], "boxes": z["boxes"], "vecs": z["vecs"], "info": dict(zip(z["k"], z["v"]))}
    t0 = time.perf_counter()
    from actors.catalog.schema import load_labels

    classes = sorted({r["category"] for r in load_labels(ws).to_pylist()})
    det = get_detector("dense-lite0", classes)
    train_rows = sorted(catalog_rows(ws, ["train"]).values(), key=lambda r: r["image_id"])[:n_train]
    labels = labels_by_image(ws, [r["image_id"] for r in train_rows], classes)
    data = build_data(det, train_rows, labels, cache=FeatureCache(ws, det))
    train_detector(det, data, TrainConfig(epochs=epochs, batch_size=8))
    t_train = time.perf_counter() - t0
    pool = sorted(catalog_rows(ws, ["pool"]).values(), key=lambda r: r["image_id"])
    ids, boxes, vecs = [], [], []
    det.eval()
    with torch.no_grad():
        for i in range(0, len(pool), batch_size):
            rows = pool[i:i + batch_size]
            x = det.inputs(_images(rows)).float()
            for r, fm, d in zip(rows, x, det.predict(x, [(r["width"], r["height"]) for r in rows])):
                b = d["boxes"][:top_n]
                if len(b) == 0:
                    continue
                v = box_vectors(fm[None].expand(len(b), -1, -1, -1), b, det.trunk.stride, det.trunk.stride)
                ids += [r["image_id"]] * len(b)
                boxes.append(b.numpy())
                vecs.append(v.numpy().astype(np.float32))
    info = {"n_train_images": len(train_rows), "epochs": epochs, "top_n": top_n, "train_s": t_train,
            "total_s": time.perf_counter() - t0}
    res = {"ids": np.array(ids), "boxes": np.concatenate(boxes), "vecs": np.concatenate(vecs)}
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **res, k=np.array(list(info)), v=np.array([float(x) for x in info.values()]))
    tmp.replace(out)
    return {**res, "info": info, "det": det}


def run(prep: dict, queries: list[dict], top_k: int = 100) -> list[Selection]:
    """Rank pool images by their best proposal's centred cosine to each query box."""
    from actors.core.images import load_image
    from actors.detection.models import get_detector
    from actors.features.regions import box_vectors, centre_normalize

    det = prep.get("det") or get_detector("dense-lite0", ["x"])  # only the frozen pretrained trunk is used
    center = prep["vecs"].mean(0)
    pv = centre_normalize(torch.from_numpy(prep["vecs"]), center)
    codes, ids = np.unique(prep["ids"], return_inverse=True)
    out = []
    for q in queries:
        x = torch.from_numpy(load_image(q["uri"])).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            fm = det.inputs(x).float()
        t0 = time.perf_counter()
        qv = centre_normalize(box_vectors(fm, torch.tensor([q["box"]], dtype=torch.float32), det.trunk.stride,
                                          det.trunk.stride), center)[0]
        s = (pv @ qv).numpy()
        best = np.full(len(codes), -np.inf, np.float32)
        np.maximum.at(best, ids, s)
        arg = np.full(len(codes), -1)
        order = np.argsort(-s)
        for j in order[::-1]:  # the best proposal of each image wins (ascending pass, last write = max)
            arg[ids[j]] = j
        top = np.argsort(-best)[:top_k]
        hits = [Hit(str(codes[c]), float(best[c]), tuple(map(float, prep["boxes"][arg[c]])),
                    [tuple(map(float, prep["boxes"][arg[c]]))]) for c in top]
        out.append(Selection("", {}, hits, coarse_s=time.perf_counter() - t0, n_candidates=len(codes)))
    return out
