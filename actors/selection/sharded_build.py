"""The region index as `assay index` keeps it: one FAISS index, or (``--shards N``) a sharded index on Ray actors.

:func:`index_region` is what ``assay index`` and the ``index`` job step call for the region vectors; it decides
between the two forms and between building and growing:

* ``shards=None``: keep the form the workspace has (a sharded index once one exists, else the single index).
* ``shards=N >= 1``: a sharded index of N shards (built when there is none, or when N, the factory or the cell
  pooling changes; otherwise grown). ``shards=0``: back to the single index (the sharded one is deleted).

Contract
--------
* :func:`build_sharded` indexes the same vectors as :func:`~actors.selection.index.build_index` with the same seed:
  the same centre (the pool's mean cell from the same seeded sample), the same k×k cell pooling, the same factory
  (:func:`~actors.selection.index.choose_factory` of the vector count) trained on the same sample; the trained,
  empty index is every shard's template (:mod:`actors.selection.sharded`). So a search returns what the single
  index returns, and ``assay mine`` selects the same images.
* :func:`grow_sharded` adds only the images no shard holds (each shard is asked about the images of its hash), then
  commits every shard; a re-run after a crash adds nothing twice.
* A shard actor that restarts mid-build (and so reloads its last committed generation) is detected when the shards
  are saved (:class:`~actors.selection.sharded.ShardImagesLost`); the images it lost are read from the feature store
  and added again, up to :data:`REDO_LOST` times, then the error is raised: a build never ends with images missing.
* The top manifest records the feature store (:func:`~actors.features.store.store_fingerprint`); opening or growing
  a sharded index of a store that changed since raises a one-line ``UserError`` saying to rebuild.
* The shards live on Ray actors (``actors.core.runtime.init_ray``: the cluster at ``RAY_ADDRESS`` or a local one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.core.errors import UserError
from actors.core.workspace import Workspace
from actors.features.store import feature_meta, iter_feature_maps, store_fingerprint
from actors.selection._faiss import faiss
from actors.selection.index import (CENTER_CELLS, default_cell_pool, _cell_counts, _first_dim, _sample_images,
                                    _training_sample, build_index, add_to_index, cell_vectors, choose_factory,
                                    index_dir, load_manifest, outgrows_flat, pool_center)
from actors.selection.shard_store import shards_root

if TYPE_CHECKING:
    from actors.selection.sharded import ShardedIndex

REDO_LOST = 3  # times the images of a restarted shard actor are added again before the build fails


def sharded_manifest(ws: Workspace, model: str) -> dict | None:
    """The top manifest of ``model``'s sharded index, or None when it has none."""
    rel = f"{shards_root(model)}/manifest.json"
    return ws.read_json(rel) if ws.exists(rel) else None


def open_sharded(ws: Workspace, model: str, *, threads: int = 1) -> "ShardedIndex":
    """Start the shard actors of ``model``'s sharded index (each memory-maps its shard); refuses a stale one."""
    from actors.core.runtime import init_ray
    from actors.selection.sharded import ShardedIndex

    man = sharded_manifest(ws, model)
    if man is None:
        raise UserError(f"{ws.path(shards_root(model))}: no sharded index; run `assay index --shards N`")
    _check_store(ws, model, man)
    init_ray()
    return ShardedIndex.open(ws, model, threads=threads)


def indexed_images(ws: Workspace, model: str) -> set[str]:
    """Image ids in ``model``'s region index, single or sharded (read from the committed files: no Ray needed)."""
    import posixpath

    from actors.selection.index import load_index

    top = sharded_manifest(ws, model)
    if top is None:
        return load_index(ws, model).indexed_images()
    root, out = shards_root(model), set()
    for k in range(int(top["n_shards"])):
        rel = posixpath.join(root, str(k), "manifest.json")
        if ws.exists(rel):
            man = ws.read_json(rel)
            out.update(ws.read_table(posixpath.join(root, str(k), man["images_file"])).column("image_id").to_pylist())
    return out


def build_sharded(ws: Workspace, model: str, *, n_shards: int, factory: str | None = None, nprobe: int | None = None,
                  cell_pool: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """(Re)build ``model``'s sharded region index over ``n_shards`` actors (see the module contract); returns
    :func:`summary`. An existing sharded index is deleted first."""
    from actors.core.runtime import init_ray
    from actors.selection.sharded import ShardedIndex

    if n_shards < 1:
        raise UserError(f"--shards must be >= 1, got {n_shards}")
    cell_pool = default_cell_pool(ws, model) if cell_pool is None else cell_pool
    if cell_pool < 1:
        raise UserError(f"cell_pool must be >= 1, got {cell_pool}")
    store = store_fingerprint(ws, model)
    counts = _cell_counts(ws, model, cell_pool)
    n = sum(counts.values())
    if n == 0:
        raise UserError(f"model {model!r} has no ok feature maps to index")
    dim = int(feature_meta(ws, model).get("dim") or _first_dim(ws, model))
    chosen = "given" if factory else "by size"
    factory = factory or choose_factory(n, dim)
    template = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    center = pool_center(iter_feature_maps(ws, model, image_ids=_sample_images(counts, CENTER_CELLS, seed)))
    trained_on = 0
    if not template.is_trained:
        xt = _training_sample(ws, model, "region", counts, template, seed, center, cell_pool)
        trained_on = len(xt)
        template.train(xt)
        del xt
    ws.delete(shards_root(model))
    init_ray()
    idx = ShardedIndex.create(ws, model, template, n_shards=n_shards, factory=factory,
                              nprobe=(nprobe or 32) if "IVF" in factory else 0, center=center, cell_pool=cell_pool,
                              trained_on=trained_on)
    try:
        _write_store(ws, model, store, factory_chosen=chosen)
        _add(idx, ws, model, None, cell_pool, progress)
        return summary(idx)
    finally:
        idx.close()


def grow_sharded(ws: Workspace, model: str, *, progress: bool = True) -> dict:
    """Add the ok feature maps of images no shard holds yet, commit every shard; returns :func:`summary`."""
    idx = open_sharded(ws, model)
    try:
        ok = sorted(_cell_counts(ws, model))
        new = idx.missing(ok)
        if new:
            _add(idx, ws, model, new, int(idx.manifest.get("cell_pool") or 1), progress)
        return summary(idx, added_images=len(new))
    finally:
        idx.close()


def index_region(ws: Workspace, model: str, *, shards: int | None = None, factory: str | None = None,
                 rebuild: bool = False, cell_pool: int | None = None, progress: bool = True) -> dict:
    """Build or grow ``model``'s region index in the form asked for (see the module docstring); returns a dict with
    ``kind, factory, n, images, dim, cell_pool, trained_on, shards`` (0 = single index; then also the rest of its
    :class:`~actors.selection.index.IndexManifest`) and ``added_images``."""
    sharded = sharded_manifest(ws, model)
    if shards is not None and shards < 0:
        raise UserError(f"--shards must be >= 0, got {shards}")
    if shards == 0 or (shards is None and sharded is None):  # the single index
        old = load_manifest(ws, model, "region")
        before = old.images if old else 0
        if rebuild or old is None or factory or (cell_pool is not None and cell_pool != old.cell_pool):
            man = build_index(ws, model, kind="region", factory=factory, progress=progress,
                              cell_pool=cell_pool or (old.cell_pool if old else None))
        else:
            man = add_to_index(ws, model, kind="region", progress=progress)
        if sharded is not None:
            ws.delete(shards_root(model))  # one form at a time
        return dict(vars(man), shards=0, added_images=man.images - before)
    n_shards = shards or int(sharded["n_shards"])
    if (rebuild or sharded is None or factory or n_shards != int(sharded["n_shards"])
            or (cell_pool is not None and cell_pool != int(sharded.get("cell_pool") or 1))
            or _sharded_outgrows_flat(ws, model, sharded)):
        single = load_manifest(ws, model, "region")
        pool = cell_pool or (int(sharded.get("cell_pool") or 1) if sharded else single.cell_pool if single
                             else None)
        out = build_sharded(ws, model, n_shards=n_shards, factory=factory, cell_pool=pool, progress=progress)
        out["added_images"] = out["images"]
    else:
        out = grow_sharded(ws, model, progress=progress)
    drop_single(ws, model)  # one form at a time: a single region index left beside the shards would go stale
    return out


def _sharded_outgrows_flat(ws: Workspace, model: str, top: dict) -> bool:
    """An exact sharded index chosen by size that its store's ok images now take to :data:`FLAT_MAX` vectors or
    more (a build of that size would be IVF-PQ: :func:`~actors.selection.index.outgrows_flat`)."""
    if top.get("factory") != "Flat":
        return False
    n = sum(_cell_counts(ws, model, int(top.get("cell_pool") or 1)).values())
    return outgrows_flat("Flat", top.get("extra") or {}, n, int(top["dim"]))


def drop_single(ws: Workspace, model: str) -> None:
    """Delete ``model``'s single region index (its files, then its manifest), leaving the shards folder."""
    man = load_manifest(ws, model, "region")
    if man is None:
        return
    rel = index_dir(model, "region")
    for name in (man.index_file, man.ids_file, man.images_file):
        if name:
            ws.delete(f"{rel}/{name}")
    ws.delete(f"{rel}/manifest.json")


def summary(idx: "ShardedIndex", **extra) -> dict:
    """What ``assay index`` prints for a sharded index (totals over the shards)."""
    st = idx.stats()
    m = idx.manifest
    return {"kind": "region", "factory": m["factory"], "n": sum(s["n"] for s in st),
            "images": sum(s["images"] for s in st), "dim": int(m["dim"]), "cell_pool": int(m.get("cell_pool") or 1),
            "trained_on": int(m.get("trained_on") or 0), "shards": idx.n_shards,
            "shard_vectors": [s["n"] for s in st], **extra}


def _add(idx: "ShardedIndex", ws: Workspace, model: str, image_ids: list[str] | None, cell_pool: int,
         progress: bool) -> None:
    """Add the feature maps of ``image_ids`` (None: all) to the shards and save; images a restarted shard actor
    lost are added again (:data:`REDO_LOST` times at most, then :class:`ShardImagesLost` is raised)."""
    from tqdm.auto import tqdm

    from actors.selection.sharded import ShardImagesLost

    center = idx.center
    bar = tqdm(total=len(image_ids) if image_ids is not None else None, disable=not progress,
               desc=f"index {model} ({idx.n_shards} shards)", unit="img", leave=False)

    def vectors(ids: list[str] | None):
        for fm in iter_feature_maps(ws, model, image_ids=ids):
            xb, rows, cols = cell_vectors(fm, "region", center, cell_pool)
            bar.update(1)
            yield fm.image_id, xb, rows, cols

    for attempt in range(REDO_LOST + 1):
        try:
            idx.add(vectors(image_ids))
            idx.save()
            break
        except ShardImagesLost as e:
            if attempt == REDO_LOST:
                raise
            image_ids = sorted(e.image_ids)  # a restarted actor reloaded its last commit: add what it lost again
    bar.close()


def _write_store(ws: Workspace, model: str, store: dict, factory_chosen: str) -> None:
    rel = f"{shards_root(model)}/manifest.json"
    top = ws.read_json(rel)
    top["extra"] = dict(top.get("extra") or {}, store=store, model=model, factory_chosen=factory_chosen)
    ws.write_json(rel, top)


def _check_store(ws: Workspace, model: str, man: dict) -> None:
    was, now = (man.get("extra") or {}).get("store"), store_fingerprint(ws, model)
    if was == now:
        return
    what = (", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in now if was.get(k) != now.get(k))
            if was else "a sharded index that does not record its feature store")
    raise UserError(f"{ws.path(shards_root(model))}: the sharded index is stale, features/{model} changed since it "
                    f"was built ({what}); rebuild it: assay index --model {model} --rebuild")


__all__ = ["build_sharded", "grow_sharded", "index_region", "indexed_images", "open_sharded", "sharded_manifest", "summary"]
