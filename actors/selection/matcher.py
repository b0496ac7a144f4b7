"""The fine stage's working state: a feature-map LRU cache over the store, and the match kernels applied to it.

:class:`Matcher` runs in any process (no Ray); :class:`actors.selection.actor.MatchActor` is the same object as a Ray
actor that owns a device and its cache across queries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from actors.core.workspace import Workspace
from actors.features.store import EncodedMap, FeatureMap, FeatureReader, iter_feature_maps
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
        self._cache: OrderedDict[str, FeatureMap | EncodedMap] = OrderedDict()
        self._reader: FeatureReader | None = None
        if preload:  # one scan of the store fills the cache (all of it when it fits)
            for fm in iter_feature_maps(ws, model):
                self._cache[fm.image_id] = fm
                if len(self._cache) >= cache_size:
                    break

    def _reader_for(self, missing: list[str]) -> FeatureReader:
        if self._reader is None:
            self._reader = FeatureReader(self.ws, self.model)
        elif any(i not in self._reader for i in missing):
            self._reader.refresh()  # images embedded since the reader was made
        return self._reader

    def _cached(self, image_ids: Sequence[str]) -> list[FeatureMap | EncodedMap]:
        """The maps of ``image_ids`` via the cache: preloaded ones decoded, the rest as stored (encoded: 8×
        fewer bytes cached for PQ; each fine-stage batch decodes straight into its working array)."""
        missing = [i for i in image_ids if i not in self._cache]
        if missing:
            for em in self._reader_for(missing).get(missing, decode=False):  # only these images' rows
                self._cache[em.image_id] = em
        out = []
        for i in image_ids:
            if i in self._cache:
                self._cache.move_to_end(i)
                out.append(self._cache[i])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def feature_maps(self, image_ids: Sequence[str]) -> list[FeatureMap]:
        """The decoded feature maps of ``image_ids`` (missing or failed images are skipped), via the cache."""
        maps = self._cached(image_ids)
        codec = self._reader_for([]).codec if any(isinstance(m, EncodedMap) for m in maps) else None
        return [FeatureMap(m.image_id, codec.decode(m.data, m.shape), m.stride_y, m.stride_x)
                if isinstance(m, EncodedMap) else m for m in maps]

    def rerank(self, objects: Sequence[Sequence[torch.Tensor]], image_ids: Sequence[str], top_k: int,
               combine: str = "min") -> list[Hit]:
        """Template re-rank of the candidate images; the best ``top_k`` hits."""
        maps = self._cached(image_ids)
        codec = self._reader_for([]).codec if any(isinstance(m, EncodedMap) for m in maps) else None
        return rank_feature_maps(objects, maps, top_k=top_k, combine=combine, device=self.device, codec=codec)


__all__ = ["Matcher"]
