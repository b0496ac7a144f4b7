"""One shard of a sharded index, on disk and in memory (FAISS + workspace I/O, no Ray).

Layout in the workspace (``root`` = ``index/<model>/shards``)::

    manifest.json             n_shards, factory, dim, metric, nprobe, center, cell_pool, trained_on (written once)
    template.faiss            the trained, empty index every shard starts from (IVF: the shared quantizer)
    <k>/manifest.json         generation, n, images, index_file, ids_file, images_file     (commit point of shard k)
    <k>/index-g00002.faiss    FAISS index of shard k
    <k>/ids-g00002.parquet    shard-local faiss id -> code (int32), row, col
    <k>/images-g00002.parquet code -> image_id (one row per image)

Contract
--------
* A shard starts from ``template.faiss`` (so IVF shards share one trained quantizer and PQ codebooks, and a shard
  holds exactly the lists a single index would hold for its images).
* :meth:`Shard.add` adds whole images and skips those it already holds (an add can be re-run after a crash).
* :meth:`Shard.save` writes a new generation (index, ids, images; each atomic), then the shard manifest (the commit
  point), then deletes the previous generation, and reopens the index memory-mapped (read-only, paged in on demand).
* The id map is integers only (int32 image code, int16 row/col); image ids are one string per image.
"""

from __future__ import annotations

import posixpath
from typing import Sequence

import numpy as np
import pyarrow as pa

from actors.core.workspace import Workspace, WorkspaceError
from actors.selection._faiss import faiss, read_index, write_index
from actors.selection.index import IDS_SCHEMA, IMAGES_SCHEMA

TEMPLATE = "template.faiss"


def shards_root(model: str) -> str:
    """Workspace-relative folder of ``model``'s sharded index."""
    return f"index/{model}/shards"


class Shard:
    """Shard ``k`` of the sharded index under ``root``: load (memory-mapped), add, save, search, look up."""

    def __init__(self, ws: Workspace, root: str, k: int, *, mmap: bool = True) -> None:
        self.ws, self.root, self.k, self.mmap = ws, root, int(k), mmap
        top = ws.read_json(posixpath.join(root, "manifest.json"))
        self.factory, self.nprobe = str(top["factory"]), int(top.get("nprobe") or 0)
        self.rel = posixpath.join(root, str(self.k))
        self.man: dict = ws.read_json(posixpath.join(self.rel, "manifest.json")) if ws.exists(
            posixpath.join(self.rel, "manifest.json")) else {"generation": 0}
        if self.man["generation"]:
            self.index = read_index(ws, posixpath.join(self.rel, self.man["index_file"]), index_type=self.factory,
                                    mmap=mmap)
            ids = ws.read_table(posixpath.join(self.rel, self.man["ids_file"]))
            self.codes = ids.column("code").to_numpy().astype(np.int32)
            self.rows = ids.column("row").to_numpy().astype(np.int16)
            self.cols = ids.column("col").to_numpy().astype(np.int16)
            self.names: list[str] = ws.read_table(posixpath.join(self.rel, self.man["images_file"])).column(
                "image_id").to_pylist()
            if self.index.ntotal != len(self.codes):
                raise WorkspaceError(f"{ws.path(self.rel)}: index holds {self.index.ntotal} vectors, id map "
                                     f"{len(self.codes)}; rebuild the sharded index")
        else:
            self.index = read_index(ws, posixpath.join(root, TEMPLATE), index_type=self.factory, mmap=False)
            self.codes, self.rows, self.cols = (np.zeros(0, np.int32), np.zeros(0, np.int16), np.zeros(0, np.int16))
            self.names = []
        self._code = {n: c for c, n in enumerate(self.names)}
        self._writable = not (self.man["generation"] and mmap)
        self._set_nprobe()

    def set_nprobe(self, nprobe: int) -> None:
        """Lists probed per query from now on (IVF shards; ignored by exact ones). Not saved."""
        self.nprobe = int(nprobe)
        self._set_nprobe()

    def _set_nprobe(self) -> None:
        if self.nprobe and "IVF" in self.factory:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", self.nprobe)

    # ------------------------------------------------------------------------------------------- add / save
    def add(self, image_ids: Sequence[str], counts: Sequence[int], xb: np.ndarray, rows: np.ndarray,
            cols: np.ndarray) -> int:
        """Add images (``counts[i]`` consecutive vectors of ``xb`` belong to ``image_ids[i]``); returns vectors added.

        Images the shard already holds are skipped. Nothing is on disk until :meth:`save`.
        """
        counts = np.asarray(counts, np.int64)
        if counts.sum() != len(xb) or len(rows) != len(xb) or len(cols) != len(xb):
            raise ValueError(f"shard {self.k}: {len(xb)} vectors but counts sum to {counts.sum()}")
        keep_img = np.array([i not in self._code for i in image_ids], bool)
        if not keep_img.any():
            return 0
        keep = np.repeat(keep_img, counts)
        if not self._writable:  # memory-mapped read-only: read it into memory to add to it
            self.index = read_index(self.ws, posixpath.join(self.rel, self.man["index_file"]),
                                    index_type=self.factory, mmap=False)
            self._set_nprobe()
            self._writable = True
        new = [str(i) for i, k in zip(image_ids, keep_img) if k]
        first = len(self.names)
        for c, name in enumerate(new, first):
            self._code[name] = c
        self.names.extend(new)
        codes = np.repeat(np.arange(first, first + len(new), dtype=np.int32), counts[keep_img])
        self.index.add(np.ascontiguousarray(xb[keep], np.float32))
        self.codes = np.concatenate([self.codes, codes])
        self.rows = np.concatenate([self.rows, np.asarray(rows, np.int16)[keep]])
        self.cols = np.concatenate([self.cols, np.asarray(cols, np.int16)[keep]])
        return int(keep.sum())

    def save(self) -> dict:
        """Write a new generation and commit it (see the module contract); returns the shard manifest."""
        if self.man["generation"] and self.man["n"] == self.index.ntotal:
            return self.man  # nothing added since the last save
        gen = int(self.man["generation"]) + 1
        stale = [self.man.get(f) for f in ("index_file", "ids_file", "images_file")]
        man = {"generation": gen, "n": int(self.index.ntotal), "images": len(self.names),
               "index_file": f"index-g{gen:05d}.faiss", "ids_file": f"ids-g{gen:05d}.parquet",
               "images_file": f"images-g{gen:05d}.parquet"}
        write_index(self.ws, posixpath.join(self.rel, man["index_file"]), self.index)
        self.ws.write_table(posixpath.join(self.rel, man["ids_file"]),
                            pa.table({"code": self.codes, "row": self.rows, "col": self.cols}, schema=IDS_SCHEMA))
        self.ws.write_table(posixpath.join(self.rel, man["images_file"]),
                            pa.table({"image_id": self.names}, schema=IMAGES_SCHEMA))
        self.ws.write_json(posixpath.join(self.rel, "manifest.json"), man)  # commit point
        for name in stale:
            if name:
                self.ws.delete(posixpath.join(self.rel, name))
        self.man = man
        if self.mmap:  # serve searches from the memory-mapped file, free the in-memory copy
            self.index = read_index(self.ws, posixpath.join(self.rel, man["index_file"]), index_type=self.factory,
                                    mmap=True)
            self._set_nprobe()
            self._writable = False
        return man

    # ------------------------------------------------------------------------------------------- query
    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of unit ``xq`` (nq×d): D, I (shard-local ids), nq×k (I = -1 where the shard holds fewer)."""
        if self.index.ntotal == 0:
            nq = len(xq)
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        return self.index.search(np.ascontiguousarray(xq, np.float32), int(k))

    def lookup(self, I: np.ndarray) -> list[tuple[str, int, int]]:
        """``(image_id, row, col)`` of shard-local ids ``I`` (flattened; ids < 0 skipped)."""
        return [(self.names[self.codes[i]], int(self.rows[i]), int(self.cols[i])) for i in np.ravel(I) if i >= 0]

    def missing(self, image_ids: Sequence[str]) -> list[str]:
        """The ids among ``image_ids`` this shard does not hold (in their order)."""
        return [str(i) for i in image_ids if i not in self._code]

    def image_codes(self, I: np.ndarray) -> np.ndarray:
        """Shard-local image code of each shard-local faiss id (same shape; -1 where the id is < 0)."""
        I = np.asarray(I, np.int64)
        return np.where(I >= 0, self.codes[np.where(I >= 0, I, 0)] if len(self.codes) else -1, -1).astype(np.int64)

    def image_names(self, codes: Sequence[int]) -> list[str]:
        """Image ids of shard-local image codes."""
        return [self.names[int(c)] for c in codes]

    def stats(self) -> dict:
        """n vectors, images, generation, and the resident set size of this process now and at its peak (bytes)."""
        return {"shard": self.k, "n": int(self.index.ntotal), "images": len(self.names),
                "generation": int(self.man["generation"]), "rss": _rss(), "peak_rss": _peak_rss()}


def write_template(ws: Workspace, root: str, template: faiss.Index, *, factory: str, nprobe: int = 0,
                   n_shards: int, center: np.ndarray | None = None, cell_pool: int = 1, trained_on: int = 0,
                   extra: dict | None = None) -> dict:
    """Create a sharded index under ``root``: the trained empty ``template`` and the top manifest."""
    if template.ntotal:
        raise ValueError("the shard template must be empty (trained, no vectors)")
    if ws.exists(posixpath.join(root, "manifest.json")):
        raise WorkspaceError(f"{ws.path(root)}: a sharded index exists already; delete it to rebuild")
    write_index(ws, posixpath.join(root, TEMPLATE), template)
    top = {"n_shards": int(n_shards), "factory": factory, "dim": int(template.d), "metric": "inner_product",
           "nprobe": int(nprobe), "center": [] if center is None else np.asarray(center, float).tolist(),
           "cell_pool": int(cell_pool), "trained_on": int(trained_on), "extra": extra or {}}
    ws.write_json(posixpath.join(root, "manifest.json"), top)
    return top


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (Linux /proc VmHWM; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["Shard", "TEMPLATE", "shards_root", "write_template"]
