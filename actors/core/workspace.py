"""The workspace: every piece of Assay state, as files under one root.

A workspace is a directory given as a local path or any URI ``pyarrow.fs`` understands
(``s3://bucket/ws``, ``gs://…``, ``file:///…``). Layout (see DESIGN.md)::

    catalog/images.parquet  catalog/labels.parquet
    features/<model>/part-*.parquet (+ _manifest.json)
    index/<model>/           queries/  selections/  runs/  plans/

Contract
--------
* Every write is atomic: data goes to a sibling ``.tmp-<uuid>`` path first and is then renamed over the
  target, so a reader sees either the old file or the new one, never half of one.
* Paths given to methods are *relative* to the workspace root and use ``/``; names that would escape the root
  (``..``, absolute paths) raise ``ValueError``.
* A read-modify-write of a shared file (``catalog/labels.parquet``: labels import, pseudo-labels, ingest) runs
  inside ``with ws.locked(rel):``, so concurrent writers (processes or threads) take turns instead of keeping one
  writer's rows. On a local workspace this is an exclusive ``fcntl.flock`` on a sibling ``.<name>.lock`` file.
  **Remote URIs are not locked** (object stores have no such lock): writes there stay atomic, but two concurrent
  read-modify-writes of one file can still lose one writer's update.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import posixpath
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.core.errors import UserError

DEFAULT_WORKSPACE = "./assay-workspace"
_HELD = threading.local()  # lock files this thread holds (Workspace.locked is re-entrant within a thread)


class WorkspaceError(UserError):
    """A workspace file is missing or unreadable; the message names the file."""


def _resolve(root: str | os.PathLike) -> tuple[pafs.FileSystem, str, bool]:
    root = os.fspath(root)
    if "://" in root and not root.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/"), False
    if root.startswith("file://"):
        root = root[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve()), True


class Workspace:
    """Handle on a workspace root; cheap to create, safe to pickle into Ray tasks (it pickles its absolute ``uri``).

    Parameters
    ----------
    root : str or PathLike
        Local directory or pyarrow.fs URI. It is created on first write.
    """

    def __init__(self, root: str | os.PathLike = DEFAULT_WORKSPACE) -> None:
        self.fs, self.base, self.is_local = _resolve(root)
        # absolute: a relative path is resolved once, here, never again in a Ray worker with another working dir
        self.uri = self.base if self.is_local else os.fspath(root)

    def __repr__(self) -> str:
        return f"Workspace({self.uri!r})"

    def __reduce__(self):
        return (Workspace, (self.uri,))

    # ---------------------------------------------------------------- paths
    def path(self, rel: str = "") -> str:
        """Absolute path (in ``self.fs``) of a relative workspace path."""
        rel = str(rel).replace(os.sep, "/")
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"workspace paths must be relative and stay inside the workspace, got {rel!r}")
        return posixpath.join(self.base, rel) if rel else self.base

    def local_path(self, rel: str = "") -> Path:
        """Local filesystem path; only for local workspaces (FAISS and torch need real files)."""
        if not self.is_local:
            raise WorkspaceError(f"{self.uri}: this step needs a local workspace, not a remote URI")
        return Path(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def makedirs(self, rel: str) -> None:
        self._create_dir(self.path(rel))

    def _create_dir(self, path: str) -> None:
        """``create_dir(path, recursive=True)``; a file in the way (``-w`` given a file) is a ``WorkspaceError``
        naming that file, not a ``NotADirectoryError`` traceback."""
        try:
            self.fs.create_dir(path, recursive=True)
        except (NotADirectoryError, FileExistsError) as e:
            blocker = next((p for p in (path, *map(str, Path(path).parents))
                            if self.fs.get_file_info(p).type == pafs.FileType.File), path)
            raise WorkspaceError(f"{blocker}: is a file, not a folder; the workspace {self.uri} must be a folder "
                                 f"(or a path that does not exist yet)") from e

    def listdir(self, rel: str, suffix: str = "") -> list[str]:
        """Sorted names (not paths) of the files directly in ``rel``; [] when it does not exist."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        names = [posixpath.basename(i.path) for i in self.fs.get_file_info(sel)]
        return sorted(n for n in names if n.endswith(suffix) and ".tmp-" not in n and not _is_lock(n))

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    # ---------------------------------------------------------------- locks
    @contextlib.contextmanager
    def locked(self, rel: str) -> Iterator[None]:
        """Hold the workspace's exclusive lock on ``rel`` for a read-modify-write of it (blocks until free).

        Local workspaces: ``fcntl.flock`` on ``.<name>.lock`` beside ``rel`` (left in place; released on exit or
        when the process dies), re-entrant within a thread. Remote URIs: nothing is locked (see the module notes).
        """
        if not self.is_local:
            yield
            return
        lock = self.local_path(posixpath.join(posixpath.dirname(rel), f".{posixpath.basename(rel)}.lock"))
        held = _HELD.__dict__.setdefault("paths", set())
        if lock in held:
            yield
            return
        self._create_dir(str(lock.parent))
        with open(lock, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            held.add(lock)
            try:
                yield
            finally:
                held.discard(lock)
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ---------------------------------------------------------------- atomic writes
    def _atomic(self, rel: str, write) -> str:
        target = self.path(rel)
        parent = posixpath.dirname(target)
        self._create_dir(parent)
        tmp = posixpath.join(parent, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            write(tmp)
            if self.is_local:
                os.replace(tmp, target)  # atomic on POSIX, also over an existing file
            else:
                self.fs.move(tmp, target)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except (OSError, FileNotFoundError):
                pass
            raise
        return target

    def write_bytes(self, rel: str, data: bytes) -> str:
        def write(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
        return self._atomic(rel, write)

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())

    def write_table(self, rel: str, table: pa.Table, **kwargs: Any) -> str:
        """Write a Parquet file atomically (zstd by default)."""
        kwargs.setdefault("compression", "zstd")
        return self._atomic(rel, lambda tmp: pq.write_table(table, tmp, filesystem=self.fs, **kwargs))

    def upload(self, rel: str, local_path: str | os.PathLike) -> str:
        """Copy a local file to ``rel`` atomically (for files that libraries such as FAISS write themselves)."""
        src = os.fspath(local_path)
        return self._atomic(rel, lambda tmp: pafs.copy_files(src, tmp, destination_filesystem=self.fs))

    def download(self, rel: str, local_path: str | os.PathLike) -> None:
        """Copy ``rel`` to a local file (for libraries such as FAISS that read real files)."""
        pafs.copy_files(self.path(rel), os.fspath(local_path), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    # ---------------------------------------------------------------- reads
    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError as e:
            raise WorkspaceError(f"{self.path(rel)}: not found in workspace {self.uri}") from e

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise WorkspaceError(f"{self.path(rel)}: not valid JSON ({e})") from e

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(rel):
            raise WorkspaceError(f"{self.path(rel)}: not found in workspace {self.uri}")
        try:  # one open handle: a file renamed over meanwhile is read whole (old or new), never a mix of both
            with self.fs.open_input_file(self.path(rel)) as f:
                return pq.read_table(f, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise WorkspaceError(f"{self.path(rel)}: unreadable Parquet ({e})") from e

    def iter_batches(self, rel: str, batch_size: int = 65536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a Parquet file in record batches (bounded memory)."""
        with self.fs.open_input_file(self.path(rel)) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


# ------------------------------------------------------------------------------------ single files at any URI
@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str, query: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of one bucket/host (built once per process: building an S3 one may ask for its region)."""
    root = f"{scheme}://{netloc}/" + (f"?{query}" if query else "")
    fs, path = pafs.FileSystem.from_uri(root)
    return fs, path.rstrip("/")


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of a local path or any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``…).

    Raises :class:`pyarrow.ArrowInvalid` for a scheme ``pyarrow.fs`` does not know (``http://``).
    """
    uri = os.fspath(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    parts = urlsplit(uri)
    fs, base = _filesystem(parts.scheme, parts.netloc, parts.query)
    return fs, base + unquote(parts.path)


def open_uri(uri: str) -> "pa.NativeFile":
    """A seekable binary file for reading a local path or a ``pyarrow.fs`` URI; ``FileNotFoundError`` if missing."""
    fs, path = resolve_uri(uri)
    return fs.open_input_file(path)


def _is_lock(name: str) -> bool:
    return name.startswith(".") and name.endswith(".lock")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")

