"""COCO evaluation of detections with pycocotools: mAP@[.5:.95], mAP@.5, per-class AP and AP by object size.

Inputs are plain Python/numpy (no model): ground truth ``{image_id: (boxes N×4 x0 y0 x1 y1 pixels, labels N)}`` and
detections ``{image_id: (boxes M×4, scores M, labels M)}`` with integer labels in ``0..K-1`` indexing ``classes``.
Sizes follow COCO: small < 32² px², medium < 96², large above (most objects of the embedded world are small).
An image with no ground truth still counts its detections as false positives. Metrics are fractions in 0..1;
a class (or size) with no ground truth reports ``None`` (pycocotools' −1).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class EvalReport:
    """What :func:`evaluate_detections` measured (fractions in 0..1; ``None`` when undefined)."""

    map: float
    map50: float
    map75: float
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    per_class_ap: dict[str, float | None] = field(default_factory=dict)
    per_class_ap50: dict[str, float | None] = field(default_factory=dict)
    n_images: int = 0
    n_gt: int = 0
    n_det: int = 0
    by_area: dict[str, dict[str, float | None]] = field(default_factory=dict)  # name -> {map, map50, n_gt}

    def to_dict(self) -> dict:
        return asdict(self)


def _none(x: float) -> float | None:
    return None if x < 0 else float(x)


def _coco_dicts(gt: Mapping, dets: Mapping, classes: Sequence[str]) -> tuple[dict, list, dict[str, int]]:
    ids = {k: i + 1 for i, k in enumerate(sorted(set(gt) | set(dets)))}
    images, anns = [], []
    for key, n in ids.items():
        boxes, labels = gt.get(key, (np.zeros((0, 4)), np.zeros(0, int)))
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        extent = boxes[:, 2:].max(0) if len(boxes) else np.array([1.0, 1.0])
        images.append({"id": n, "width": float(extent[0]) + 1, "height": float(extent[1]) + 1})
        for b, lab in zip(boxes, np.asarray(labels).reshape(-1)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": int(lab) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    results = []
    for key, (boxes, scores, labels) in dets.items():
        for b, s, lab in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores).reshape(-1),
                             np.asarray(labels).reshape(-1)):
            results.append({"image_id": ids[key], "category_id": int(lab) + 1, "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    return {"images": images, "annotations": anns, "categories": cats}, results, ids


def evaluate_detections(gt: Mapping[str, tuple], dets: Mapping[str, tuple], classes: Sequence[str],
                        area_ranges: Mapping[str, tuple[float, float]] | None = None) -> EvalReport:
    """COCO metrics of ``dets`` against ``gt`` over the images of ``gt`` (detections on other images are ignored).

    ``area_ranges``: extra named box-area ranges in px² (``{"<1%": (0, 1966)}``), each evaluated the COCO way
    (ground truth outside the range and unmatched detections outside it are ignored) into ``by_area[name]`` =
    ``{"map", "map50", "n_gt"}``.

    Raises
    ------
    ValueError
        A label outside ``0..len(classes)-1``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = {k: v for k, v in dets.items() if k in gt}
    for where, table in (("ground truth", {k: v[1] for k, v in gt.items()}),
                         ("detections", {k: v[2] for k, v in dets.items()})):
        for key, labels in table.items():
            labels = np.asarray(labels).reshape(-1)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
                raise ValueError(f"{where} of image {key}: label outside 0..{len(classes) - 1}")
    data, results, _ = _coco_dicts(gt, dets, classes)
    n_gt, n_det = len(data["annotations"]), len(results)
    if n_gt == 0:
        return EvalReport(0.0, 0.0, 0.0, None, None, None, {c: None for c in classes}, {c: None for c in classes},
                          len(gt), 0, n_det)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        found = coco.loadRes(results) if results else COCO()
        if not results:
            found.dataset = {"images": data["images"], "annotations": [], "categories": data["categories"]}
            found.createIndex()
        ev = COCOeval(coco, found, "bbox")
        ev.params.maxDets = [1, 10, 100]
        by_area = _by_area(coco, found, area_ranges or {}, data["annotations"])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    prec = ev.eval["precision"]  # T×R×K×A×M (IoU thresholds, recall points, classes, areas, max dets)
    per, per50 = {}, {}
    for k, c in enumerate(classes):
        p = prec[:, :, k, 0, -1]
        per[c] = float(p[p > -1].mean()) if (p > -1).any() else None
        p50 = prec[0, :, k, 0, -1]
        per50[c] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else None
    return EvalReport(map=max(0.0, float(s[0])), map50=max(0.0, float(s[1])), map75=max(0.0, float(s[2])),
                      ap_small=_none(s[3]), ap_medium=_none(s[4]), ap_large=_none(s[5]),
                      per_class_ap=per, per_class_ap50=per50, n_images=len(gt), n_gt=n_gt, n_det=n_det,
                      by_area=by_area)


def _by_area(coco, found, ranges: Mapping[str, tuple[float, float]], anns: list) -> dict:
    from pycocotools.cocoeval import COCOeval

    out = {}
    for name, (lo, hi) in ranges.items():
        n = sum(1 for a in anns if lo <= a["area"] < hi)
        ev = COCOeval(coco, found, "bbox")
        ev.params.maxDets = [100]
        ev.params.areaRng, ev.params.areaRngLbl = [[float(lo), float(hi)]], [name]
        ev.evaluate()
        ev.accumulate()
        p = ev.eval["precision"][:, :, :, 0, 0]  # T×R×K
        ok = bool((p > -1).any())
        out[name] = {"map": float(np.mean([_class_mean(p[t]) for t in range(p.shape[0])])) if ok else None,
                     "map50": _class_mean(p[0]) if ok else None, "n_gt": n}
    return out


def _class_mean(p: np.ndarray) -> float:
    """Mean over classes (with ground truth) of the precision averaged over recall points: COCO's AP at one IoU."""
    per = [p[:, k][p[:, k] > -1].mean() for k in range(p.shape[1]) if (p[:, k] > -1).any()]
    return float(np.mean(per)) if per else 0.0


__all__ = ["EvalReport", "evaluate_detections"]
