"""Re-check the catalog's error rows: ``assay ingest --recheck``.

Ingest never re-reads a row it already holds (ingest is idempotent), so an image that failed (a file missing at the
time, a bucket not yet readable) would stay ``status="error"`` for ever. :func:`recheck_errors` re-reads the header
of every error row with :func:`actors.catalog.ingest.check_image` and updates width, height, status and error; the
catalog is rewritten atomically and the other rows are untouched.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from actors.catalog.ingest import check_image
from actors.catalog.schema import IMAGES
from actors.core.workspace import Workspace, WorkspaceError


@dataclass
class RecheckReport:
    """What :func:`recheck_errors` did: error rows re-read, how many are ``ok`` now, and why the others still fail."""

    checked: int = 0
    recovered: int = 0
    still_failing: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)


def recheck_errors(ws: Workspace | str, *, batch_size: int = 65536) -> RecheckReport:
    """Re-read the header of every catalog row in ``status="error"`` (a file restored since, a bucket now readable)
    and update its width, height, status and error; the catalog is rewritten atomically, other rows untouched."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if not ws.exists(IMAGES):
        raise WorkspaceError(f"{ws.path(IMAGES)}: no catalog to recheck; run `assay ingest SOURCE` first")
    report = RecheckReport()
    schema = pq.read_schema(ws.path(IMAGES), filesystem=ws.fs)
    with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
        def write(tmp: str) -> None:
            with pq.ParquetWriter(tmp, schema, filesystem=ws.fs, compression="zstd") as w:
                for b in ws.iter_batches(IMAGES, batch_size=batch_size):
                    w.write_table(_recheck_batch(pa.table(b), pool, report).cast(schema))

        ws._atomic(IMAGES, write)
    return report


def _recheck_batch(t: pa.Table, pool: ThreadPoolExecutor, report: RecheckReport) -> pa.Table:
    rows = t.to_pydict()
    todo = [i for i, s in enumerate(rows["status"]) if s == "error"]
    for i, (w, h, status, error) in zip(todo, pool.map(check_image, [rows["uri"][i] for i in todo])):
        rows["width"][i], rows["height"][i], rows["status"][i], rows["error"][i] = w, h, status, error
        report.checked += 1
        if status == "ok":
            report.recovered += 1
        else:
            report.still_failing += 1
            key = error.split(" (")[0]
            report.errors_by_reason[key] = report.errors_by_reason.get(key, 0) + 1
    return pa.table(rows, schema=t.schema) if todo else t


__all__ = ["RecheckReport", "recheck_errors"]
