"""The canonical-scale re-rank: the last stage of targeted selection.

The dense stage compares cells of a stride-16 map, where a 20–40 px object is one or two cells; the features of
such a small object are mostly its surroundings. This stage looks again at each of the best hits at the object's own
scale: the matched box is cropped (square, ``CROP_CONTEXT`` × its longer side), resized to ``CROP_PX`` pixels and
embedded by the whole trunk (EfficientNet-Lite0 to stride 32, mean-pooled: 320-d), and the query box the same way.
A hit's new score is the cosine of the two vectors (``combine`` over the query's boxes), in [-1, 1] for every query,
so one threshold means the same across queries. ``bench/selection_ceiling.py`` measured these settings on ground-truth
boxes (``crop``: 160 px, context 1.0, the best of 128/160/224 px × context 0.9/1.0/1.25/1.5 on the tuning world;
the stride-32 trunk beat the stride-16 cut (0.46) and the 1280-d head (0.66–0.67) there).

* :func:`crop_boxes` — one image and its boxes -> N×3×S×S crops (pure torch).
* :class:`CropEmbedder` — crops -> unit vectors, with any trunk.
* :func:`rerank_hits` — hits re-scored and re-sorted; the kernel (no I/O: images come through a loader).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from actors.selection.match import Hit

CROP_PX = 160  # crop side fed to the trunk
CROP_CONTEXT = 1.0  # crop side / the box's longer side
# dense hits re-ranked by default (0: off). Chosen on the tuning world (seed 1, 50 queries): window 100 / 200 / 300
# gave P@10 0.574 / 0.616 / 0.634 and R@100 0.175 / 0.203 / 0.213; fusing the dense score in (any weight) lost P@10
RERANK_TOP = 300
CROP_BATCH = 64  # crops per forward pass


def crop_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], *, px: int = CROP_PX,
               context: float = CROP_CONTEXT) -> torch.Tensor:
    """H×W×3 uint8 image and (x0, y0, x1, y1) pixel boxes -> N×3×px×px float crops in [0, 1]: a square of side
    ``context`` × the box's longer side around its centre (clipped to the image; at least 2 px), resized with
    antialiasing."""
    x = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1).float().div_(255)[None]  # 1×3×H×W
    H, W = image.shape[:2]
    out = []
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = max(max(x1 - x0, y1 - y0) * context / 2, 1.0)
        a, b = int(np.clip(np.floor(cx - half), 0, W - 2)), int(np.clip(np.floor(cy - half), 0, H - 2))
        c, d = int(np.clip(np.ceil(cx + half), a + 2, W)), int(np.clip(np.ceil(cy + half), b + 2, H))
        out.append(F.interpolate(x[:, :, b:d, a:c], size=(px, px), mode="bilinear", antialias=True,
                                 align_corners=False))
    return torch.cat(out) if out else torch.zeros(0, 3, px, px)


class CropEmbedder:
    """Crops -> unit-norm vectors: ``trunk`` (B×3×S×S in [0, 1] -> B×C×h×w) mean-pooled over space."""

    def __init__(self, trunk: torch.nn.Module, *, px: int = CROP_PX, context: float = CROP_CONTEXT,
                 device: str = "cpu") -> None:
        self.trunk, self.px, self.context, self.device = trunk.eval().to(device), px, context, device

    @torch.no_grad()
    def embed_crops(self, crops: torch.Tensor) -> np.ndarray:
        """N×3×S×S -> N×C float32, unit norm."""
        vs = [self.trunk(crops[i:i + CROP_BATCH].to(self.device)).float().mean((2, 3))
              for i in range(0, len(crops), CROP_BATCH)]
        v = torch.cat(vs) if vs else torch.zeros(0, 1)
        return F.normalize(v, dim=1).cpu().numpy()

    def embed(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """One image's boxes -> len(boxes)×C unit vectors."""
        return self.embed_crops(crop_boxes(image, boxes, px=self.px, context=self.context))


def crop_embedder(device: str = "cpu") -> CropEmbedder:
    """The default re-rank embedder: the frozen ImageNet EfficientNet-Lite0 trunk to stride 32."""
    from actors.features.backbones import get_backbone

    return CropEmbedder(get_backbone("efficientnet-lite0", stride=32), device=device)


def rerank_hits(query_vectors: np.ndarray, hits: Sequence[Hit], load: Callable[[str], np.ndarray],
                embedder: CropEmbedder, *, combine: str = "min",
                negative_vectors: np.ndarray | None = None) -> list[Hit]:
    """Re-score ``hits`` by the cosine of each matched object box's crop vector to its query box's vector.

    Parameters
    ----------
    query_vectors : B×C unit vectors of the query's B boxes (``embedder.embed(query_image, boxes)``).
    hits : from the dense stage; each hit's ``object_boxes`` (B boxes, one per query box; else ``box`` for all).
    load : image_id -> H×W×3 uint8 image; an image that fails to load keeps its hit at score -1 (ranked last).
    combine : "min" or "mean" over the query's boxes.
    negative_vectors : N×C unit vectors of "not this" boxes, or None. A hit whose crops look more like a negative
        than like the query (``neg = max cosine to any negative > score``) drops by that margin:
        ``score - (neg - score)``; other hits keep their score.

    Returns
    -------
    The hits with their new scores, best first (ties keep the dense order).
    """
    if combine not in ("min", "mean"):
        raise ValueError(f"combine must be 'min' or 'mean', got {combine!r}")
    B = len(query_vectors)
    crops, owner, failed = [], [], set()
    for n, h in enumerate(hits):  # all crops first: one batched forward pass for every hit
        boxes = list(h.object_boxes) if len(h.object_boxes) == B else [h.box] * B
        try:
            crops.append(crop_boxes(load(h.image_id), boxes, px=embedder.px, context=embedder.context))
        except (OSError, ValueError):
            failed.add(n)
            continue
        owner.append(n)
    vecs = embedder.embed_crops(torch.cat(crops)) if crops else np.zeros((0, query_vectors.shape[1]), np.float32)
    sims = (vecs.reshape(len(owner), B, -1) * query_vectors[None]).sum(2)  # hits × B
    pos = sims.min(1) if combine == "min" else sims.mean(1)  # hits
    if negative_vectors is not None and len(negative_vectors) and len(owner):
        neg = (vecs @ np.asarray(negative_vectors, np.float32).T).reshape(len(owner), -1).max(1)  # hits
        pos = pos - np.maximum(neg - pos, 0.0)
    score = dict(zip(owner, pos.tolist()))
    out = [replace(h, score=-1.0 if n in failed else float(score[n])) for n, h in enumerate(hits)]
    order = sorted(range(len(out)), key=lambda i: (-out[i].score, i))
    return [out[i] for i in order]


__all__ = ["CROP_PX", "CROP_CONTEXT", "RERANK_TOP", "crop_boxes", "CropEmbedder", "crop_embedder", "rerank_hits"]
