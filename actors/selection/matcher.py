"""The fine stage's working state: a feature-map LRU cache over the store, and the match kernels applied to it.

:class:`Matcher` runs in any process (no Ray); :class:`actors.selection.actor.MatchActor` is the same object as a Ray
actor that owns a device and its cache across queries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from actors.core.workspace import Workspace
from actors.features.store import FeatureMap, FeatureReader, iter_feature_maps
from actors.selection.match import Hit, rank_feature_maps

class Matcher:
    """Fine stage over candidate images: loads their feature maps (LRU cache) and ranks them by NCC.

    Parameters
    ----------
    ws, model : where the feature maps live (``features/<model>/``).
    cache_size : feature maps kept in memory between calls.
    preload : fill the cache from the store up front (one sequential scan instead of one per call).
    device : torch device; default :func:`actors.core.runtime.device`.
    """

    def __init__(self, ws: Workspace, model: str, *, cache_size: int = 4096, device: str | None = None,
                 preload: bool = False) -> None:
        from actors.core.runtime import device as auto_device

        self.ws, self.model, self.cache_size = ws, model, cache_size
        self.device = device or auto_device()
        self._cache: OrderedDict[str, FeatureMap] = OrderedDict()
        self._reader: FeatureReader | None = None
        if preload:  # one scan of the store fills the cache (all of it when it fits)
            for fm in iter_feature_maps(ws, model):
                self._cache[fm.image_id] = fm
                if len(self._cache) >= cache_size:
                    break

    def feature_maps(self, image_ids: Sequence[str]) -> list[FeatureMap]:
        """The feature maps of ``image_ids`` (missing or failed images are skipped), via the cache."""
        missing = [i for i in image_ids if i not in self._cache]
        if missing:
            if self._reader is None:
                self._reader = FeatureReader(self.ws, self.model)
            elif any(i not in self._reader for i in missing):
                self._reader.refresh()  # images embedded since the reader was made
            for fm in self._reader.get(missing):  # row-level reads: only these images' rows
                self._cache[fm.image_id] = fm
        out = []
        for i in image_ids:
            if i in self._cache:
                self._cache.move_to_end(i)
                out.append(self._cache[i])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def rerank(self, objects: Sequence[Sequence[torch.Tensor]], image_ids: Sequence[str], top_k: int,
               combine: str = "min") -> list[Hit]:
        """NCC re-rank of the candidate images; the best ``top_k`` hits."""
        return rank_feature_maps(objects, self.feature_maps(image_ids), top_k=top_k, combine=combine,
                                 device=self.device)


__all__ = ["Matcher"]
