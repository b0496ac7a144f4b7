"""FAISS index over region vectors: every cell of every feature map, with an id map back to (image, row, col).

Layout in the workspace (``index/<name>/``, ``name`` = the model, or ``<model>-global`` for the whole-image
baseline)::

    index-g00003.faiss   the FAISS index (CPU form), generation 3
    ids-g00003.parquet   faiss id (= row number) -> code (int32), row, col   (row = col = -1 for global vectors)
    images-g00003.parquet  image code (= row number) -> image_id: one string per image, none per vector
    manifest.json        factory, metric, n, dim, trained_on, images, generation, file names, store

Contract
--------
* Vectors are *centred* (the pool's mean cell vector, ``manifest.center``, is subtracted) and then L2-normalised
  fp32; the metric is inner product, so scores are cosine similarities in [-1, 1]. Centring matters: backbone cells
  share a large common component (mostly background), so raw cosines between any two cells are high and
  uninformative; after centring, a cell's direction says what is *different* about it. The mean is computed once
  at build time from a seeded sample of images and kept (``add_to_index`` reuses it); a manifest without one
  (older indexes) means no centring.
* A build or an incremental add writes a *new generation* of index + ids files, then the manifest that points at
  them (atomic rename), then deletes the previous generation. A crash at any point leaves the previous, consistent
  index readable; the manifest is the commit point.
* ``add_to_index`` adds only images that are not indexed yet (no retraining, no rebuild); an IVF/PQ index keeps the
  quantizers it was trained with, which is fine while the new images look like the old ones. The one exception: an
  exact index whose factory was chosen by size (not given) and that an add would grow to :data:`FLAT_MAX` vectors
  or more is rebuilt as :func:`choose_factory` picks for the new size (IVF-PQ), as a build of that size would be.
* The id map holds integers only (a dense int32 image code per vector, codes numbered in the order images were
  added); the image ids are a separate one-row-per-image table. Indexes written before (a string ``image_id`` per
  vector, no ``images_file`` in the manifest) still load: their strings are dictionary-encoded once at load, and the
  next ``add_to_index`` rewrites them in the integer form.
* The index type comes from the vector count (:func:`choose_factory`) unless a FAISS factory string is given.
* GPU FAISS is used for training/adding when ``faiss.get_num_gpus() > 0``; the saved index is always the CPU form,
  written and read with FAISS's own file I/O (memory-mapped for search, see :mod:`actors.selection._faiss`).
* The manifest's ``store`` records the feature store the index was built from (backbone, weights id, stride, pooling,
  dim, PCA: :func:`~actors.features.store.store_fingerprint`). Loading or adding to an index whose store has
  changed since (re-embedded with other weights or settings) raises a one-line ``UserError`` that says to rebuild:
  old vectors and the old centre never mix with new ones silently.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.core.errors import UserError
from actors.core.workspace import Workspace, WorkspaceError
from actors.features.store import (FeatureMap, feature_meta, feature_rows, features_dir, iter_feature_maps,
                                   store_fingerprint)
from actors.selection._faiss import faiss, read_index, write_index

METRIC = "inner_product"
FLAT_MAX = 1_000_000          # below this many vectors: exact IndexFlatIP
TRAIN_PER_CENTROID = 64       # FAISS wants >= 39 training points per centroid
TRAIN_MAX = 500_000
ADD_BATCH = 65_536
CELL_POOL = 2                 # region vectors: k×k blocks of stored cells when the store's cell size is unknown
COARSE_BLOCK_PX = 32          # default region vectors: blocks of about 32 px (2×2 cells of the 16-px default store:
                              # 192 vectors per 512×384 image instead of 768 for 16-px blocks; bench/feature_store.py
                              # --part coarse: recall kept 0.97 on the report world, 1.01-1.08 on the tuning world)
CENTER_CELLS = 200_000        # cells (from whole images drawn at random) that estimate the pool's mean cell
KINDS = ("region", "global")


@dataclass
class IndexManifest:
    """What ``index/<name>/manifest.json`` holds."""

    model: str
    kind: str
    factory: str
    metric: str
    n: int
    dim: int
    trained_on: int
    images: int
    generation: int = 0
    index_file: str = ""
    ids_file: str = ""
    images_file: str = ""  # image code -> image_id table ("": an index written before, with image_id per vector)
    nprobe: int = 0
    center: list = field(default_factory=list)  # C floats subtracted before normalising; [] = none
    cell_pool: int = 1  # region vectors = k×k blocks of stored cells, averaged (1: every stored cell)
    store: dict = field(default_factory=dict)  # store_fingerprint of the features it was built from ({}: unknown)
    extra: dict = field(default_factory=dict)


def index_dir(model: str, kind: str = "region") -> str:
    """Workspace-relative folder of a model's index (``kind`` = "region" or "global")."""
    if kind not in KINDS:
        raise UserError(f"index kind must be one of {KINDS}, got {kind!r}")
    features_dir(model)  # validates the name
    return f"index/{model}" if kind == "region" else f"index/{model}-global"


def choose_factory(n: int, dim: int) -> str:
    """FAISS factory string for ``n`` vectors of ``dim`` dims (inner product on unit vectors).

    ``Flat`` (exact) below :data:`FLAT_MAX`; above, ``IVF{k},PQ{m}`` with ``k`` ≈ 4·√n (a power of two) and
    ``m = dim/2`` sub-quantizers of 8 bits (``dim/2`` bytes per vector), with an OPQ rotation from 10M vectors.
    """
    if n < FLAT_MAX:
        return "Flat"
    k = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    m = max(d for d in range(1, max(1, dim // 2) + 1) if dim % d == 0)
    if n >= 10_000_000:
        return f"OPQ{m},IVF{k},PQ{m}"
    return f"IVF{k},PQ{m}"


def cell_vectors(fm: FeatureMap, kind: str = "region", center: np.ndarray | None = None,
                 cell_pool: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of one feature map: (xb n×C fp32, rows n int16, cols n int16).

    ``region``: one vector per cell (n = H·W, row-major), or with ``cell_pool`` = k one per k×k block of cells
    (border blocks average the cells they have; rows/cols are block coordinates); ``global``: the mean-pooled grid
    (n = 1, row = col = -1). ``center`` (C), when given, is subtracted before normalising.
    """
    c, h, w = fm.fmap.shape
    x = np.asarray(fm.fmap, dtype=np.float32)  # C×H×W
    if kind == "region" and cell_pool > 1:
        x, h, w = block_mean(x, cell_pool), -(-h // cell_pool), -(-w // cell_pool)
    cells = x.reshape(c, h * w).T  # (H·W)×C
    if kind == "global":
        cells = cells.mean(0, keepdims=True)  # 1×C
    if center is not None and len(center):
        cells = cells - np.asarray(center, np.float32)[None]
    if kind == "global":
        return normalize(cells), np.full(1, -1, np.int16), np.full(1, -1, np.int16)
    rows, cols = np.divmod(np.arange(h * w), w)
    return normalize(cells), rows.astype(np.int16), cols.astype(np.int16)


def block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """C×H×W -> C×ceil(H/k)×ceil(W/k): the mean of each k×k block (border blocks: of the cells they hold)."""
    c, h, w = x.shape
    hp, wp = -(-h // k) * k, -(-w // k) * k
    pad = np.zeros((c, hp, wp), np.float32)
    pad[:, :h, :w] = x
    ones = np.zeros((hp, wp), np.float32)
    ones[:h, :w] = 1.0
    sums = pad.reshape(c, hp // k, k, wp // k, k).sum(axis=(2, 4))
    counts = ones.reshape(hp // k, k, wp // k, k).sum(axis=(1, 3))
    return sums / counts[None]


def pool_center(fmaps: Iterable[FeatureMap]) -> np.ndarray:
    """Mean cell vector (C, fp32) of the given feature maps: every cell weighs the same."""
    total, n = None, 0
    for fm in fmaps:
        c = fm.fmap.shape[0]
        x = np.asarray(fm.fmap, dtype=np.float32).reshape(c, -1)  # C×(H·W)
        total = x.sum(1, dtype=np.float64) if total is None else total + x.sum(1, dtype=np.float64)
        n += x.shape[1]
    if total is None:
        raise UserError("no feature maps to compute the pool's mean cell vector from")
    return (total / n).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero), fp32 C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class LoadedIndex:
    """A loaded index: ``search(xq, k) -> D, I`` plus the id map ``I -> (image_id, row, col)``.

    ``ids`` has an int ``code`` column (``image_names[code]`` is the image id) and ``row``/``col``; a legacy table
    with a string ``image_id`` column instead is dictionary-encoded here (``image_names`` is then ignored).
    """

    def __init__(self, manifest: IndexManifest, index: faiss.Index, ids: pa.Table,
                 image_names: list[str] | None = None) -> None:
        self.manifest = manifest
        self.index = index
        if "image_id" in ids.column_names:  # legacy id map: one string per vector
            enc = ids.column("image_id").combine_chunks().dictionary_encode()
            codes, image_names = enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()
        else:
            codes = ids.column("code").to_numpy()
        self.image_codes = np.asarray(codes, np.int32)  # n, faiss id -> image code
        self.image_names: list[str] = list(image_names or [])  # image code -> image_id
        self.rows = ids.column("row").to_numpy()  # n int16
        self.cols = ids.column("col").to_numpy()  # n int16
        self.ids = pa.table({"code": self.image_codes, "row": self.rows, "col": self.cols}, schema=IDS_SCHEMA)
        self.center = np.asarray(manifest.center, np.float32) if manifest.center else None  # C or None
        if manifest.nprobe:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", manifest.nprobe)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search of unit query vectors ``xq`` (nq×d): D, I of shape nq×k (I = -1 when short)."""
        if self.ntotal == 0:
            raise UserError(f"the {self.manifest.kind} index of model {self.manifest.model!r} is empty; "
                             "embed some images and run `assay index`")
        xq = normalize(np.atleast_2d(xq))
        if xq.shape[1] != self.manifest.dim:
            raise UserError(f"expected query vectors of dim {self.manifest.dim}, got {xq.shape[1]}")
        return self.index.search(xq, min(int(k), self.ntotal))

    def search_images(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search`, with the image code of each hit instead of its faiss id (-1 where short)."""
        D, I = self.search(xq, k)
        return D, np.where(I >= 0, self.image_codes[np.where(I >= 0, I, 0)], -1).astype(np.int64)

    def names(self, codes) -> list[str]:
        """Image ids of image codes, in their order."""
        return [self.image_names[int(c)] for c in codes]

    def indexed_images(self) -> set[str]:
        return set(self.image_names)

    def lookup(self, I: np.ndarray) -> list[tuple[str, int, int]]:
        """``(image_id, row, col)`` of each faiss id in ``I`` (flattened; -1 ids are skipped)."""
        return [(self.image_names[self.image_codes[i]], int(self.rows[i]), int(self.cols[i]))
                for i in np.ravel(I) if i >= 0]


# ------------------------------------------------------------------------------------------- build / add
def default_cell_pool(ws: Workspace, model: str) -> int:
    """Cells per block side for the coarse stage by default: blocks of about :data:`COARSE_BLOCK_PX` px
    (``round(32 / cell px)``, at least 1: 2 on 16-px stores, 4 on 8-px ones); :data:`CELL_POOL` when the store's
    meta has no cell size."""
    stride = feature_meta(ws, model).get("stride")
    return max(1, round(COARSE_BLOCK_PX / float(stride))) if stride else CELL_POOL


def build_index(ws: Workspace, model: str, *, factory: str | None = None, kind: str = "region",
                progress: bool = True, nprobe: int | None = None, seed: int = 0,
                cell_pool: int | None = None) -> IndexManifest:
    """Build (or rebuild) the index of ``model`` from every ok feature map in ``features/<model>/``.

    Parameters
    ----------
    factory : str, optional
        FAISS factory string; default :func:`choose_factory` of the vector count.
    kind : {"region", "global"}
        One vector per cell, or one mean-pooled vector per image (the whole-image baseline).
    nprobe : int, optional
        Lists probed at search time for IVF indexes (default 32, saved in the manifest).
    cell_pool : int
        Region vectors of k×k blocks of stored cells (default :func:`default_cell_pool`: blocks of about 32 px; k²
        fewer vectors, so the index of a pool of millions fits one node); the fine stage still matches the
        full-resolution stored maps. ``bench/feature_store.py --part coarse`` measured 32-px blocks (192 vectors
        per image) against 16-px ones (768) on two worlds: recall@100 on objects < 1% kept 0.97 on the report
        world and 1.01-1.08 on the tuning world.

    Returns
    -------
    IndexManifest. Raises ``WorkspaceError`` when the model has no features, ``ValueError`` when none are ok.
    """
    if cell_pool is not None and cell_pool < 1:
        raise UserError(f"cell_pool must be >= 1, got {cell_pool}")
    meta = feature_meta(ws, model)
    cell_pool = (cell_pool or default_cell_pool(ws, model)) if kind == "region" else 1
    store = store_fingerprint(ws, model)
    counts = _cell_counts(ws, model, cell_pool)
    n = sum(counts.values()) if kind == "region" else len(counts)
    if n == 0:
        raise UserError(f"model {model!r} has no ok feature maps to index")
    dim = int(meta.get("dim") or _first_dim(ws, model))
    given = factory is not None
    factory = factory or choose_factory(n, dim)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    center = pool_center(iter_feature_maps(ws, model, image_ids=_sample_images(counts, CENTER_CELLS, seed)))
    trained_on = 0
    if not index.is_trained:
        xt = _training_sample(ws, model, kind, counts, index, seed, center, cell_pool)
        trained_on = len(xt)
        index = _to_gpu(index)
        index.train(xt)
    else:
        index = _to_gpu(index)
    names: list[str] = []
    ids = _add_all(index, iter_feature_maps(ws, model), kind, n, progress, f"index {model} ({kind})", center,
                   cell_pool, names)
    man = IndexManifest(model=model, kind=kind, factory=factory, metric=METRIC, n=0, dim=dim,
                        trained_on=trained_on, images=0,
                        nprobe=(nprobe or 32) if "IVF" in factory else 0, center=center.tolist(), cell_pool=cell_pool,
                        store=store, extra={"factory_chosen": "given" if given else "by size"})
    return _save(ws, man, _to_cpu(index), ids, names, previous=_read_manifest(ws, model, kind))


def outgrows_flat(factory: str, extra: dict, n: int, dim: int) -> bool:
    """Whether an index of ``factory`` chosen by size (``extra["factory_chosen"]`` is not ``"given"``) should
    become what :func:`choose_factory` picks for ``n`` vectors: it is exact and ``n`` reached :data:`FLAT_MAX`."""
    return factory == "Flat" and (extra or {}).get("factory_chosen") != "given" and choose_factory(n, dim) != "Flat"


def add_to_index(ws: Workspace, model: str, *, kind: str = "region", progress: bool = True) -> IndexManifest:
    """Add the feature maps of images not indexed yet to the existing index (no rebuild); builds when none."""
    man = _read_manifest(ws, model, kind)
    if man is None:
        return build_index(ws, model, kind=kind, progress=progress)
    loaded = load_index(ws, model, kind=kind, mmap=False)  # it is added to: read it into memory
    done = loaded.indexed_images()
    counts = _cell_counts(ws, model, man.cell_pool)
    new = sorted(set(counts) - done)
    if not new:
        return man
    grown = man.n + (sum(counts[i] for i in new) if kind == "region" else len(new))
    if outgrows_flat(man.factory, man.extra, grown, man.dim):  # past FLAT_MAX: the factory a build would choose
        return build_index(ws, model, kind=kind, progress=progress, nprobe=man.nprobe or None,
                           cell_pool=man.cell_pool if kind == "region" else None)
    index = _to_gpu(loaded.index)
    names = list(loaded.image_names)
    ids = _add_all(index, iter_feature_maps(ws, model, image_ids=new), kind, None, progress, f"add {model}",
                   loaded.center, man.cell_pool, names)
    return _save(ws, man, _to_cpu(index), pa.concat_tables([loaded.ids, ids]), names, previous=man)


def load_index(ws: Workspace, model: str, *, kind: str = "region", mmap: bool = True) -> LoadedIndex:
    """Load the index of ``model`` (memory-mapped read-only with ``mmap``: search only, never add to it).

    Raises ``WorkspaceError`` naming the fix when it has not been built, ``UserError`` when the feature store changed
    since it was built (:func:`check_store`).
    """
    man = _read_manifest(ws, model, kind)
    if man is None:
        raise WorkspaceError(f"{ws.path(index_dir(model, kind))}: no {kind} index for model {model!r}; "
                             f"run `assay index --model {model}`")
    check_store(ws, man)
    rel = index_dir(model, kind)
    index = read_index(ws, posixpath.join(rel, man.index_file), index_type=man.factory, mmap=mmap)
    ids = ws.read_table(posixpath.join(rel, man.ids_file))
    if index.ntotal != len(ids) or index.ntotal != man.n:
        raise WorkspaceError(f"{ws.path(rel)}: index holds {index.ntotal} vectors, id map {len(ids)}, "
                             f"manifest {man.n}; rebuild with `assay index`")
    names = (ws.read_table(posixpath.join(rel, man.images_file)).column("image_id").to_pylist()
             if man.images_file else None)
    if names is None and "image_id" not in ids.column_names:
        raise WorkspaceError(f"{ws.path(rel)}: id map without image ids; rebuild with `assay index --rebuild`")
    return LoadedIndex(man, index, ids, names)


def check_store(ws: Workspace, man: IndexManifest) -> None:
    """Raise a one-line ``UserError`` (saying to rebuild) when ``man`` was built from another feature store."""
    now = store_fingerprint(ws, man.model)
    if man.store == now:
        return
    what = (", ".join(f"{k} {man.store.get(k)!r} -> {now.get(k)!r}" for k in now if man.store.get(k) != now.get(k))
            if man.store else "an index that does not record its feature store")
    raise UserError(f"{ws.path(index_dir(man.model, man.kind))}: the {man.kind} index is stale, features/{man.model} "
                    f"changed since it was built ({what}); rebuild it: assay index --model {man.model} --rebuild")


IDS_SCHEMA = pa.schema([("code", pa.int32()), ("row", pa.int16()), ("col", pa.int16())])
IMAGES_SCHEMA = pa.schema([("image_id", pa.string())])


def _add_all(index: faiss.Index, fmaps: Iterable[FeatureMap], kind: str, total: int | None,
             progress: bool, desc: str, center: np.ndarray | None = None, cell_pool: int = 1,
             names: list[str] | None = None) -> pa.Table:
    """Add the vectors of ``fmaps`` to ``index`` in batches of :data:`ADD_BATCH`; returns the id rows added.

    Each image gets the next image code: its id is appended to ``names`` (the code -> image_id list).
    """
    names = [] if names is None else names
    parts: list[pa.Table] = []
    buf: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    size = 0
    bar = _bar(total, progress, desc)

    def flush() -> None:
        nonlocal buf, size
        if not buf:
            return
        xb = np.concatenate([b[1] for b in buf])  # n×C
        index.add(xb)
        parts.append(pa.table({
            "code": np.repeat(np.array([b[0] for b in buf], np.int32), [len(b[1]) for b in buf]),
            "row": np.concatenate([b[2] for b in buf]), "col": np.concatenate([b[3] for b in buf]),
        }, schema=IDS_SCHEMA))
        bar.update(len(xb))
        buf, size = [], 0

    for fm in fmaps:
        xb, rows, cols = cell_vectors(fm, kind, center, cell_pool)
        buf.append((len(names), xb, rows, cols))
        names.append(fm.image_id)
        size += len(xb)
        if size >= ADD_BATCH:
            flush()
    flush()
    bar.close()
    return pa.concat_tables(parts) if parts else IDS_SCHEMA.empty_table()


def _sample_images(counts: dict[str, int], want: int, seed: int) -> list[str]:
    """Whole images drawn at random (seeded) until they hold ``want`` vectors (``counts``: image -> vectors)."""
    order = np.random.default_rng(seed).permutation(sorted(counts))
    chosen, got = [], 0
    for image_id in order:
        chosen.append(str(image_id))
        got += counts[image_id]
        if got >= want:
            break
    return chosen


def _training_sample(ws: Workspace, model: str, kind: str, counts: dict[str, int], index: faiss.Index,
                     seed: int, center: np.ndarray | None = None, cell_pool: int = 1) -> np.ndarray:
    """A seeded sample of (centred, unit) vectors for training: whole images drawn at random until enough."""
    nlist = faiss.extract_index_ivf(index).nlist if _is_ivf(index) else 256
    want = min(TRAIN_MAX, max(TRAIN_PER_CENTROID * nlist, 10_000))
    rng = np.random.default_rng(seed)
    per = counts if kind == "region" else dict.fromkeys(counts, 1)
    chosen = _sample_images(per, want, seed)
    xt = np.concatenate([cell_vectors(fm, kind, center, cell_pool)[0]
                         for fm in iter_feature_maps(ws, model, image_ids=chosen)])
    if len(xt) > want:
        xt = xt[rng.choice(len(xt), want, replace=False)]
    return np.ascontiguousarray(xt)


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except (RuntimeError, AttributeError):
        return False


def _cell_counts(ws: Workspace, model: str, cell_pool: int = 1) -> dict[str, int]:
    """image_id -> number of region vectors (cells, or k×k blocks), for the ok rows of the store (reads no maps)."""
    t = feature_rows(ws, model, columns=["image_id", "grid_h", "grid_w", "status"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    h = t.column("grid_h").to_numpy().astype(np.int64)
    w = t.column("grid_w").to_numpy().astype(np.int64)
    n = -(-h // cell_pool) * -(-w // cell_pool)
    return dict(zip(t.column("image_id").to_pylist(), n.tolist()))


def _first_dim(ws: Workspace, model: str) -> int:
    for fm in iter_feature_maps(ws, model):
        return int(fm.fmap.shape[0])
    raise UserError(f"model {model!r} has no ok feature maps to index")


def _save(ws: Workspace, man: IndexManifest, index: faiss.Index, ids: pa.Table, names: list[str],
          previous: IndexManifest | None) -> IndexManifest:
    rel = index_dir(man.model, man.kind)
    gen = (previous.generation + 1) if previous else 1
    stale = ([previous.index_file, previous.ids_file, previous.images_file]
             if previous else [])  # read before ``man`` (maybe previous) changes
    man.generation, man.n = gen, int(index.ntotal)
    man.images = len(names)
    man.index_file, man.ids_file = f"index-g{gen:05d}.faiss", f"ids-g{gen:05d}.parquet"
    man.images_file = f"images-g{gen:05d}.parquet"
    write_index(ws, posixpath.join(rel, man.index_file), index)
    ws.write_table(posixpath.join(rel, man.ids_file), ids.cast(IDS_SCHEMA))
    ws.write_table(posixpath.join(rel, man.images_file), pa.table({"image_id": names}, schema=IMAGES_SCHEMA))
    ws.write_json(posixpath.join(rel, "manifest.json"), asdict(man))  # commit point
    for name in stale:
        if name:
            ws.delete(posixpath.join(rel, name))
    return man


def load_manifest(ws: Workspace, model: str, kind: str = "region") -> IndexManifest | None:
    """The saved manifest of ``model``'s index, or None when it has not been built."""
    return _read_manifest(ws, model, kind)


def _read_manifest(ws: Workspace, model: str, kind: str) -> IndexManifest | None:
    rel = posixpath.join(index_dir(model, kind), "manifest.json")
    if not ws.exists(rel):
        return None
    return IndexManifest(**ws.read_json(rel))


def _to_gpu(index: faiss.Index) -> faiss.Index:
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "StandardGpuResources"):
        return index
    try:
        global _GPU_RES
        _GPU_RES = globals().get("_GPU_RES") or faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_GPU_RES, 0, index)
    except RuntimeError:  # index type without a GPU implementation (e.g. HNSW): stay on CPU
        return index


def _to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def _bar(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="vec", leave=False)
