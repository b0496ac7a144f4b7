"""Pure helpers of the sharded index (no FAISS, no Ray): which shard an image lives in, and the top-k merge.

* :func:`shard_of` assigns whole images: the shard is a function of the image id alone (its SHA-1), so all vectors of
  one image always live in one shard, whatever the batch, the order of adds or the machine.
* :func:`merge_topk` merges per-shard ``(D, I)`` search results into the global top-k by score. Every shard returns
  its own top-k; the global top-k is a subset of their union, so the merge is exact: with shards built from the
  same vectors as a single index (and, for IVF, the same trained quantizer) the merged result equals the single
  index's.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def shard_of(image_ids: Sequence[str], n_shards: int) -> np.ndarray:
    """Shard number (int32, in ``[0, n_shards)``) of each image id: the first 8 bytes of SHA-1(id) mod ``n_shards``.

    Image ids are already 16 hex digits of a SHA-1, but hashing again makes any id string valid and spreads
    ids that share a prefix.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    h = [int.from_bytes(hashlib.sha1(str(i).encode()).digest()[:8], "big") for i in image_ids]
    return (np.array(h, dtype=np.uint64) % np.uint64(n_shards)).astype(np.int32)


def merge_topk(Ds: Sequence[np.ndarray], Is: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Global top-``k`` (largest score first) of per-shard results.

    Parameters
    ----------
    Ds, Is : sequences of nq×k_s arrays, one pair per shard (scores, shard-local ids; id -1 = no result).

    Returns
    -------
    D (nq×k float32, -inf where short), S (nq×k int32 shard, -1 where short), I (nq×k int64 local id, -1 where short).
    Ties keep shard order, then each shard's own order (a stable sort).
    """
    if len(Ds) != len(Is) or not Ds:
        raise ValueError("merge_topk needs one (D, I) pair per shard, at least one")
    nq = Ds[0].shape[0]
    D = np.concatenate([np.asarray(d, np.float32).reshape(nq, -1) for d in Ds], axis=1)
    I = np.concatenate([np.asarray(i, np.int64).reshape(nq, -1) for i in Is], axis=1)
    S = np.concatenate([np.full((nq, np.asarray(i).reshape(nq, -1).shape[1]), s, np.int32)
                        for s, i in enumerate(Is)], axis=1)
    D = np.where(I >= 0, D, -np.inf).astype(np.float32)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    D, S, I = (np.take_along_axis(a, order, 1) for a in (D, S, I))
    short = ~np.isfinite(D)
    S[short], I[short] = -1, -1
    if D.shape[1] < k:  # fewer results than k in all shards together: pad
        pad = k - D.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
        S = np.pad(S, ((0, 0), (0, pad)), constant_values=-1)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    return D, S, I


def group_by_shard(shards: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Positions of the items of each shard (``shards`` from :func:`shard_of`), in their original order."""
    return [np.flatnonzero(shards == s) for s in range(n_shards)]


__all__ = ["group_by_shard", "merge_topk", "shard_of"]
