"""Sharded index on Ray: N :class:`ShardActor` each hold one shard (:class:`~actors.selection.shard_store.Shard`);
the driver (:class:`ShardedIndex`) routes images to shards by image hash, fans a query out to every shard in one
``ray.get`` and merges the top-k (:func:`~actors.selection.shard_plan.merge_topk`).

No math here: assignment and merge are in ``shard_plan`` (pure), file layout and FAISS calls in ``shard_store``.

Contract
--------
* Results equal those of a single index over the same vectors: the shards start from one trained empty index
  (``template.faiss``; for IVF the shared coarse quantizer and codebooks), each holds whole images, each returns its
  own top-k and the merge keeps the k best (ids the same; scores equal up to float rounding of exact search).
* :meth:`ShardedIndex.add` routes each new image to ``shard_of(image_id)``; shards skip images they hold, so an add
  re-run after a crash adds nothing twice. :meth:`ShardedIndex.save` commits every shard (each atomically, its own
  manifest being its commit point) and reopens it memory-mapped in its actor.
* A shard actor that dies is restarted by Ray (``max_restarts``) and reloads its last *committed* generation, so the
  images sent to it since that commit are gone from it. The driver never trusts a save blindly: after committing,
  it asks each shard which of the images it was sent since the last verified save it lacks, and raises
  :class:`ShardImagesLost` naming them (the shards keep what they hold; re-adding the lost images and saving again
  completes the index: :func:`actors.selection.sharded_build.build_sharded` does that). An add or save call that
  fails because its actor died is not an error by itself: the verification decides.
* Actors ask for ``num_cpus`` each (default 0: they are I/O and FAISS threads, set with ``threads``).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Iterable, Sequence

import numpy as np
import ray
from ray.exceptions import RayActorError

from actors.core.workspace import Workspace, WorkspaceError
from actors.selection.index import normalize
from actors.selection.shard_plan import group_by_shard, merge_topk, shard_of
from actors.selection.shard_store import Shard, shards_root, write_template

CODE_BITS = 40  # global image code = shard << CODE_BITS | the shard's own image code
ADD_BATCH = 262_144  # vectors buffered on the driver before they are sent to the shards


class ShardImagesLost(RuntimeError):
    """Images sent to a shard are not in it after a save: its actor restarted and reloaded an older generation.

    ``image_ids``: the lost images (all shards), ``shards``: the shards that lost them.
    """

    def __init__(self, lost: dict[int, list[str]]) -> None:
        self.lost = lost
        self.image_ids = [i for ids in lost.values() for i in ids]
        self.shards = sorted(lost)
        super().__init__(f"shard actor(s) {', '.join(map(str, self.shards))} restarted and reloaded an older "
                         f"generation: {len(self.image_ids)} image(s) sent to them are not in the index")


@ray.remote(max_restarts=3, max_task_retries=0)  # adds are not retried: a restarted actor reloads its committed shard
class ShardActor:
    """One shard in an actor: ``add``, ``save``, ``search``, ``lookup``, ``stats`` (see :class:`Shard`)."""

    def __init__(self, ws_uri: str, root: str, k: int, threads: int = 1, mmap: bool = True) -> None:
        from actors.selection._faiss import faiss

        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.shard = Shard(Workspace(ws_uri), root, k, mmap=mmap)

    def add(self, image_ids: list[str], counts: np.ndarray, xb: np.ndarray, rows: np.ndarray,
            cols: np.ndarray) -> int:
        return self.shard.add(image_ids, counts, xb, rows, cols)

    def save(self) -> dict:
        return self.shard.save()

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shard.search(xq, k)

    def lookup(self, I: np.ndarray) -> list[tuple[str, int, int]]:
        return self.shard.lookup(I)

    def stats(self) -> dict:
        return self.shard.stats()

    def set_nprobe(self, nprobe: int) -> None:
        self.shard.set_nprobe(nprobe)

    def missing(self, image_ids: list[str]) -> list[str]:
        return self.shard.missing(image_ids)

    def image_codes(self, I: np.ndarray) -> np.ndarray:
        return self.shard.image_codes(I)

    def image_names(self, codes: list[int]) -> list[str]:
        return self.shard.image_names(codes)

    def pid(self) -> int:
        """The actor's process id (a restarted actor has a new one)."""
        return os.getpid()


class ShardedIndex:
    """The driver side of a sharded index under ``index/<model>/shards`` (see the module contract).

    Create with :meth:`create` (writes the template and starts the actors) or :meth:`open` (starts actors that load
    the saved shards memory-mapped). Ray must be initialised (``actors.core.runtime.init_ray``).
    """

    def __init__(self, ws: Workspace, root: str, *, num_cpus: float = 0, threads: int = 1, mmap: bool = True) -> None:
        if not ws.exists(posixpath.join(root, "manifest.json")):
            raise WorkspaceError(f"{ws.path(root)}: no sharded index; build one first")
        self.ws, self.root = ws, root
        self.manifest = ws.read_json(posixpath.join(root, "manifest.json"))
        self.n_shards = int(self.manifest["n_shards"])
        self.center = np.asarray(self.manifest["center"], np.float32) if self.manifest.get("center") else None
        self.actors = [ShardActor.options(num_cpus=num_cpus).remote(ws.uri, root, k, threads, mmap)
                       for k in range(self.n_shards)]
        self._buf: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._sent: list[list[str]] = [[] for _ in range(self.n_shards)]  # per shard, since the last verified save

    @classmethod
    def create(cls, ws: Workspace, model: str, template, *, n_shards: int, factory: str, nprobe: int = 0,
               center: np.ndarray | None = None, cell_pool: int = 1, trained_on: int = 0, root: str | None = None,
               **kw) -> "ShardedIndex":
        """Write ``template`` (a trained, empty FAISS index) as the start of ``n_shards`` shards and open them."""
        root = root or shards_root(model)
        write_template(ws, root, template, factory=factory, nprobe=nprobe, n_shards=n_shards, center=center,
                       cell_pool=cell_pool, trained_on=trained_on)
        return cls(ws, root, **kw)

    @classmethod
    def from_index(cls, ws: Workspace, model: str, *, n_shards: int, progress: bool = False,
                   **kw) -> "ShardedIndex":
        """Shard ``model``'s built region index: its trained quantizer (emptied) is every shard's template, its
        centre and cell pooling are kept, and every ok feature map of the store is added to its hash's shard (the
        vectors of the single index, so searches return what the single index returns)."""
        from actors.features.store import iter_feature_maps
        from actors.selection.index import cell_vectors, load_index

        single = load_index(ws, model, mmap=False)
        man = single.manifest
        template = faiss_clone_empty(single.index)
        idx = cls.create(ws, model, template, n_shards=n_shards, factory=man.factory, nprobe=man.nprobe,
                         center=single.center, cell_pool=man.cell_pool, trained_on=man.trained_on, **kw)
        del single, template
        idx.add((fm.image_id, *cell_vectors(fm, "region", idx.center, man.cell_pool))
                for fm in iter_feature_maps(ws, model))
        idx.save()
        return idx

    @classmethod
    def open(cls, ws: Workspace, model: str, *, root: str | None = None, **kw) -> "ShardedIndex":
        """Start one actor per saved shard; each memory-maps its shard file."""
        return cls(ws, root or shards_root(model), **kw)

    # ------------------------------------------------------------------------------------------- add / save
    def add(self, images: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> int:
        """Queue images ``(image_id, xb n×d unit fp32, rows n, cols n)``; sends a batch per :data:`ADD_BATCH`
        vectors. Returns the vectors sent so far in this call (shards skip images they already hold)."""
        sent = 0
        for item in images:
            self._buf.append(item)
            self._buffered += len(item[1])
            if self._buffered >= ADD_BATCH:
                sent += self.flush()
        return sent

    def flush(self) -> int:
        """Send the queued images to their shards (one ``ray.get`` for all shards); returns vectors added.

        A call whose actor died is counted as 0: :meth:`save` finds the images it lost."""
        if not self._buf:
            return 0
        ids = [b[0] for b in self._buf]
        groups = group_by_shard(shard_of(ids, self.n_shards), self.n_shards)
        calls = []
        for s, pos in enumerate(groups):
            if not len(pos):
                continue
            part = [self._buf[p] for p in pos]
            self._sent[s].extend(p[0] for p in part)
            calls.append(self.actors[s].add.remote(
                [p[0] for p in part], np.array([len(p[1]) for p in part], np.int64),
                np.concatenate([p[1] for p in part]).astype(np.float32, copy=False),
                np.concatenate([p[2] for p in part]), np.concatenate([p[3] for p in part])))
        self._buf, self._buffered = [], 0
        return int(sum(r for r in _gather(calls) if not isinstance(r, RayActorError)))

    def save(self) -> list[dict]:
        """Flush, commit every shard (in parallel), then verify that each holds every image sent to it since the
        last verified save; returns the shard manifests.

        Raises :class:`ShardImagesLost` when a shard lacks some (its actor restarted: see the module contract), and
        Ray's ``RayActorError`` when an actor is gone for good (its restarts used up)."""
        self.flush()
        mans = _gather([a.save.remote() for a in self.actors])
        for s, m in enumerate(mans):  # an actor that died during its save: save again on its restarted self
            if isinstance(m, RayActorError):
                mans[s] = ray.get(self.actors[s].save.remote())
        lost = self._lost()
        self._sent = [[] for _ in range(self.n_shards)]
        if lost:
            raise ShardImagesLost(lost)
        return mans

    def _lost(self) -> dict[int, list[str]]:
        """Per shard, the images sent to it since the last verified save that it does not hold now."""
        calls = {s: self.actors[s].missing.remote(ids) for s, ids in enumerate(self._sent) if ids}
        return {s: got for s, got in zip(calls, ray.get(list(calls.values()))) if got}

    # ------------------------------------------------------------------------------------------- query
    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` over all shards: D (nq×k scores), S (shard), I (shard-local id); -1 / -inf where short."""
        xq = normalize(np.atleast_2d(xq))
        if xq.shape[1] != int(self.manifest["dim"]):
            raise ValueError(f"expected query vectors of dim {self.manifest['dim']}, got {xq.shape[1]}")
        ref = ray.put(xq)
        parts = ray.get([a.search.remote(ref, int(k)) for a in self.actors])
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], int(k))

    # ------------------------------------------------------------------------------------------- mining interface
    # The calls :func:`actors.selection.mine.coarse_candidates` makes on any region index (as on ``LoadedIndex``):
    # image codes are global here, ``shard << CODE_BITS | shard-local image code``.
    def search_images(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` vectors over all shards: D (nq×k scores) and the image code of each hit (-1 where short)."""
        D, S, I = self.search(xq, k)
        codes = np.full(I.shape, -1, np.int64)
        calls = {s: self.actors[s].image_codes.remote(np.where(S == s, I, -1)) for s in range(self.n_shards)
                 if (S == s).any()}
        for s, local in zip(calls, ray.get(list(calls.values()))):
            codes = np.where(S == s, (np.int64(s) << CODE_BITS) | local, codes)
        return D, codes

    def names(self, codes: Sequence[int]) -> list[str]:
        """Image ids of global image codes (from :meth:`search_images`), in their order."""
        codes = np.asarray(codes, np.int64)
        shard = codes >> CODE_BITS
        local = codes & ((1 << CODE_BITS) - 1)
        out: list = [None] * len(codes)
        calls = {s: (pos, self.actors[s].image_names.remote(local[pos].tolist()))
                 for s in range(self.n_shards) if len(pos := np.flatnonzero(shard == s))}
        for s, (pos, ref) in calls.items():
            for p, name in zip(pos, ray.get(ref)):
                out[p] = name
        return out

    def missing(self, image_ids: Sequence[str]) -> list[str]:
        """The ids among ``image_ids`` that no shard holds (each asked of its hash's shard), in their order."""
        image_ids = [str(i) for i in image_ids]
        if not image_ids:
            return []
        groups = group_by_shard(shard_of(image_ids, self.n_shards), self.n_shards)
        calls = [self.actors[s].missing.remote([image_ids[p] for p in pos]) for s, pos in enumerate(groups)
                 if len(pos)]
        lacking = {i for part in ray.get(calls) for i in part}
        return [i for i in image_ids if i in lacking]

    def lookup(self, S: np.ndarray, I: np.ndarray) -> list[tuple[str, int, int]]:
        """``(image_id, row, col)`` of merged results (flattened, row-major; entries with S < 0 skipped)."""
        S, I = np.ravel(S), np.ravel(I)
        valid = np.flatnonzero(S >= 0)
        groups = group_by_shard(S[valid], self.n_shards)
        calls = {s: self.actors[s].lookup.remote(I[valid[pos]]) for s, pos in enumerate(groups) if len(pos)}
        got = dict(zip(calls, ray.get(list(calls.values()))))
        out: list = [None] * len(valid)
        for s, pos in enumerate(groups):
            for p, hit in zip(pos, got.get(s, [])):
                out[p] = hit
        return out

    def stats(self) -> list[dict]:
        """Per shard: vectors, images, generation, RSS and peak RSS of its actor process (bytes)."""
        return ray.get([a.stats.remote() for a in self.actors])

    def pids(self) -> list[int]:
        """The process id of each shard's actor."""
        return ray.get([a.pid.remote() for a in self.actors])

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists probed per query in every shard from now on (the saved ``nprobe`` is unchanged)."""
        ray.get([a.set_nprobe.remote(int(nprobe)) for a in self.actors])

    def close(self) -> None:
        """Stop the shard actors (saved shards stay on disk)."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _gather(refs: list) -> list[Any]:
    """``ray.get`` of each ref, with a ``RayActorError`` in place of the result of a call whose actor died."""
    out: list[Any] = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except RayActorError as e:
            out.append(e)
    return out


def faiss_clone_empty(index):
    """A copy of ``index`` with its vectors removed and its training (IVF quantizer, PQ codebooks) kept."""
    from actors.selection._faiss import faiss

    out = faiss.clone_index(index)
    out.reset()
    return out


def batches(image_ids: Sequence[str], xb: np.ndarray, counts: Sequence[int], rows: np.ndarray,
            cols: np.ndarray) -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Split flat arrays (``counts[i]`` vectors per image) into :meth:`ShardedIndex.add`'s per-image tuples."""
    ends = np.cumsum(counts)
    for image_id, e, c in zip(image_ids, ends, counts):
        yield image_id, xb[e - c:e], rows[e - c:e], cols[e - c:e]


__all__ = ["ShardActor", "ShardImagesLost", "ShardedIndex", "batches", "faiss_clone_empty"]
