"""Region-grid features for every pool image, on Ray: the embedding pipeline.

Images go through :class:`~actors.features.encoder.RegionEncoder` (the one encoder pool and query images share).
:func:`embed_pool` plans shards over catalog image ids (:class:`~actors.core.shards.ShardedDataset`, resumable) and
runs **one** Ray Data pipeline per run over the pending shards: ``from_items`` (one item per shard: its keys and
URIs) -> :class:`EmbedActor` pool. An actor decodes its shard's images (a thread prefetches the next batch),
embeds them, encodes the cells with the store's codec (:mod:`actors.features.codecs`) and writes the shard itself,
atomically, through the workspace URI (:func:`embed_shard`; local path or object storage). Only a one-row summary
per shard comes back; the driver commits it into the manifest (:meth:`ShardedDataset.commit`). No feature byte
passes through the driver and nothing depends on the driver's disk. Unreadable images become ``status="error"``
rows.

Fault tolerance: a shard file exists only complete (temp + rename), and it is a pure function of its keys, so an
actor killed mid-shard is restarted by Ray Data and its shard redone (at most an orphaned temp file, removed at the
end of the run); a shard written but not yet committed when the driver died is adopted on the next run from its row
summary, not recomputed. An image is in the store exactly once.

Storage per 512×384 image, 64 channels: fp16 8-px cells 384 KiB, int8 192 KiB; the default (16-px cells, PQ at 2
channels per byte) 24 KiB (``bench/feature_store.py`` measures what each option keeps).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from actors.catalog.schema import IMAGES
from actors.core.errors import UserError
from actors.core.images import decode_batch
from actors.core.runtime import Resources, choose_path, cpu_count, init_ray
from actors.core.runtime import device as auto_device
from actors.core.shards import Shard, ShardedDataset
from actors.core.workspace import Workspace, WorkspaceError
from actors.features.backbones import parse_spec
from actors.features.codecs import CODECS, Codec, default_pq_m, save_codebook, train_pq
from actors.features.encoder import (CELL_STRIDE, RegionEncoder, _backbone, _save_pca, fit_pca, load_region_encoder,
                                     store_name)
from actors.features.store import (FEATURE_SCHEMA, encode_rows, feature_rows, features_dir, store_codec,
                                   write_feature_shard)

# new stores: 16-px cells, product-quantized at 2 channels per byte (bench/feature_store.py: the smallest option within
# 48 KiB per 512x384 image that kept >= 95% of the fp16 8-px store's recall@100 on objects < 1%); an existing store
# keeps the settings it was made with
DEFAULT_CODEC = "pq"
DEFAULT_CELL_PX = 16
# the backbone of a new store when none is named: the ImageNet EfficientNet-Lite0 trunk, frozen, cut at stride 16
# (block 11, 112 channels; weights in a base dependency, nothing to train). bench/targeted_selection_backbones.py chose
# it on its tuning world (best template recall@100 on objects < 1% among assay-small, frozen Lite0 at stride 8 and 16,
# and Lite0 fine-tuned at stride 8 with the ROI prototype loss) and reports it on another world seed. With the default
# store (16-px cells, PQ at 2 channels per byte) that is 56 bytes per cell, 42 KiB per 512x384 image. Its store name
# is ``store_name(DEFAULT_BACKBONE)`` = ``actors.selection.mine.DEFAULT_MODEL``.
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_BACKBONE_CFG = {"stride": 16}  # its options when ``backbone_cfg`` is not given
LEFT_CATALOG = "left the catalog (removed, or now status 'error') before its shard was embedded"


def embed_table(encoder: RegionEncoder, batch: dict[str, np.ndarray], codec: Codec | None = None) -> pa.Table:
    """Decoded batch (``image_id``, ``image``, ``error``) -> feature rows in ``codec`` (default fp16)."""
    ids = [str(i) for i in batch["image_id"]]
    ok = [i for i, e in enumerate(batch["error"]) if not e]
    fms = iter(encoder.encode_batch([np.asarray(batch["image"][i], np.uint8) for i in ok], [ids[i] for i in ok],
                                    half=codec is None or codec.name == "fp16"))
    oks = set(ok)
    return encode_rows((next(fms) if i in oks else (ids[i], batch["error"][i]) for i in range(len(ids))), codec)


def embed_shard(ws: Workspace, name: str, encoder: RegionEncoder, codec: Codec, shard: Shard,
                uris: Sequence[str | None], batch_size: int, workers: int = 1) -> dict[str, int]:
    """Decode, embed and encode one shard's images and write the shard (atomically) through ``ws``.

    ``uris[i]`` is the image of ``shard.keys[i]``; None = the key left the catalog (an error row). With one worker
    the next batch is decoded on a thread while this one is embedded; with ``workers`` > 1, that many threads each
    decode and embed whole batches (give the encoder ``onnx_threads=1``: one core each). Returns the shard's
    summary: ``shard``, ``ok``, ``err``, ``gone`` (rows for keys that left the catalog), ``bytes`` (feature bytes
    of the ok rows).
    """
    live = [(k, u) for k, u in zip(shard.keys, uris) if u is not None]
    lost = [k for k, u in zip(shard.keys, uris) if u is None]
    chunks = [live[i:i + batch_size] for i in range(0, len(live), batch_size)]

    def decode(chunk: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        return decode_batch({"image_id": np.array([k for k, _ in chunk], object),
                             "uri": np.array([u for _, u in chunk], object)})

    tables = [encode_rows(((k, LEFT_CATALOG) for k in lost), codec)]
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            tables += pool.map(lambda chunk: embed_table(encoder, decode(chunk), codec), chunks)
    else:
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(decode, chunks[0]) if chunks else None
            for j in range(len(chunks)):
                batch = ahead.result()
                ahead = pool.submit(decode, chunks[j + 1]) if j + 1 < len(chunks) else None
                tables.append(embed_table(encoder, batch, codec))
    t = _write_shard(ShardedDataset(ws, features_dir(name)), shard, tables)
    ok = t.filter(pc.equal(t["status"], "ok"))
    return {"shard": shard.index, "ok": ok.num_rows, "err": t.num_rows - ok.num_rows, "gone": len(lost),
            "bytes": int(pc.sum(pc.binary_length(ok["fmap"])).as_py() or 0)}


class EmbedActor:
    """Ray Data callable class: loads the store's encoder and codec once, then embeds and writes whole shards.

    A batch holds shards (``shard`` index, ``keys``, ``uris``; a None URI = the key left the catalog); the output
    is one summary row per shard (:func:`embed_shard`): the feature bytes go to the workspace, never back.
    """

    def __init__(self, workspace: str, model: str, device: str | None = None, threads: int | None = None,
                 batch_size: int = 16) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.ws, self.model, self.batch_size = Workspace(workspace), model, batch_size
        self.encoder = load_region_encoder(self.ws, model, device=device, batch_size=batch_size)
        self.codec = store_codec(self.ws, model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [embed_shard(self.ws, self.model, self.encoder, self.codec, Shard(int(i), [str(k) for k in keys]),
                            [None if u is None else str(u) for u in uris], self.batch_size)
                for i, keys, uris in zip(batch["shard"], batch["keys"], batch["uris"])]
        return {k: np.array([r[k] for r in rows], np.int64) for k in ("shard", "ok", "err", "gone", "bytes")}


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
    startup_s: float = math.nan  # from the call until the first shard was committed (workers, model load)
    steady_images_per_s: float = math.nan  # images/s after that (what a long run converges to)
    n_left_catalog: int = 0  # keys of pending shards no longer in the catalog: written as error rows (in n_errors)
    codec: str = "fp16"
    shards_adopted: int = 0  # written by an earlier run's actors but not committed then: committed now, not redone
    path: str = ""  # which path ran (in-process or Ray) and why, one line (:func:`actors.core.runtime.choose_path`)


def _write_shard(ds: ShardedDataset, shard: Shard, tables: list[pa.Table]) -> pa.Table:
    """Write one shard's rows sorted by image_id (what :class:`~actors.features.store.FeatureReader` relies on).

    Batches hold runs of consecutive ids, so ordering the batches by their first id usually sorts the rows
    without copying the feature bytes; a full sort is the fallback."""
    tables = sorted((t.select(FEATURE_SCHEMA.names) for t in tables if t.num_rows),
                    key=lambda t: t["image_id"][0].as_py())
    table = pa.concat_tables(tables).cast(FEATURE_SCHEMA) if tables else FEATURE_SCHEMA.empty_table()
    ids = table["image_id"].to_pylist()
    if any(a > b for a, b in zip(ids, ids[1:])):
        table = table.sort_by("image_id")
    write_feature_shard(ds, shard, table)
    return table


def _catalog(ws: Workspace, splits: Iterable[str] | None) -> dict[str, str]:
    if not ws.exists(IMAGES):
        raise WorkspaceError(f"{ws.path(IMAGES)}: no catalog yet; add images first: assay ingest FOLDER -w {ws.uri}")
    cat = ws.read_table(IMAGES, columns=["image_id", "uri", "split", "status"]).to_pylist()
    wanted = None if splits is None else set(splits)
    return {r["image_id"]: r["uri"] for r in cat
            if r["status"] != "error" and (wanted is None or r["split"] in wanted)}


def _nothing_to_embed(ws: Workspace, splits: Sequence[str] | None) -> str:
    """The one-line message for a catalog with no embeddable image in ``splits``: what it holds and what to run."""
    t = ws.read_table(IMAGES, columns=["split", "status"])
    ok = t.filter(pc.not_equal(t["status"], "error"))
    if ok.num_rows == 0:
        return (f"{ws.path(IMAGES)}: no readable image to embed ({t.num_rows} rows, all status 'error': see "
                f"`assay catalog -w {ws.uri}`); ingest readable images with `assay ingest FOLDER -w {ws.uri}`")
    counts = pc.value_counts(pc.fill_null(ok["split"], "")).to_pylist()
    held = ", ".join(f"{d['counts']} in split {d['values']!r}" for d in counts)
    return (f"{ws.path(IMAGES)}: no readable image in split(s) {', '.join(map(repr, splits or ()))} to embed "
            f"(the catalog has {held}); run `assay embed -w {ws.uri} --split SPLIT` (or --split all)")


def _sample_cells(enc: RegionEncoder, uris: dict[str, str], what: str) -> np.ndarray:
    """N×D cells (at most 50,000, seeded) of the first 32 readable images, for fitting the PCA or the codebook."""
    sample = sorted(uris)[:32]
    dec = decode_batch({"image_id": np.array(sample, object), "uri": np.array([uris[i] for i in sample], object)})
    fms = enc.encode_batch([im for im, e in zip(dec["image"], dec["error"]) if not e])
    if not fms:
        first = f" (first: {uris[sample[0]]}: {dec['error'][0]})" if sample else ""
        raise UserError(f"cannot fit the {what}: none of the first {len(sample)} images decodes{first}")
    cells = np.concatenate([f.fmap.reshape(f.fmap.shape[0], -1).T for f in fms])  # N×C
    return cells[np.random.default_rng(0).permutation(len(cells))[:50000]]


def _prepare(ws: Workspace, name: str, spec: str, checkpoint: str | None, backbone_cfg: dict[str, Any],
             pool: int | None, max_side: int | None, pca_dim: int | None, uris: dict[str, str],
             codec: str | None = None, pq_m: int | None = None) -> tuple[dict[str, Any], RegionEncoder | None]:
    """Build the store's meta (fitting and saving the PCA and PQ codebook if asked); refuses to mix with an
    existing store. Settings left None take the existing store's (so a store made before codecs stays fp16).
    Returns the meta and the store's CPU encoder when one was built to fit the codebook (else None)."""
    base, path = parse_spec(spec)
    checkpoint = checkpoint or path
    checkpoint = os.path.abspath(checkpoint) if checkpoint else None
    ds = ShardedDataset(ws, features_dir(name))
    manifest = ds.manifest()
    old = manifest["meta"] if manifest["shards"] else {}
    codec = codec or (old.get("codec", "fp16") if old else DEFAULT_CODEC)
    if codec not in CODECS:
        raise UserError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
    ext = _backbone(ws, base, checkpoint, backbone_cfg)
    pool = pool or old.get("pool") or max(1, (CELL_STRIDE if old else DEFAULT_CELL_PX) // ext.stride)
    rel = f"{features_dir(name)}/pca.npz" if pca_dim else None
    meta = {"model": name, "backbone": base, "checkpoint": checkpoint, "backbone_cfg": backbone_cfg,
            "weights_id": ext.weights_id, "backbone_dim": ext.dim, "backbone_stride": ext.stride, "pool": pool,
            "stride": ext.stride * pool, "dim": pca_dim or ext.dim, "max_side": max_side, "pca": rel}
    if codec != "fp16":  # fp16 stores keep the meta they had before codecs existed
        meta["codec"] = codec
    if codec == "pq":
        pq_m = pq_m or old.get("pq_m") or default_pq_m(pca_dim or ext.dim)
        meta.update(pq=f"{features_dir(name)}/pq.npz", pq_m=pq_m)
    if old and old != meta:
        raise UserError(f"{ws.path(features_dir(name))}: existing features were made with {old}, "
                         f"not {meta}; pass another name or delete the folder")
    enc = None
    if rel and not (old and ws.exists(rel)):
        enc = RegionEncoder(ext, pool=pool, max_side=max_side, device="cpu")
        _save_pca(ws, rel, *fit_pca(_sample_cells(enc, uris, "PCA"), pca_dim))
    if codec == "pq" and not (old and ws.exists(meta["pq"])):
        from actors.features.encoder import _load_pca

        enc = RegionEncoder(ext, pool=pool, max_side=max_side, device="cpu",
                            pca=_load_pca(ws, rel) if rel else None)
        ws.write_bytes(meta["pq"], save_codebook(train_pq(_sample_cells(enc, uris, "PQ codebook"), pq_m)))
    else:
        enc = None  # the PCA-only encoder is not the store's
    return meta, enc


def embed_pool(ws: Workspace | str, *, model: str = DEFAULT_BACKBONE, name: str | None = None,
               splits: Sequence[str] | None = ("pool",), resources: Resources | None = None, shard_size: int = 256,
               progress: bool = True, max_side: int | None = None, pca_dim: int | None = None,
               pool: int | None = None, checkpoint: str | None = None, backbone_cfg: dict[str, Any] | None = None,
               local: bool | None = None, device: str | None = None, threads: int | None = None,
               codec: str | None = None, pq_m: int | None = None) -> EmbedReport:
    """Embed the catalog's images into ``features/<name>/`` (resumable; finished shards are never recomputed).

    Parameters
    ----------
    model : str
        Backbone spec for :func:`actors.features.backbones.get_backbone`: default :data:`DEFAULT_BACKBONE`
        (``"efficientnet-lite0"``, frozen, with :data:`DEFAULT_BACKBONE_CFG`), or ``"assay-small"``,
        ``"efficientnet-lite0-ft"``, ``"resnet18:/ckpt.pt"``, ``"torchscript:/m.pt"``. ``backbone_cfg``: the
        builder's options (``stride``, ``layer``…); default :data:`DEFAULT_BACKBONE_CFG` for the default backbone,
        none for the others.
    name : str, optional
        Feature-store name (default :func:`store_name` of ``model``); the matcher passes it to
        :func:`load_region_encoder`.
    splits : sequence of str or None
        Catalog splits to embed; None = every image whose status is not "error".
    resources : Resources, optional
        Actor pool size, per-actor CPUs/GPUs and batch size (default ``Resources.auto()``).
    pool, max_side, pca_dim : see :class:`RegionEncoder`; ``pool`` defaults to :data:`DEFAULT_CELL_PX` // backbone
        stride for a new store (16-px cells), the existing store's otherwise.
    codec : {"fp16", "int8", "pq"}, optional
        How cells are stored (:mod:`actors.features.codecs`); default :data:`DEFAULT_CODEC` for a new store, the
        existing store's codec otherwise. ``pq_m``: PQ bytes per cell (default :func:`default_pq_m`: dim / 2).
    local : bool, optional
        True: run in-process, shard by shard, without Ray (same functions, same output); False: on Ray. None (the
        default): :func:`~actors.core.runtime.choose_path` on the images to embed (Ray when one is running to
        join, in-process below :data:`~actors.core.runtime.IN_PROCESS_BELOW` images, else a new local Ray);
        the report's ``mode`` and ``path`` say which ran and why.
    threads : int, optional
        torch threads per actor (default: torch's default divided by the pool size).

    Raises
    ------
    WorkspaceError
        No catalog. ``UserError``: no readable image in ``splits`` (the message says what the catalog holds and
        what to run), the store exists with other settings, or no weights.
    RuntimeError
        Some shards never reported back from the Ray pipeline, even after one redo (nothing is dropped silently:
        those shards are not committed, so a re-run redoes or adopts them).

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
    if not planned:
        raise UserError(_nothing_to_embed(ws, splits))
    uris = _catalog(ws, None)  # every embeddable image: a pending shard is always redone whole
    if backbone_cfg is None and model == DEFAULT_BACKBONE:
        backbone_cfg = DEFAULT_BACKBONE_CFG
    meta, fitted = _prepare(ws, name, model, checkpoint, dict(backbone_cfg or {}), pool, max_side, pca_dim, planned,
                    codec, pq_m)
    ds = ShardedDataset(ws, features_dir(name))
    shards = ds.plan(planned, shard_size, meta)
    pending = ds.pending(shards)
    adopted = _adopt(ws, name, ds, shards, pending)
    work = {s.index: [uris.get(k) for k in s.keys] for s in pending}
    from tqdm.auto import tqdm

    bar = _Progress(tqdm(total=sum(len(s.keys) for s in pending), desc=f"embed {name}", unit="img",
                         disable=not progress))
    stats = {"ok": 0, "err": 0, "bytes": 0, "written": 0, "gone": 0}

    def commit(summary: dict[str, int]) -> None:
        ds.commit({summary["shard"]: {k: int(summary[k]) for k in ("ok", "err", "bytes")}})
        for k in ("ok", "err", "gone", "bytes"):
            stats[k] += int(summary[k])
        stats["written"] += 1
        bar.update(int(summary["ok"] + summary["err"]))

    if 0 < len(pending) < res.pool_size:  # one shard is one block of work: an actor beyond that would only start up
        res = replace(res, pool_size=len(pending))
    th = threads or max(1, torch.get_num_threads() // max(1, res.pool_size))
    local, path = choose_path(sum(len(s.keys) for s in pending), local)
    if local:
        _run_local(ws, name, pending, work, res, device, commit, fitted)
    else:
        left = _run_ray(ws, name, pending, work, res, device, th, commit)
        if left:  # shards that never reported: redo them once, then refuse to finish silently
            left = _run_ray(ws, name, left, work, res, device, th, commit)
        if left:
            raise RuntimeError(f"embedding lost {len(left)} shard(s) ({', '.join(s.name for s in left)}) "
                               "twice; they were not committed, so a re-run redoes them")
    ds.remove_orphans()
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
                       n_left_catalog=stats["gone"], codec=meta.get("codec", "fp16"), shards_adopted=adopted,
                       path=path)


def _adopt(ws: Workspace, name: str, ds: ShardedDataset, shards: list[Shard], pending: list[Shard]) -> int:
    """Commit shards whose file exists but the manifest does not record (written by actors of a run whose driver
    stopped before committing them; or a store made before commits were recorded), from their row summaries."""
    done = ds.committed()
    todo = {s.index for s in shards} - {s.index for s in pending} - set(done)
    if not todo:
        return 0
    rows = feature_rows(ws, name, columns=["image_id", "status"])
    status = dict(zip(rows["image_id"].to_pylist(), rows["status"].to_pylist()))
    info = {}
    for s in shards:
        if s.index in todo:
            ok = sum(status.get(k) == "ok" for k in s.keys)
            info[s.index] = {"ok": ok, "err": len(s.keys) - ok, "bytes": -1}  # -1: not measured at commit time
    ds.commit(info)
    return len(info)


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


def _run_local(ws, name, pending, work, res, device, commit, fitted: RegionEncoder | None = None) -> None:
    """In-process: shard by shard. Under ONNX Runtime one thread per core each embeds whole batches on one core
    (single-threaded sessions in parallel use the cores better than one session's intra-op threads, and decoding
    runs beside them, as in the Ray actor pool); under PyTorch one thread, the next batch decoded ahead."""
    if not pending:
        return
    if fitted is not None and (device or auto_device()) == "cpu":  # the codebook's encoder: no second export
        encoder, fitted.batch_size = fitted, res.batch_size
    else:
        encoder = load_region_encoder(ws, name, device=device, batch_size=res.batch_size)
    workers = cpu_count() if encoder.runtime == "onnxruntime" else 1
    if workers > 1:
        encoder.onnx_threads = 1
    codec = store_codec(ws, name)
    for shard in pending:
        commit(embed_shard(ws, name, encoder, codec, shard, work[shard.index], res.batch_size, workers))


def _run_ray(ws, name, pending, work, res, device, threads, commit) -> list[Shard]:
    """Embed ``pending`` shards in one Ray Data pipeline (actors write the shards); the driver commits each
    summary as it arrives. Returns the shards that never reported (the caller redoes them or raises)."""
    if not pending:
        return []
    import ray

    init_ray()
    items = [{"shard": s.index, "keys": list(s.keys), "uris": work[s.index]} for s in pending]
    seen: set[int] = set()
    data = (ray.data.from_items(items, override_num_blocks=len(items))
            # fault tolerance is Ray Data's default (Ray 2.60: pool actors max_restarts=-1 and
            # max_task_retries=-1): a dead actor (node lost, OOM kill) is restarted and its shard redone; the
            # shard file is written atomically and is the same whichever attempt writes it
            .map_batches(EmbedActor, compute=ray.data.ActorPoolStrategy(size=res.pool_size), batch_size=1,
                         num_gpus=res.num_gpus, num_cpus=res.num_cpus,
                         fn_constructor_kwargs={"workspace": ws.uri, "model": name, "device": device,  # absolute
                                                "threads": threads, "batch_size": res.batch_size}))
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        for row in zip(*(batch[k] for k in ("shard", "ok", "err", "gone", "bytes"))):
            summary = dict(zip(("shard", "ok", "err", "gone", "bytes"), map(int, row)))
            if summary["shard"] not in seen:  # a retried shard reports once
                seen.add(summary["shard"])
                commit(summary)
    return [s for s in pending if s.index not in seen]
