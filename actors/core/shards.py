"""Sharded, resumable datasets inside a workspace.

A sharded dataset is a folder of ``part-00000.parquet`` files plus ``_manifest.json``. Work is planned up front as
a fixed list of shards (each a list of input keys, e.g. image ids), the plan is saved, and each shard's output is
written atomically when it is complete. A re-run with the same plan skips every shard whose part file exists, so an
interrupted step resumes where it stopped and a finished step is a no-op. A different plan (new inputs) keeps the
finished shards and adds new ones for the keys not covered yet: incremental work never recomputes old shards.

Contract
--------
* ``plan(keys)`` is deterministic: the same keys in any order give the same shards.
* A shard file exists ⇔ that shard is completely written (atomic rename). Whoever computes a shard writes it
  (a Ray worker, through the workspace URI); the driver then records it in the manifest (:meth:`commit`). A shard
  written but not committed (the driver stopped in between) is still done: it is never redone, and the next run
  commits it.
* ``_manifest.json`` records, per shard, its keys and, once committed, ``done`` (a small dict of counts); it is
  rewritten atomically, by the driver only.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from actors.core.errors import UserError
from actors.core.workspace import Workspace, WorkspaceError

MANIFEST = "_manifest.json"


@dataclass
class Shard:
    """One unit of resumable work: an index, its output file name, and the input keys it covers."""

    index: int
    keys: list[str]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"part-{self.index:05d}.parquet"


class ShardedDataset:
    """A folder of Parquet shards with a manifest, in a workspace.

    Parameters
    ----------
    ws : Workspace
    rel : str
        Folder relative to the workspace root, e.g. ``"features/assay-small"``.
    """

    def __init__(self, ws: Workspace, rel: str) -> None:
        self.ws = ws
        self.rel = rel.rstrip("/")

    # ------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        """The saved manifest, or an empty one when the dataset does not exist yet."""
        rel = posixpath.join(self.rel, MANIFEST)
        if not self.ws.exists(rel):
            return {"shards": [], "meta": {}}
        return self.ws.read_json(rel)

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        self.ws.write_json(posixpath.join(self.rel, MANIFEST), manifest)

    # ------------------------------------------------------------ planning
    def plan(self, keys: Iterable[str], shard_size: int, meta: dict[str, Any] | None = None) -> list[Shard]:
        """Plan shards covering ``keys``, keeping shards already planned; returns all shards.

        Keys already covered by a planned shard stay there; new keys are sorted and cut into new shards of at
        most ``shard_size`` keys. ``meta`` (e.g. the model name and grid size) must match the saved meta if the
        dataset exists, otherwise ``ValueError`` is raised, since mixing outputs of two settings is never wanted.
        """
        if shard_size < 1:
            raise UserError(f"shard_size must be >= 1, got {shard_size}")
        manifest = self.manifest()
        meta = dict(meta or {})
        saved_meta = manifest.get("meta") or {}
        if manifest["shards"] and saved_meta and meta and saved_meta != meta:
            raise UserError(
                f"{self.ws.path(self.rel)}: existing shards were made with {saved_meta}, not {meta}; "
                "use another output folder or delete it"
            )
        shards = [Shard(s["index"], list(s["keys"])) for s in manifest["shards"]]
        covered = {k for s in shards for k in s.keys}
        new = sorted(set(keys) - covered)
        start = len(shards)
        for i in range(0, len(new), shard_size):
            shards.append(Shard(start + i // shard_size, new[i : i + shard_size]))
        if new or not manifest["shards"] or (meta and meta != saved_meta):
            entries = list(manifest["shards"])  # planned shards keep what was recorded of them (``done``)
            entries += [{"index": s.index, "name": s.name, "keys": s.keys} for s in shards[start:]]
            self._save_manifest({"meta": meta or saved_meta, "shard_size": shard_size, "shards": entries})
        return shards

    def shards(self) -> list[Shard]:
        return [Shard(s["index"], list(s["keys"])) for s in self.manifest()["shards"]]

    # ------------------------------------------------------------ progress
    def pending(self, shards: Sequence[Shard] | None = None) -> list[Shard]:
        """Shards whose output file does not exist yet."""
        done = set(self.ws.listdir(self.rel, ".parquet"))
        return [s for s in (self.shards() if shards is None else shards) if s.name not in done]

    def committed(self) -> dict[int, dict[str, Any]]:
        """Shard index -> what :meth:`commit` recorded, for the committed shards."""
        return {s["index"]: s["done"] for s in self.manifest()["shards"] if s.get("done") is not None}

    def commit(self, done: dict[int, dict[str, Any]]) -> None:
        """Record finished shards (index -> counts) in the manifest (atomic rewrite; the driver's job).

        Raises ``WorkspaceError`` for a shard that is not planned or whose file does not exist.
        """
        if not done:
            return
        manifest = self.manifest()
        files = set(self.ws.listdir(self.rel, ".parquet"))
        by_index = {s["index"]: s for s in manifest["shards"]}
        for i, info in done.items():
            if i not in by_index or by_index[i]["name"] not in files:
                raise WorkspaceError(f"{self.ws.path(self.rel)}: cannot commit shard {i}: not planned or not written")
            by_index[i]["done"] = dict(info)
        self._save_manifest(manifest)

    def remove_orphans(self) -> int:
        """Delete temp files left by writers killed mid-write (``.part-*.tmp-*``); returns how many."""
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(self.ws.path(self.rel), allow_not_found=True, recursive=True)
        orphans = [i.path for i in self.ws.fs.get_file_info(sel) if ".tmp-" in posixpath.basename(i.path)]
        for p in orphans:
            try:
                self.ws.fs.delete_file(p)
            except (OSError, FileNotFoundError):
                pass
        return len(orphans)

    def write_shard(self, shard: Shard, table: pa.Table, **kwargs: Any) -> str:
        """Atomically write one shard's output (``kwargs`` go to ``pyarrow.parquet.write_table``)."""
        return self.ws.write_table(posixpath.join(self.rel, shard.name), table, **kwargs)

    # ------------------------------------------------------------ reading
    def part_paths(self) -> list[str]:
        """Full paths (in ``ws.fs``) of the finished shard files, in shard order."""
        return [self.ws.path(posixpath.join(self.rel, n)) for n in self.ws.listdir(self.rel, ".parquet")]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All finished shards as one table (raises ``WorkspaceError`` when there are none)."""
        paths = self.part_paths()
        if not paths:
            raise WorkspaceError(f"{self.ws.path(self.rel)}: no finished shards")
        return pa.concat_tables(pq.read_table(p, filesystem=self.ws.fs, columns=columns) for p in paths)

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream finished shards batch by batch (bounded memory)."""
        for p in self.part_paths():
            with self.ws.fs.open_input_file(p) as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)
