"""The catalog: every image of the pool (and its known boxes) as two Parquet files in the workspace.

``catalog/images.parquet``: image_id, uri, width, height, source, split, status, error, then any extra manifest
columns (as strings). ``catalog/labels.parquet``: image_id, box_id, x0, y0, x1, y1, category, source, status, error.

Contract
--------
* ``image_id`` is the first 16 hex digits of the SHA-1 of the normalised URI (absolute local path, or the URI as
  given when it has a scheme), so it is stable across runs and machines that see the same paths.
* Rows that fail are kept: an unreadable image gets ``status="error"`` and a reason (``missing file``,
  ``not an image``, ``truncated``, ``unsupported URI scheme 'http'``), a bad box a label row with ``status="error"``
  naming the field. Such rows never abort an ingest; the report names the manifest row. A manifest row with a null
  or blank ``uri`` has nothing to identify it: it is an error of the report (``<manifest>: row N: field 'uri' is
  empty``), never an image (it used to become the manifest's folder).
  :func:`actors.catalog.recheck.recheck_errors` re-reads the headers of the catalog's error rows
  (``assay ingest --recheck``): a restored file becomes ``ok``. Problems with the source itself
  (missing, empty, unparsable, no ``uri`` column, a COCO file with a duplicate image id or a box on an unknown
  image) raise ``UserError`` naming the file, and nothing is written.
* Ingest is idempotent: an image already in the catalog (same ``image_id``) and a box already there (same
  ``image_id``, ``box_id``) are not added again. Both files are replaced atomically, images first, each read,
  merged and written under :meth:`Workspace.locked` (concurrent ingests and label writers keep every row).
* Manifests stream in batches of ``batch_size`` rows: memory is bounded by the batch plus 8 bytes per known id.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.catalog.schema import (IMAGE_EXTS, IMAGE_SCHEMA, IMAGES, LABEL_SCHEMA, LABELS, RESERVED, conform_labels,
                                   normalize_uri)
from actors.core.errors import UserError
from actors.core.workspace import Workspace

MAX_EXAMPLES = 50  # failed rows listed by name in a report (all are counted)
FOLDER_SPLIT = "pool"  # a folder of images has no split column: its images are the pool to mine (assay embed's default)


@dataclass
class IngestReport:
    """What one :func:`ingest` did. ``failures`` lists up to 50 ``"<uri>: <reason>"`` lines for failed rows."""

    source: str
    kind: str
    rows_read: int = 0
    added: int = 0
    already_present: int = 0
    duplicates: int = 0
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    labels_added: int = 0
    labels_already_present: int = 0
    label_errors: int = 0
    failures: list[str] = field(default_factory=list)
    batches: int = 0

    def fail(self, where: str, reason: str, count_as: str = "errors") -> None:
        setattr(self, count_as, getattr(self, count_as) + 1)
        key = "bad box" if reason.startswith("bbox") else reason.split(" (")[0]
        self.errors_by_reason[key] = self.errors_by_reason.get(key, 0) + 1
        if len(self.failures) < MAX_EXAMPLES:
            self.failures.append(f"{where}: {reason}")


# --------------------------------------------------------------------------- ids
def _ids(uris: list[str]) -> tuple[list[str], np.ndarray]:
    """(hex ids, the same ids as uint64) for a batch of normalised URIs."""
    heads = [hashlib.sha1(u.encode()).digest()[:8] for u in uris]
    return [h.hex() for h in heads], np.frombuffer(b"".join(heads), dtype=">u8").astype(np.uint64)


def _hex_to_u64(ids: pa.Array) -> np.ndarray:
    return np.array([int(i, 16) for i in ids.to_pylist()], dtype=np.uint64)


class _IdSet:
    """Set of uint64 ids as a few sorted numpy runs (merged when they pile up): 8 bytes per id."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``x`` are in the set."""
        hit = np.zeros(len(x), bool)
        for r in self.runs:
            i = np.minimum(np.searchsorted(r, x), len(r) - 1)
            hit |= r[i] == x
        return hit

    def add(self, x: np.ndarray) -> None:
        if len(x):
            self.runs.append(np.unique(x))
        while len(self.runs) > 1 and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(np.union1d(a, b))


# --------------------------------------------------------------------------- header checks
def check_image(uri: str) -> tuple[int | None, int | None, str, str]:
    """(width, height, status, error) from the image header, without decoding pixels.

    Detects a missing file, a file that is not an image, and a truncated JPEG/PNG/WebP/BMP/GIF (the end marker
    or the declared length is missing).
    """
    from PIL import Image, UnidentifiedImageError

    bad = scheme_error(uri)
    if bad:
        return None, None, "error", bad
    try:
        f = _open(uri)
    except FileNotFoundError:
        return None, None, "error", "missing file"
    except (OSError, pa.ArrowInvalid) as e:
        return None, None, "error", f"unreadable ({getattr(e, 'strerror', None) or e})"
    with f:
        try:
            with Image.open(f) as im:
                w, h, fmt = im.size[0], im.size[1], im.format
        except (UnidentifiedImageError, SyntaxError, ValueError, OSError):
            return None, None, "error", "not an image"
        if _truncated(f, fmt):
            return w, h, "error", "truncated"
    return w, h, "ok", ""


SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")  # what pyarrow.fs can read


def scheme_error(uri: str) -> str:
    """The reason a URI cannot be read because of its scheme (``http://``…), or "" when its scheme is supported."""
    if "://" not in uri:
        return ""
    scheme = uri.split("://", 1)[0].lower()
    return "" if scheme in SCHEMES else f"unsupported URI scheme '{scheme}' (readable: {', '.join(SCHEMES)})"


def _open(uri: str):
    if "://" in uri:
        import pyarrow.fs as pafs

        from actors.core.workspace import resolve_uri

        fs, path = resolve_uri(uri)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri)
        return fs.open_input_file(path)
    if os.path.isdir(uri):
        raise IsADirectoryError(21, "is a folder", uri)
    return open(uri, "rb")


def _truncated(f, fmt: str | None) -> bool:
    size = f.seek(0, 2)
    f.seek(max(0, size - 32))
    tail = f.read().rstrip(b"\x00")
    f.seek(0)
    head = f.read(12)
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail
    if fmt == "GIF":
        return not tail.endswith(b";")
    if fmt == "WEBP":
        return int.from_bytes(head[4:8], "little") + 8 > size
    if fmt == "BMP":
        return int.from_bytes(head[2:6], "little") > size
    return False


# --------------------------------------------------------------------------- sources
def detect_kind(path: Path) -> str:
    """``folder``, ``parquet``, ``csv`` or ``coco`` from the path (raises when it is none of them)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    for kind, exts in (("parquet", (".parquet", ".pq")), ("csv", (".csv", ".csv.gz")), ("coco", (".json",))):
        if name.endswith(exts):
            return kind
    raise UserError(f"{path}: unknown source kind; give a folder, a .parquet/.csv manifest or a COCO .json")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _folder(path: Path, batch_size: int) -> tuple[int, Iterator[pa.Table]]:
    files = sorted(str(Path(d) / f) for d, _, fs in os.walk(path) for f in fs
                   if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
    if not files:
        raise UserError(f"{path}: empty folder (no {'/'.join(e[1:] for e in IMAGE_EXTS)} files)")
    return len(files), (pa.table({"uri": [normalize_uri(f) for f in c]}) for c in _chunks(files, batch_size))


def _to_int32(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Integers from a manifest column of any type; anything unparsable becomes null."""
    if pa.types.is_integer(a.type):
        return pc.cast(a, pa.int32())
    if pa.types.is_floating(a.type):
        return pc.cast(pc.if_else(pc.is_finite(a), a, None), pa.int32(), safe=False)
    s = pc.utf8_trim_whitespace(pc.cast(a, pa.string()))
    return pc.cast(pc.if_else(pc.match_substring_regex(s, r"^\d+$"), s, None), pa.int32())


def _manifest_batch(t: pa.Table, base: str, path: Path, first_row: int) -> pa.Table:
    """Normalise one manifest batch: uri resolved (null or blank stays ""), width/height int32, split/extras as
    strings, and ``_row``: each row's number in the file (CSV: its line; Parquet: 1-based), never written."""
    if "uri" not in t.column_names:
        raise UserError(f"{path}: manifest has no 'uri' column (columns: {', '.join(t.column_names)})")
    cols: dict[str, Any] = {"uri": [normalize_uri(u, base) if u and u.strip() else "" for u in t["uri"].to_pylist()],
                            "_row": pa.array(np.arange(first_row, first_row + t.num_rows), pa.int64())}
    for name in ("width", "height"):
        if name in t.column_names:
            cols[name] = _to_int32(t[name])
    if "split" in t.column_names:
        cols["split"] = pc.cast(t["split"], pa.string())
    for name in t.column_names:
        if name not in RESERVED:
            cols[name] = pc.cast(t[name], pa.string())
        elif name not in ("uri", "width", "height", "split"):
            cols[f"manifest_{name}"] = pc.cast(t[name], pa.string())
    return pa.table(cols)


def _manifest(path: Path, kind: str, batch_size: int,
              base: str | None = None) -> tuple[int | None, list[str], Iterator[pa.Table]]:
    """(row count if known, extra column names, batches) of a Parquet or CSV manifest; relative URIs are resolved
    against ``base`` (default: the manifest's folder)."""
    base = base or str(path.parent)
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            names, total = pf.schema_arrow.names, pf.metadata.num_rows
            raw: Iterable = pf.iter_batches(batch_size=batch_size)
        else:
            import pyarrow.csv as pacsv

            names = pacsv.open_csv(path).schema.names
            opts = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
            raw, total = _rebatch(pacsv.open_csv(path, convert_options=opts), batch_size), None
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: cannot read the {kind} manifest: {e}") from e
    if "uri" not in names:
        raise UserError(f"{path}: manifest has no 'uri' column (columns: {', '.join(names)})")
    if total == 0:
        raise UserError(f"{path}: manifest has no rows")
    extras = [n if n not in RESERVED else f"manifest_{n}" for n in names
              if n not in ("uri", "width", "height", "split")]
    return total, extras, _numbered(raw, base, path, kind)


def _numbered(raw: Iterable, base: str, path: Path, kind: str) -> Iterator[pa.Table]:
    """Manifest batches with their row numbers; a parse error part-way names the file (nothing is written then)."""
    row = 2 if kind == "csv" else 1  # CSV: line numbers (line 1 is the header)
    it = iter(raw)
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{path}: cannot read the {kind} manifest near row {row}: {e}") from e
        t = _manifest_batch(pa.table(b), base, path, row)
        row += t.num_rows
        yield t


def _rebatch(batches: Iterable[pa.RecordBatch], n: int) -> Iterator[pa.RecordBatch]:
    for b in batches:
        for i in range(0, b.num_rows, n):
            yield b.slice(i, n)


# --------------------------------------------------------------------------- the writer
def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.table(cols, schema=schema)


def _catalog_schema(ws: Workspace, extras: list[str]) -> pa.Schema:
    old = pq.read_schema(ws.path(IMAGES), filesystem=ws.fs) if ws.exists(IMAGES) else IMAGE_SCHEMA
    fields = list(IMAGE_SCHEMA) + [f for f in old if f.name not in RESERVED]
    fields += [pa.field(n, pa.string()) for n in extras if n not in {f.name for f in fields}]
    return pa.schema(fields)


class _Ingestor:
    """One ingest run: dedupes against known ids, checks headers in a thread pool, builds catalog rows."""

    def __init__(self, report: IngestReport, split: str | None, check_headers: bool, source: str) -> None:
        self.report, self.split, self.check, self.source = report, split, check_headers, source
        self.known, self.new = _IdSet(), _IdSet()
        self.pool = ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) if check_headers else None

    def rows(self, t: pa.Table) -> pa.Table:
        """Catalog rows for the images of batch ``t`` not seen before."""
        self.report.rows_read += t.num_rows
        self.report.batches += 1
        blank = pc.equal(t["uri"], "")
        if pc.any(blank).as_py():  # no URI: nothing to identify or read; an error in the report, naming the row
            for r in t.filter(blank)["_row"].to_pylist():
                self.report.fail(f"{self.source}: row {r}", "field 'uri' is empty")
            t = t.filter(pc.invert(blank))
        hexes, u64 = _ids(t["uri"].to_pylist())
        old = self.known.contains(u64)
        first = np.zeros(len(u64), bool)
        first[np.unique(u64, return_index=True)[1]] = True
        keep = ~old & first & ~self.new.contains(u64)
        self.report.already_present += int(old.sum())
        self.report.duplicates += int((~old & ~keep).sum())
        self.new.add(u64[keep])
        t = t.filter(pa.array(keep)).append_column("image_id", pa.array([h for h, k in zip(hexes, keep) if k]))
        return self._status(t)

    def _status(self, t: pa.Table) -> pa.Table:
        n = t.num_rows
        uris = t["uri"].to_pylist()
        where = ([f"{u} (row {r})" for u, r in zip(uris, t["_row"].to_pylist())] if "_row" in t.column_names
                 else uris)
        if self.check:
            checked = list(self.pool.map(check_image, uris))
            w, h, status, error = (list(c) for c in zip(*checked)) if n else ([], [], [], [])
            t = t.drop_columns([c for c in ("width", "height") if c in t.column_names])
            t = t.append_column("width", pa.array(w, pa.int32())).append_column("height", pa.array(h, pa.int32()))
        else:  # no header reads, but a scheme nothing can read is still an error row
            error = [scheme_error(u) for u in uris]
            status = ["error" if e else "unchecked" for e in error]
        for at, s, e in zip(where, status, error):
            if s == "error":
                self.report.fail(at, e)
        split = [self.split] * n if self.split is not None else (
            pc.fill_null(t["split"], "") if "split" in t.column_names else [""] * n)
        t = t.drop_columns([c for c in ("split",) if c in t.column_names])
        for name, values in (("split", split), ("status", status), ("error", error), ("source", [self.source] * n)):
            t = t.append_column(name, pa.array(values, pa.string()) if isinstance(values, list) else values)
        self.report.added += n
        return t

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


def _write_images(ws: Workspace, ing: _Ingestor, batches: Iterable[pa.Table], extras: list[str], bar) -> None:
    """Stream the old catalog and the new rows into a temp file, then atomically replace the catalog."""
    schema = _catalog_schema(ws, extras)
    had = ws.exists(IMAGES)

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, schema, filesystem=ws.fs, compression="zstd") as w:
            if had:
                for b in ws.iter_batches(IMAGES):
                    ing.known.add(_hex_to_u64(b.column("image_id")))
                    w.write_table(_conform(pa.table(b), schema))
            for t in batches:
                rows = ing.rows(t)
                if rows.num_rows:
                    w.write_table(_conform(rows, schema))
                bar.update(t.num_rows)

    ws._atomic(IMAGES, write)


def _write_labels(ws: Workspace, labels: pa.Table, report: IngestReport) -> None:
    old = conform_labels(ws.read_table(LABELS)) if ws.exists(LABELS) else LABEL_SCHEMA.empty_table()
    labels = conform_labels(labels)
    key = lambda t: pc.binary_join_element_wise(t["image_id"], pc.cast(t["box_id"], pa.string()), "/")  # noqa: E731
    fresh = pc.invert(pc.is_in(key(labels), value_set=key(old)))
    report.labels_already_present = labels.num_rows - pc.sum(fresh).as_py() if labels.num_rows else 0
    labels = labels.filter(fresh)
    report.labels_added = labels.num_rows
    ws.write_table(LABELS, pa.concat_tables([old, labels]))


def ingest(source: str | os.PathLike, ws: Workspace | str, *, split: str | None = None, check_headers: bool = True,
           batch_size: int = 65536, progress: bool = True, origin: str | None = None) -> IngestReport:
    """Add the images (and boxes) of ``source`` to the catalog of ``ws``.

    Parameters
    ----------
    source : path
        A folder of images (recursive), a Parquet/CSV manifest with a ``uri`` column (relative URIs are resolved
        against the manifest's folder; ``split``, ``width``, ``height`` and other columns are kept), or a COCO
        JSON file (``file_name`` resolved against the JSON's folder, its ``images/`` sibling or their parent).
    split : str, optional
        Split for every new row; overrides a manifest's ``split`` column. A folder's images get
        :data:`FOLDER_SPLIT` (``"pool"``, what ``assay embed`` reads by default) when it is None.
    check_headers : bool
        Read each image's header (size, format, truncation). Off: rows get ``status="unchecked"`` and the
        manifest's width/height, and URIs need not exist.
    batch_size : int
        Rows per streamed batch.
    origin : str, optional
        The URI (``s3://bucket/dir/manifest.csv``) that ``source`` is a local copy of: a manifest's relative URIs
        resolve against the origin's folder (``s3://bucket/dir/``), and the report and the catalog's ``source``
        column name the origin.

    Returns
    -------
    IngestReport

    Raises
    ------
    UserError
        The source is missing, empty or malformed (the message names the file); nothing is written then.
    """
    from tqdm import tqdm

    from actors.catalog.coco import read_coco

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    path = Path(source).expanduser().resolve()
    kind = detect_kind(path)
    report = IngestReport(source=origin or str(path), kind=kind)
    labels = LABEL_SCHEMA.empty_table()
    if kind == "folder":
        split = FOLDER_SPLIT if split is None else split
        total, batches = _folder(path, batch_size)
        extras: list[str] = []
    elif kind == "coco":
        images, labels, label_failures = read_coco(path)
        total, extras = images.num_rows, []
        batches = (images.slice(i, batch_size) for i in range(0, images.num_rows, batch_size))
        for where, reason in label_failures:
            report.fail(where, reason, "label_errors")
    else:
        total, extras, batches = _manifest(path, kind, batch_size, origin.rsplit("/", 1)[0] if origin else None)
    ing = _Ingestor(report, split, check_headers, origin or str(path))
    try:
        with tqdm(total=total, unit="img", desc=f"ingest {path.name}", disable=None if progress else True) as bar, \
                ws.locked(IMAGES):  # read-modify-writes of the catalog: concurrent ingests take turns
            _write_images(ws, ing, batches, extras, bar)
    finally:
        ing.close()
    with ws.locked(LABELS):
        if kind == "coco" or not ws.exists(LABELS):
            _write_labels(ws, labels, report)
    return report


__all__ = ["FOLDER_SPLIT", "IngestReport", "ingest", "check_image", "detect_kind", "scheme_error"]
