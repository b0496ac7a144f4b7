"""FAISS for the selection capability: the one place it is imported, after the wheels check, and index file I/O.

* Importing this module runs :func:`actors.core.runtime.check_faiss_install` first, so Assay refuses to run (one
  ``UserError``) with two FAISS wheels installed, or none, wherever FAISS is first needed — not only in tests.
* :func:`write_index` / :func:`read_index` use FAISS's own file I/O (``faiss.write_index`` / ``faiss.read_index``),
  never ``serialize_index(...).tobytes()``: writing streams to a temp file renamed over the target; reading for search
  memory-maps the file (``IO_FLAG_MMAP_IFC`` for flat codes, ``IO_FLAG_MMAP`` for IVF lists, both read-only) so a
  big index is paged in on demand instead of copied. A remote workspace goes through a local temp file.
"""

from __future__ import annotations

import os
import tempfile
import uuid

from actors.core.runtime import check_faiss_install
from actors.core.workspace import Workspace

check_faiss_install()

import faiss  # noqa: E402  (after the check, on purpose)


def mmap_flags(index_type: str) -> int:
    """Read-only memory-map flags for an index whose factory string is ``index_type``."""
    return (faiss.IO_FLAG_MMAP if "IVF" in index_type else faiss.IO_FLAG_MMAP_IFC) | faiss.IO_FLAG_READ_ONLY


def write_index(ws: Workspace, rel: str, index: faiss.Index) -> None:
    """Write ``index`` (CPU form) to ``rel`` atomically with ``faiss.write_index``."""
    if ws.is_local:
        target = ws.local_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            faiss.write_index(index, str(tmp))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="assay-index-") as d:
        local = os.path.join(d, "index.faiss")
        faiss.write_index(index, local)
        ws.upload(rel, local)


def read_index(ws: Workspace, rel: str, *, index_type: str = "", mmap: bool = True) -> faiss.Index:
    """Read the index at ``rel``; ``mmap`` (search only: the result must not be added to) maps it read-only
    where the index type allows, else it is read into memory. Raises ``WorkspaceError`` when the file is missing."""
    if not ws.exists(rel):
        from actors.core.workspace import WorkspaceError

        raise WorkspaceError(f"{ws.path(rel)}: index file missing; rebuild with `assay index --rebuild`")
    if ws.is_local:
        return _read(str(ws.local_path(rel)), index_type, mmap)
    with tempfile.TemporaryDirectory(prefix="assay-index-") as d:
        local = os.path.join(d, "index.faiss")
        ws.download(rel, local)
        return _read(local, index_type, mmap=False)  # the temp copy goes away: read it into memory


def _read(path: str, index_type: str, mmap: bool) -> faiss.Index:
    if mmap:
        try:
            return faiss.read_index(path, mmap_flags(index_type))
        except RuntimeError:  # an index type FAISS cannot map: read it whole
            pass
    return faiss.read_index(path)


__all__ = ["faiss", "mmap_flags", "read_index", "write_index"]
