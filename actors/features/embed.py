"""Region-grid features for every pool image, on Ray: the embedding pipeline.

Images go through :class:`~actors.features.encoder.RegionEncoder` (the one encoder pool and query images share).
:func:`embed_pool` plans shards over catalog image ids (:class:`~actors.core.shards.ShardedDataset`, resumable) and
runs, per group of pending shards, a Ray Data pipeline: ``from_items`` -> decode in tasks
(:func:`actors.core.images.decode_batch`) -> :class:`EmbedActor` pool -> rows streamed back to the driver, which
writes each shard atomically as soon as all its rows arrived. Unreadable images become ``status="error"`` rows.

Storage budget (fp16 grid, default 8-px cells): a 512×384 image with assay-small (stride 8, 64 ch) gives
48×64 cells × 64 × 2 B = 384 KiB; ``pca_dim=32`` halves it.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from actors.catalog.schema import IMAGES
from actors.core.errors import UserError
from actors.core.images import decode_batch
from actors.core.runtime import Resources, init_ray
from actors.core.shards import Shard, ShardedDataset
from actors.core.workspace import Workspace
from actors.features.backbones import parse_spec
from actors.features.encoder import (CELL_STRIDE, RegionEncoder, _backbone, _save_pca, fit_pca, load_region_encoder,
                                     store_name)
from actors.features.store import FEATURE_SCHEMA, encode_rows, features_dir, write_feature_shard


def embed_table(encoder: RegionEncoder, batch: dict[str, np.ndarray]) -> pa.Table:
    """Decoded batch (``image_id``, ``image``, ``error``, optional ``shard``) -> feature rows (+ ``shard``)."""
    ids = [str(i) for i in batch["image_id"]]
    ok = [i for i, e in enumerate(batch["error"]) if not e]
    fms = iter(encoder.encode_batch([np.asarray(batch["image"][i], np.uint8) for i in ok], [ids[i] for i in ok],
                                    half=True))
    oks = set(ok)
    table = encode_rows(next(fms) if i in oks else (ids[i], batch["error"][i]) for i in range(len(ids)))
    if "shard" in batch:
        table = table.append_column("shard", pa.array(np.asarray(batch["shard"], np.int64)))
    return table


class EmbedActor:
    """Ray Data callable class: loads the store's encoder once, then embeds decoded batches."""

    def __init__(self, workspace: str, model: str, device: str | None = None, threads: int | None = None,
                 batch_size: int = 16) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.encoder = load_region_encoder(Workspace(workspace), model, device=device, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return embed_table(self.encoder, batch)


# ------------------------------------------------------------------------------------------------ the step
@dataclass
class EmbedReport:
    """What :func:`embed_pool` did (this run) and the store it wrote to."""

    model: str
    backbone: str
    mode: str
    n_images: int
    n_embedded: int
    n_errors: int
    shards_total: int
    shards_written: int
    shards_skipped: int
    dim: int
    cell_stride: int
    bytes_per_image: float
    seconds: float
    images_per_s: float
    startup_s: float = math.nan  # from the call until the first embedded rows came back (workers, model load)
    steady_images_per_s: float = math.nan  # images/s after that (what a long run converges to)
    n_left_catalog: int = 0  # keys of pending shards no longer in the catalog: written as error rows (in n_errors)


def _write_shard(ds: ShardedDataset, shard: Shard, tables: list[pa.Table]) -> pa.Table:
    """Write one shard's rows sorted by image_id (what :class:`~actors.features.store.FeatureReader` relies on).

    Batches hold runs of consecutive ids, so ordering the batches by their first id usually sorts the rows
    without copying the feature bytes; a full sort is the fallback."""
    tables = sorted((t.select(FEATURE_SCHEMA.names) for t in tables if t.num_rows),
                    key=lambda t: t["image_id"][0].as_py())
    table = pa.concat_tables(tables).cast(FEATURE_SCHEMA)
    ids = table["image_id"].to_pylist()
    if any(a > b for a, b in zip(ids, ids[1:])):
        table = table.sort_by("image_id")
    write_feature_shard(ds, shard, table)
    return table


LEFT_CATALOG = "left the catalog (removed, or now status 'error') before its shard was embedded"


def _catalog(ws: Workspace, splits: Iterable[str] | None) -> dict[str, str]:
    cat = ws.read_table(IMAGES, columns=["image_id", "uri", "split", "status"]).to_pylist()
    wanted = None if splits is None else set(splits)
    return {r["image_id"]: r["uri"] for r in cat
            if r["status"] != "error" and (wanted is None or r["split"] in wanted)}


def _prepare(ws: Workspace, name: str, spec: str, checkpoint: str | None, backbone_cfg: dict[str, Any],
             pool: int | None, max_side: int | None, pca_dim: int | None, uris: dict[str, str]) -> dict[str, Any]:
    """Build the store's meta (fitting and saving the PCA if asked); refuses to mix with an existing store."""
    base, path = parse_spec(spec)
    checkpoint = checkpoint or path
    checkpoint = os.path.abspath(checkpoint) if checkpoint else None
    ext = _backbone(ws, base, checkpoint, backbone_cfg)
    pool = pool or max(1, CELL_STRIDE // ext.stride)
    rel = f"{features_dir(name)}/pca.npz" if pca_dim else None
    meta = {"model": name, "backbone": base, "checkpoint": checkpoint, "backbone_cfg": backbone_cfg,
            "weights_id": ext.weights_id, "backbone_dim": ext.dim, "backbone_stride": ext.stride, "pool": pool,
            "stride": ext.stride * pool, "dim": pca_dim or ext.dim, "max_side": max_side, "pca": rel}
    ds = ShardedDataset(ws, features_dir(name))
    manifest = ds.manifest()
    if manifest["shards"] and manifest["meta"] and manifest["meta"] != meta:
        raise UserError(f"{ws.path(features_dir(name))}: existing features were made with {manifest['meta']}, "
                         f"not {meta}; pass another name or delete the folder")
    if rel and not (manifest["shards"] and ws.exists(rel)):
        enc = RegionEncoder(ext, pool=pool, max_side=max_side, device="cpu")
        sample = sorted(uris)[:32]
        dec = decode_batch({"image_id": np.array(sample, object), "uri": np.array([uris[i] for i in sample], object)})
        fms = enc.encode_batch([im for im, e in zip(dec["image"], dec["error"]) if not e])
        if not fms:
            raise UserError("cannot fit the PCA: none of the first 32 images is readable")
        cells = np.concatenate([f.fmap.reshape(f.fmap.shape[0], -1).T for f in fms])  # N×C
        cells = cells[np.random.default_rng(0).permutation(len(cells))[:50000]]
        _save_pca(ws, rel, *fit_pca(cells, pca_dim))
    return meta


def embed_pool(ws: Workspace | str, *, model: str = "assay-small", name: str | None = None,
               splits: Sequence[str] | None = ("pool",), resources: Resources | None = None, shard_size: int = 256,
               progress: bool = True, max_side: int | None = None, pca_dim: int | None = None,
               pool: int | None = None, checkpoint: str | None = None, backbone_cfg: dict[str, Any] | None = None,
               local: bool = False, device: str | None = None, threads: int | None = None,
               group_shards: int = 32, decode_cpus: float = 0.5) -> EmbedReport:
    """Embed the catalog's images into ``features/<name>/`` (resumable; finished shards are never recomputed).

    Parameters
    ----------
    model : str
        Backbone spec for :func:`actors.features.backbones.get_backbone` (``"assay-small"``, ``"resnet18:/ckpt.pt"``,
        ``"torchscript:/m.pt"``).
    name : str, optional
        Feature-store name (default :func:`store_name` of ``model``); the matcher passes it to
        :func:`load_region_encoder`.
    splits : sequence of str or None
        Catalog splits to embed; None = every image whose status is not "error".
    resources : Resources, optional
        Actor pool size, per-actor CPUs/GPUs and batch size (default ``Resources.auto()``).
    pool, max_side, pca_dim : see :class:`RegionEncoder`; ``pool`` defaults to 8 // backbone stride (stride-8 cells).
    local : bool
        Run in-process, shard by shard, without Ray (same functions, same output).
    threads : int, optional
        torch threads per actor (default: torch's default divided by the pool size).
    group_shards : int
        Pending shards per Ray pipeline: bounds driver memory (rows wait there until their shard is complete).

    Raises
    ------
    WorkspaceError
        No catalog. ``UserError``: the store exists with other settings, or no weights.
    RuntimeError
        Rows of some shards never came back from the Ray pipeline, even after one redo (nothing is dropped silently:
        those shards are not written, so a re-run redoes them).

    Notes
    -----
    A pending shard (planned, not written) is always redone whole: keys that left the catalog since it was planned
    (removed, or now status "error") become error rows (``n_left_catalog``, counted in ``n_errors``), never a
    silently skipped shard.
    """
    t0 = time.monotonic()
    ws = Workspace(ws) if isinstance(ws, (str, os.PathLike)) else ws
    res = resources or Resources.auto()
    name = name or store_name(model)
    planned = _catalog(ws, splits)  # this run's splits: the new images to plan
    uris = _catalog(ws, None)  # every embeddable image: a pending shard is always redone whole
    meta = _prepare(ws, name, model, checkpoint, dict(backbone_cfg or {}), pool, max_side, pca_dim, planned)
    ds = ShardedDataset(ws, features_dir(name))
    shards = ds.plan(planned, shard_size, meta)
    pending = ds.pending(shards)
    gone = {s.index: [k for k in s.keys if k not in uris] for s in pending}  # keys that left the catalog
    work = [Shard(s.index, [k for k in s.keys if k in uris]) for s in pending if len(gone[s.index]) < len(s.keys)]
    from tqdm.auto import tqdm

    bar = _Progress(tqdm(total=sum(len(s.keys) for s in work), desc=f"embed {name}", unit="img",
                         disable=not progress))
    stats = {"ok": 0, "err": 0, "bytes": 0, "written": 0, "gone": 0}

    def finish(shard: Shard, tables: list[pa.Table]) -> None:
        lost = gone.get(shard.index) or []
        t = _write_shard(ds, shard, [*tables, encode_rows((k, LEFT_CATALOG) for k in lost)])
        ok = t.filter(pc.equal(t["status"], "ok"))
        stats["ok"] += ok.num_rows
        stats["err"] += t.num_rows - ok.num_rows
        stats["gone"] += len(lost)
        stats["bytes"] += pc.sum(pc.binary_length(ok["fmap"])).as_py() or 0
        stats["written"] += 1

    for s in pending:  # every key gone: the shard is only error rows
        if len(gone[s.index]) == len(s.keys):
            finish(s, [])
    th = threads or max(1, torch.get_num_threads() // max(1, res.pool_size))
    if local:
        _run_local(ws, name, work, uris, res, device, finish, bar)
    else:
        left: list[Shard] = []
        for i in range(0, len(work), group_shards):
            left += _run_ray(ws, name, work[i:i + group_shards], uris, res, device, th, decode_cpus, finish, bar)
        if left:  # rows that never came back: redo those shards once, then refuse to finish silently
            left = _run_ray(ws, name, left, uris, res, device, th, decode_cpus, finish, bar)
        if left:
            raise RuntimeError(f"embedding lost rows of {len(left)} shard(s) ({', '.join(s.name for s in left)}) "
                               "twice; they were not written, so a re-run redoes them")
    bar.close()
    secs = time.monotonic() - t0
    n = stats["ok"] + stats["err"]
    startup = bar.first_at - t0 if bar.first_at else math.nan
    rest = bar.done_at - bar.first_at if bar.first_at else 0.0
    return EmbedReport(model=name, backbone=model, mode="local" if local else "ray", n_images=len(planned),
                       n_embedded=stats["ok"], n_errors=stats["err"], shards_total=len(shards),
                       shards_written=stats["written"], shards_skipped=len(shards) - len(pending),
                       dim=meta["dim"], cell_stride=meta["stride"],
                       bytes_per_image=stats["bytes"] / max(1, stats["ok"]), seconds=secs,
                       images_per_s=n / secs if secs > 0 else math.nan, startup_s=startup,
                       steady_images_per_s=(bar.n - bar.first_n) / rest if rest > 0 else math.nan,
                       n_left_catalog=stats["gone"])


class _Progress:
    """tqdm wrapper that also notes when the first rows arrived and when the last did."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.n, self.first_n = bar, 0, 0
        self.first_at: float | None = None
        self.done_at = math.nan

    def update(self, n: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, self.first_n = now, n
        self.n += n
        self.done_at = now
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _run_local(ws, name, pending, uris, res, device, finish, bar) -> None:
    encoder = load_region_encoder(ws, name, device=device, batch_size=res.batch_size)
    for shard in pending:
        tables = []
        for j in range(0, len(shard.keys), res.batch_size):
            keys = shard.keys[j:j + res.batch_size]
            batch = decode_batch({"image_id": np.array(keys, object), "uri": np.array([uris[k] for k in keys], object)})
            tables.append(embed_table(encoder, batch))
            bar.update(len(keys))
        finish(shard, tables)


def _run_ray(ws, name, pending, uris, res, device, threads, decode_cpus, finish, bar) -> list[Shard]:
    """Embed ``pending`` shards through Ray Data, finishing each shard as its last row arrives; returns the shards
    still incomplete when the stream ends (never dropped silently: the caller redoes them or raises)."""
    import ray

    init_ray()
    items = [{"image_id": k, "uri": uris[k], "shard": s.index} for s in pending for k in s.keys]
    want = {s.index: len(s.keys) for s in pending}
    by_index = {s.index: s for s in pending}
    got: dict[int, list[pa.Table]] = defaultdict(list)
    count: dict[int, int] = defaultdict(int)
    data = (ray.data.from_items(items, override_num_blocks=max(1, len(items) // max(1, res.batch_size)))
            .map_batches(decode_batch, batch_size=res.batch_size, num_cpus=decode_cpus)
            # fault tolerance is Ray Data's default (Ray 2.60: tasks max_retries=-1, pool actors max_restarts=-1 and
            # max_task_retries=-1; passing them is deprecated): a dead actor (node lost, OOM kill) is restarted and
            # its batch re-run, and rows reach a shard once (tests/e2e/test_multinode.py kills one mid-step)
            .map_batches(EmbedActor, compute=ray.data.ActorPoolStrategy(size=res.pool_size),
                         batch_size=res.batch_size, num_gpus=res.num_gpus, num_cpus=res.num_cpus,
                         fn_constructor_kwargs={"workspace": ws.uri, "model": name, "device": device,  # absolute
                                                "threads": threads, "batch_size": res.batch_size}))
    for batch in data.iter_batches(batch_size=None, batch_format="pyarrow"):
        for idx in np.unique(batch["shard"].to_numpy()):
            part = batch.filter(pc.equal(batch["shard"], int(idx)))
            got[int(idx)].append(part)
            count[int(idx)] += part.num_rows
            bar.update(part.num_rows)
            if count[int(idx)] == want[int(idx)]:
                finish(by_index[int(idx)], got.pop(int(idx)))
    return [by_index[i] for i in sorted(want) if count[i] != want[i]]  # shards whose rows did not all come back
