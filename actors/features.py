"""The feature store: per-image region grids, as sharded Parquet in ``features/<model>/``.

One row per image (schema :data:`FEATURE_SCHEMA`):

=========  ========  =================================================================================
image_id   string    catalog id
grid_h     int32     rows of the region grid (0 when status != "ok")
grid_w     int32     columns of the region grid
dim        int32     channels per cell
stride_y   float32   image pixels per grid row   (cell (i, j) covers y in [i*stride_y, (i+1)*stride_y))
stride_x   float32   image pixels per grid column
fmap       binary    float16 C×H×W, C-order (empty when status != "ok")
status     string    "ok" or "error"
error      string    why the image failed (unreadable, corrupt…), "" when ok
=========  ========  =================================================================================

The dataset's ``_manifest.json`` ``meta`` holds at least ``model`` and ``dim`` (and, when PCA-reduced, the
path of the projection in the workspace). Writers use :class:`actors.shards.ShardedDataset` so work is resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.shards import ShardedDataset
from actors.workspace import Workspace, WorkspaceError

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
        raise ValueError(f"model name must be a plain name, got {model!r}")
    return f"features/{model}"


@dataclass
class FeatureMap:
    """One image's region grid: ``fmap`` is float16 C×H×W; strides are image pixels per cell."""

    image_id: str
    fmap: np.ndarray
    stride_y: float
    stride_x: float


def encode_rows(items: Iterable[FeatureMap | tuple[str, str]]) -> pa.Table:
    """Build a shard table from feature maps and ``(image_id, error)`` pairs for failed images."""
    cols: dict[str, list] = {f.name: [] for f in FEATURE_SCHEMA}
    for it in items:
        if isinstance(it, FeatureMap):
            c, h, w = it.fmap.shape  # C×H×W
            row = (it.image_id, h, w, c, it.stride_y, it.stride_x,
                   np.ascontiguousarray(it.fmap, dtype=np.float16).tobytes(), "ok", "")
        else:
            image_id, err = it
            row = (image_id, 0, 0, 0, 0.0, 0.0, b"", "error", str(err))
        for name, v in zip(FEATURE_SCHEMA.names, row):
            cols[name].append(v)
    return pa.table(cols, schema=FEATURE_SCHEMA)


def decode_row(row: dict) -> FeatureMap:
    """Inverse of :func:`encode_rows` for one ``status == "ok"`` row (a dict of Python values)."""
    shape = (row["dim"], row["grid_h"], row["grid_w"])
    fmap = np.frombuffer(row["fmap"], dtype=np.float16)
    if fmap.size != int(np.prod(shape)):
        raise WorkspaceError(f"feature row {row['image_id']}: fmap holds {fmap.size} values, expected {shape}")
    return FeatureMap(row["image_id"], fmap.reshape(shape), float(row["stride_y"]), float(row["stride_x"]))


def iter_feature_maps(ws: Workspace, model: str, image_ids: Iterable[str] | None = None,
                      batch_size: int = 256) -> Iterator[FeatureMap]:
    """Stream the ok feature maps of ``model`` (optionally only ``image_ids``) in bounded memory."""
    ds = ShardedDataset(ws, features_dir(model))
    wanted = None if image_ids is None else pa.array(sorted(set(image_ids)), pa.string())
    for batch in ds.iter_batches(batch_size=batch_size):
        mask = pc.equal(batch.column("status"), "ok")
        if wanted is not None:
            mask = pc.and_(mask, pc.is_in(batch.column("image_id"), value_set=wanted))
        for row in batch.filter(mask).to_pylist():
            yield decode_row(row)


def feature_meta(ws: Workspace, model: str) -> dict:
    """The ``meta`` of a model's feature store; raises ``WorkspaceError`` when it has not been embedded."""
    manifest = ShardedDataset(ws, features_dir(model)).manifest()
    if not manifest["shards"]:
        raise WorkspaceError(f"{ws.path(features_dir(model))}: no features for model {model!r}; run `assay embed`")
    return manifest["meta"]
