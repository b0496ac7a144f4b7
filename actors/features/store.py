"""The feature store: per-image region grids, as sharded Parquet in ``features/<model>/``.

One row per image (schema :data:`FEATURE_SCHEMA`):

=========  ========  =================================================================================
image_id   string    catalog id
grid_h     int32     rows of the region grid (0 when status != "ok")
grid_w     int32     columns of the region grid
dim        int32     channels per cell
stride_y   float32   image pixels per grid row   (cell (i, j) covers y in [i*stride_y, (i+1)*stride_y))
stride_x   float32   image pixels per grid column
fmap       binary    the grid C×H×W in the store's codec (:mod:`actors.features.codecs`: fp16, int8 or pq;
                     empty when status != "ok")
status     string    "ok" or "error"
error      string    why the image failed (unreadable, corrupt…), "" when ok
=========  ========  =================================================================================

The dataset's ``_manifest.json`` ``meta`` holds at least ``model`` and ``dim`` (and, when PCA-reduced, the
path of the projection in the workspace; ``codec`` and, for PQ, the codebook's path, when not fp16). Writers use :class:`actors.core.shards.ShardedDataset` so work is resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.core.errors import UserError
from actors.features.codecs import Codec, load_codebook, make_codec
from actors.core.shards import Shard, ShardedDataset
from actors.core.workspace import Workspace, WorkspaceError

FEATURE_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("grid_h", pa.int32()),
    ("grid_w", pa.int32()),
    ("dim", pa.int32()),
    ("stride_y", pa.float32()),
    ("stride_x", pa.float32()),
    ("fmap", pa.binary()),
    ("status", pa.string()),
    ("error", pa.string()),
])


def features_dir(model: str) -> str:
    """Workspace-relative folder of a model's feature shards."""
    if not model or "/" in model or model.startswith("."):
        raise UserError(f"model name must be a plain name, got {model!r}")
    return f"features/{model}"


@dataclass
class FeatureMap:
    """One image's region grid: ``fmap`` is float16 C×H×W; strides are image pixels per cell."""

    image_id: str
    fmap: np.ndarray
    stride_y: float
    stride_x: float


@dataclass
class EncodedMap:
    """One image's region grid as stored (its ``fmap`` bytes in the store's codec, not decoded): what the fine stage
    reads and caches, decoding batches of equal shape straight into its working buffer
    (:meth:`actors.features.codecs.Codec.decode_into`). ``shape`` is (C, H, W)."""

    image_id: str
    data: Any
    shape: tuple[int, int, int]
    stride_y: float
    stride_x: float


def encode_rows(items: Iterable[FeatureMap | tuple[str, str]], codec: Codec | None = None) -> pa.Table:
    """Build a shard table from feature maps and ``(image_id, error)`` pairs for failed images.

    ``codec`` (default fp16) turns each map into its ``fmap`` bytes; the column is assembled with one copy (no
    per-row Python ``bytes``).
    """
    codec = codec or Codec()
    cols: dict[str, list] = {f.name: [] for f in FEATURE_SCHEMA if f.name != "fmap"}
    blobs: list[np.ndarray] = []
    for it in items:
        if isinstance(it, FeatureMap):
            c, h, w = it.fmap.shape  # C×H×W
            row = (it.image_id, h, w, c, it.stride_y, it.stride_x, "ok", "")
            blobs.append(codec.encode(it.fmap))
        else:
            image_id, err = it
            row = (image_id, 0, 0, 0, 0.0, 0.0, "error", str(err))
            blobs.append(np.zeros(0, np.uint8))
        for name, v in zip(cols, row):
            cols[name].append(v)
    arrays = {name: pa.array(v, FEATURE_SCHEMA.field(name).type) for name, v in cols.items()}
    arrays["fmap"] = _binary_column(blobs)
    return pa.table([arrays[n] for n in FEATURE_SCHEMA.names], schema=FEATURE_SCHEMA)


def _binary_column(blobs: list[np.ndarray], chunk_bytes: int = 1 << 30) -> pa.ChunkedArray:
    """uint8 arrays -> a binary column (chunks of at most ``chunk_bytes``: binary offsets are int32)."""
    chunks, start = [], 0
    while start < len(blobs) or not chunks:
        sizes = np.array([b.nbytes for b in blobs[start:]], np.int64)
        n = max(1, int(np.searchsorted(np.cumsum(sizes), chunk_bytes, side="right"))) if len(sizes) else 0
        part = blobs[start:start + n]
        offsets = np.zeros(len(part) + 1, np.int32)
        np.cumsum([b.nbytes for b in part], out=offsets[1:])
        data = np.concatenate(part) if part else np.zeros(0, np.uint8)
        chunks.append(pa.Array.from_buffers(pa.binary(), len(part), [None, pa.py_buffer(offsets),
                                                                     pa.py_buffer(data)]))
        start += n
    return pa.chunked_array(chunks, pa.binary())


def decode_row(row: dict, codec: Codec | None = None) -> FeatureMap:
    """Inverse of :func:`encode_rows` for one ``status == "ok"`` row (a dict; ``fmap`` bytes or any buffer)."""
    shape = (row["dim"], row["grid_h"], row["grid_w"])
    try:
        fmap = (codec or Codec()).decode(row["fmap"], shape)
    except ValueError as e:
        raise WorkspaceError(f"feature row {row['image_id']}: {e}") from e
    return FeatureMap(row["image_id"], fmap, float(row["stride_y"]), float(row["stride_x"]))


def store_codec(ws: Workspace, model: str, meta: dict | None = None) -> Codec:
    """The codec a store's rows are written in (its manifest ``meta``; fp16 when it names none)."""
    meta = feature_meta(ws, model) if meta is None else meta
    name = meta.get("codec") or "fp16"
    return make_codec(name, load_codebook(ws.read_bytes(meta["pq"])) if name == "pq" else None)


ROW_GROUP_ROWS = 1  # rows per Parquet row group in feature shards: one image is one independently readable unit
_READ_COLUMNS = ["image_id", "grid_h", "grid_w", "dim", "stride_y", "stride_x", "fmap", "status"]
_META_COLUMNS = [c for c in _READ_COLUMNS if c != "fmap"]


class FeatureReader:
    """Random access to a feature store: ``image_id`` -> its :class:`FeatureMap`, reading only that image's row.

    The shard manifest lists each shard's keys and a shard file holds exactly one row per key, sorted by id, so
    an id's (file, row) is known without opening any file. A row's id, grid shape, strides and status come from
    the shard's row summary (``_rows/<part>``, kilobytes, read once per shard; the shard's own columns for shards
    written before summaries), so only the ``fmap`` column of the row's Parquet row group is read (Assay writes
    :data:`ROW_GROUP_ROWS` row per group; any layout works, larger groups just read more): one column chunk per
    image instead of eight, about 3× faster for 1,000 scattered rows. Reads run on ``threads`` threads (pyarrow
    releases the GIL while decompressing).
    """

    def __init__(self, ws: Workspace, model: str, *, threads: int = 4) -> None:
        self.ws, self.model, self.threads = ws, model, threads
        self.ds = ShardedDataset(ws, features_dir(model))
        manifest = self.ds.manifest()
        self.codec = store_codec(ws, model, manifest["meta"]) if manifest["shards"] else Codec()
        self._where: dict[str, tuple[str, int]] = {}
        self._groups: dict[str, np.ndarray] = {}  # shard name -> first row of each row group
        self._footers: dict[str, pq.FileMetaData] = {}  # shard name -> its parsed Parquet footer
        self._meta: dict[str, dict[str, list]] = {}  # shard name -> its rows' columns but fmap
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest (after an incremental embed)."""
        done = set(self.ws.listdir(self.ds.rel, ".parquet"))
        self._where = {k: (s.name, row) for s in self.ds.shards() if s.name in done
                       for row, k in enumerate(sorted(s.keys))}
        self._meta = {}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _shard_meta(self, name: str) -> dict[str, list]:
        """The rows of one shard without ``fmap``, as lists by column (from its summary when there is one)."""
        meta = self._meta.get(name)
        if meta is None:
            summary = f"{self.ds.rel}/{ROWS_DIR}/{name}"
            rel = summary if self.ws.exists(summary) else f"{self.ds.rel}/{name}"
            meta = self.ws.read_table(rel, columns=_META_COLUMNS).to_pydict()
            self._meta[name] = meta
        return meta

    def _read_file(self, name: str, rows: list[int]) -> list[dict]:
        """The given rows (positions in the shard) of one shard file, reading only their row groups' ``fmap``; each
        row is a dict like :func:`decode_row` takes, ``fmap`` as a zero-copy Arrow buffer (no Python ``bytes``)."""
        meta = self._shard_meta(name)
        with self.ws.fs.open_input_file(self.ws.path(f"{self.ds.rel}/{name}")) as f:
            pf = pq.ParquetFile(f, metadata=self._footers.get(name))
            self._footers[name] = pf.metadata
            starts = self._groups.get(name)
            if starts is None:  # first row of each row group, and the total at the end
                md = pf.metadata
                starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
                self._groups[name] = starts
            if int(starts[-1]) != len(meta["image_id"]):
                raise WorkspaceError(f"{self.ws.path(self.ds.rel)}/{name}: {int(starts[-1])} rows, its row summary "
                                     f"{len(meta['image_id'])}; the store was modified, re-embed it")
            group_of = {r: int(np.searchsorted(starts, r, side="right") - 1) for r in rows}
            groups = sorted(set(group_of.values()))
            fmaps = pf.read_row_groups(groups, columns=["fmap"], use_threads=False).column("fmap")
        at, offset = {}, 0  # where each read group starts in ``fmaps``
        for g in groups:
            at[g], offset = offset, offset + int(starts[g + 1] - starts[g])
        out = []
        for r in rows:
            row = {c: meta[c][r] for c in _META_COLUMNS}
            row["fmap"] = fmaps[at[group_of[r]] + r - int(starts[group_of[r]])].as_buffer()
            out.append(row)
        return out

    def get(self, image_ids: Iterable[str], *, decode: bool = True) -> list[FeatureMap] | list[EncodedMap]:
        """Feature maps of ``image_ids`` in that order; ids not in the store or whose image failed are skipped.
        ``decode=False``: :class:`EncodedMap` rows as stored (decode them with :attr:`codec`).

        Raises ``WorkspaceError`` when a shard's rows do not match its manifest (a store edited by hand).
        """
        ids = [i for i in image_ids if i in self._where]
        per_file: dict[str, list[tuple[int, str]]] = {}
        for i in dict.fromkeys(ids):  # each row read once, even when asked for twice
            name, row = self._where[i]
            per_file.setdefault(name, []).append((row, i))
        found: dict[str, FeatureMap | EncodedMap] = {}

        def load(item: tuple[str, list[tuple[int, str]]]) -> list:
            name, wanted = item
            out = []
            for (r, image_id), row in zip(wanted, self._read_file(name, [r for r, _ in wanted])):
                if row["image_id"] != image_id:
                    raise WorkspaceError(f"{self.ws.path(self.ds.rel)}/{name}: row {r} holds {row['image_id']!r}, "
                                         f"the manifest says {image_id!r}; the store was modified, re-embed it")
                if row["status"] == "ok":
                    out.append(decode_row(row, self.codec) if decode else EncodedMap(
                        image_id, row["fmap"], (row["dim"], row["grid_h"], row["grid_w"]), float(row["stride_y"]),
                        float(row["stride_x"])))
            return out

        items = list(per_file.items())
        if self.threads > 1 and len(items) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, len(items))) as pool:
                parts = list(pool.map(load, items))
        else:
            parts = [load(it) for it in items]
        for part in parts:
            for fm in part:
                found[fm.image_id] = fm
        return [found[i] for i in ids if i in found]


def iter_feature_maps(ws: Workspace, model: str, image_ids: Iterable[str] | None = None,
                      batch_size: int = 256) -> Iterator[FeatureMap]:
    """Stream the ok feature maps of ``model`` (optionally only ``image_ids``) in bounded memory.

    A few ids (under a tenth of the store) are read row by row (:class:`FeatureReader`); otherwise the store is
    scanned in shard order.
    """
    ds = ShardedDataset(ws, features_dir(model))
    if image_ids is not None:
        wanted_ids = sorted(set(image_ids))
        n_store = sum(len(s.keys) for s in ds.shards())
        if len(wanted_ids) * 10 < n_store:
            reader = FeatureReader(ws, model)
            for i in range(0, len(wanted_ids), batch_size):
                yield from reader.get(wanted_ids[i:i + batch_size])
            return
    wanted = None if image_ids is None else pa.array(wanted_ids, pa.string())
    manifest = ds.manifest()
    codec = store_codec(ws, model, manifest["meta"]) if manifest["shards"] else Codec()
    for batch in ds.iter_batches(batch_size=batch_size):
        mask = pc.equal(batch.column("status"), "ok")
        if wanted is not None:
            mask = pc.and_(mask, pc.is_in(batch.column("image_id"), value_set=wanted))
        for row in batch.filter(mask).to_pylist():
            yield decode_row(row, codec)


ROWS_DIR = "_rows"  # per shard, its rows without ``fmap``: metadata scans read kilobytes, not the feature bytes


def write_feature_shard(ds: ShardedDataset, shard: Shard, table: pa.Table) -> None:
    """Write one feature shard: first its row summary (``_rows/<part>``), then the shard itself, each atomically.

    The shard file is the commit point (it exists ⇔ the shard is done), so a crash between the two writes only
    leaves a summary that the re-run overwrites. One image per row group (:data:`ROW_GROUP_ROWS`).
    """
    ds.ws.write_table(f"{ds.rel}/{ROWS_DIR}/{shard.name}", table.drop_columns(["fmap"]))
    ds.write_shard(shard, table, row_group_size=ROW_GROUP_ROWS, use_dictionary=["image_id", "status", "error"],
                   write_statistics=["image_id"])


def feature_rows(ws: Workspace, model: str, columns: list[str] | None = None) -> pa.Table:
    """Every finished row of the store without the feature bytes (``columns`` among :data:`FEATURE_SCHEMA` but
    ``fmap``): from the row summaries, or from the shard itself for shards written before they existed."""
    ds = ShardedDataset(ws, features_dir(model))
    names = [f.name for f in FEATURE_SCHEMA if f.name != "fmap"]
    columns = columns or names
    if "fmap" in columns:
        raise ValueError("feature_rows never reads fmap; use iter_feature_maps or FeatureReader")
    summaries = set(ws.listdir(f"{ds.rel}/{ROWS_DIR}", ".parquet"))
    parts = []
    for name in ws.listdir(ds.rel, ".parquet"):
        rel = f"{ds.rel}/{ROWS_DIR}/{name}" if name in summaries else f"{ds.rel}/{name}"
        parts.append(ws.read_table(rel, columns=columns))
    if not parts:
        return pa.schema([FEATURE_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(parts)


def feature_meta(ws: Workspace, model: str) -> dict:
    """The ``meta`` of a model's feature store; raises ``WorkspaceError`` when it has not been embedded."""
    manifest = ShardedDataset(ws, features_dir(model)).manifest()
    if not manifest["shards"]:
        raise WorkspaceError(f"{ws.path(features_dir(model))}: no features for model {model!r}; run `assay embed`")
    return manifest["meta"]


STORE_KEYS = ("backbone", "weights_id", "stride", "pool", "dim", "pca")


def store_fingerprint(ws: Workspace, model: str) -> dict:
    """What identifies the vectors of a feature store: backbone, weights id, cell stride, pooling, dim and the PCA
    (its path and the SHA-256 of its file), and the codec (with the PQ codebook's SHA-256) when it is not fp16 (so
    fingerprints of stores written before codecs are unchanged). An index records it; a different one means the
    index is stale."""
    import hashlib

    meta = feature_meta(ws, model)
    out = {k: meta.get(k) for k in STORE_KEYS}
    out["pca_sha256"] = hashlib.sha256(ws.read_bytes(meta["pca"])).hexdigest()[:16] if meta.get("pca") else None
    if meta.get("codec") not in (None, "fp16"):
        out["codec"] = meta["codec"]
        out["pq_sha256"] = hashlib.sha256(ws.read_bytes(meta["pq"])).hexdigest()[:16] if meta.get("pq") else None
    return out

