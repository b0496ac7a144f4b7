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
* Manifests stream in batches of ``batch_size`` rows (read ahead on one thread, written on another, normalised
  and hashed with Arrow buffers rather than Python strings): memory is bounded by a few batches plus 8 bytes per
  known id, whatever the row count.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
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
_HEX2 = np.array([int.from_bytes(f"{b:02x}".encode(), "little") for b in range(256)], "<u2")  # byte -> 2 digits
_NIBBLE = np.full(256, 255, np.uint8)  # ASCII hex digit -> its value; 255: not a hex digit
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _NIBBLE[ord(chr(_c).upper())] = _i


def _string_buffers(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a string array: value i (when not null) is ``data[offsets[i]:offsets[i + 1]]``."""
    n = len(a)
    offsets = np.frombuffer(a.buffers()[1], np.int32, n + 1, a.offset * 4)
    data = a.buffers()[2]
    return offsets, (np.frombuffer(data, np.uint8) if data is not None and data.size else np.zeros(1, np.uint8))


def _ids(uris: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(hex ids as a string array, the same ids as uint64) for a string array of normalised URIs.

    The SHA-1 of each URI's UTF-8 bytes, read straight from the Arrow buffer (no Python strings); the hex text is
    built from the digests in numpy."""
    a = uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris
    a = a.cast(pa.string())
    n = len(a)
    if n == 0:
        return pa.array([], pa.string()), np.zeros(0, np.uint64)
    offsets, _ = _string_buffers(a)
    data = a.buffers()[2].to_pybytes() if a.buffers()[2] is not None else b""
    o, sha1 = offsets.tolist(), hashlib.sha1
    digests = b"".join([sha1(data[i:j]).digest() for i, j in zip(o, islice(o, 1, None))])
    heads = np.frombuffer(digests, np.uint8).reshape(n, 20)[:, :8]
    text = _HEX2[heads]  # (n, 8) uint16: two hex digits per byte
    hexes = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 16 * n + 1, 16, dtype=np.int32)),
                                        pa.py_buffer(text))
    return hexes, np.ascontiguousarray(heads).view(">u8").ravel().astype(np.uint64)


def _hex_to_u64(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 of 16-digit hex ids (vectorised; ``int(i, 16)`` per id for any other form)."""
    a = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    a = a.cast(pa.string())
    if len(a) and not a.null_count:
        offsets, data = _string_buffers(a)
        if offsets[-1] - offsets[0] == 16 * len(a) and (np.diff(offsets) == 16).all():
            nib = _NIBBLE[data[offsets[0]:offsets[-1]]].reshape(len(a), 16)
            if (nib != 255).all():
                heads = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2])
                return heads.view(">u8").ravel().astype(np.uint64)
    return np.array([int(i, 16) for i in a.to_pylist()], dtype=np.uint64)


class _IdSet:
    """Set of uint64 ids: 8 bytes per id.

    The ids (SHA-1 prefixes, so evenly spread) live in 64 parts by their top bits, each a few sorted numpy runs,
    each at least ``GROWTH`` times the next: a run that comes near the one before it is merged into it. Few runs
    make few binary searches per lookup; a merge copies one run of one part, so memory never jumps by more than a
    small fraction of the set."""

    BITS = 6
    GROWTH = 16

    def __init__(self) -> None:
        self.parts: list[list[np.ndarray]] = [[] for _ in range(1 << self.BITS)]
        self._edges = np.arange(1 << self.BITS, dtype=np.uint64) << np.uint64(64 - self.BITS)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _bounds(self, x: np.ndarray) -> list[int]:
        return np.append(np.searchsorted(x, self._edges), len(x)).tolist()

    def contains(self, x: np.ndarray, *, is_sorted: bool = False) -> np.ndarray:
        """Boolean mask: which of ``x`` are in the set (``is_sorted``: ``x`` is ascending, saving a sort)."""
        x = np.asarray(x, np.uint64)
        hit = np.zeros(len(x), bool)
        if not self.count or not len(x):
            return hit
        order = None
        if not is_sorted and len(x) > 1:
            order = np.argsort(x, kind="stable")
            x = x[order]
        b = self._bounds(x)
        for p, runs in enumerate(self.parts):
            if runs and b[p] < b[p + 1]:
                xs, h = x[b[p]:b[p + 1]], hit[b[p]:b[p + 1]]
                for r in runs:
                    i = np.searchsorted(r, xs)
                    np.minimum(i, len(r) - 1, out=i)
                    h |= r[i] == xs
        if order is None:
            return hit
        out = np.empty_like(hit)
        out[order] = hit
        return out

    def add(self, x: np.ndarray, *, is_sorted_unique: bool = False, absent: bool = False) -> None:
        """Add ``x`` (``is_sorted_unique``: ascending without repeats; ``absent``: none of them is in the set yet,
        which saves looking them up)."""
        x = np.asarray(x, np.uint64)
        if not is_sorted_unique:
            x = np.unique(x)
        if not absent and len(x):
            x = x[~self.contains(x, is_sorted=True)]
        self.count += len(x)
        b = self._bounds(x)
        for p, runs in enumerate(self.parts):
            if b[p] < b[p + 1]:
                runs.append(x[b[p]:b[p + 1]].copy())
                while len(runs) > 1 and len(runs[-1]) * self.GROWTH >= len(runs[-2]):
                    top, below = runs.pop(), runs.pop()
                    merged = np.concatenate([below, top])
                    del top, below
                    merged.sort(kind="stable")  # two sorted runs of distinct ids: one linear merge
                    runs.append(merged)


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


# a URI that starts with a readable scheme (ASCII letters in either case: what ``str.lower`` maps into SCHEMES)
_READABLE = "^(?:" + "|".join("".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in s) for s in SCHEMES) + ")://"


def _scheme_errors(uris: pa.Array) -> pa.Array:
    """:func:`scheme_error` of each URI of a string array without nulls: vectorised, and per row only for the URIs
    whose scheme is not one of :data:`SCHEMES` in ASCII letters."""
    n = len(uris)
    blank = pa.nulls(n, pa.string()).fill_null("")
    odd = pc.match_substring(uris, "://")
    for scheme in SCHEMES:  # the usual lower-case prefixes first: a plain prefix test is cheaper than a regex
        if not pc.any(odd).as_py():
            return blank
        odd = pc.and_not(odd, pc.starts_with(uris, f"{scheme}://"))
    if not pc.any(odd).as_py():
        return blank
    rows = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
    sub = uris.take(pa.array(rows))
    rows = rows[~pc.match_substring_regex(sub, _READABLE).to_numpy(zero_copy_only=False)]  # S3://, Gs://...
    if not len(rows):
        return blank
    mask = np.zeros(n, bool)
    mask[rows] = True
    reasons = [scheme_error(u) for u in uris.take(pa.array(rows)).to_pylist()]
    return pc.replace_with_mask(blank, pa.array(mask), pa.array(reasons, pa.string()))


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


_NOT_NORMAL = r"//|/\.\.?(/|$)|/$"  # in a path that starts with "/": what os.path.normpath would change


def _printable_ends(a: pa.Array) -> np.ndarray:
    """Which values of a string array are non-null and start and end with printable ASCII other than a space, so
    that ``str.strip`` leaves them as they are."""
    n = len(a)
    ok = np.ones(n, bool) if not a.null_count else a.is_valid().to_numpy(zero_copy_only=False)
    offsets, data = _string_buffers(a)
    ok &= offsets[1:] > offsets[:-1]
    if not ok.any():
        return ok
    first, last = data[offsets[:-1][ok]], data[offsets[1:][ok] - 1]
    ok[ok] = (first > 32) & (first < 127) & (last > 32) & (last < 127)
    return ok


def _normalize_uris(uris: pa.Array | pa.ChunkedArray, base: str | None) -> pa.Array:
    """``normalize_uri(u, base)`` of each value, ``""`` for a null or blank one: a string array.

    Vectorised for what manifests hold: URIs with a scheme (kept as given), and local paths, absolute or relative
    to a local ``base``, that are already normal (no ``.``, ``..``, ``//`` or trailing ``/``); every other value
    (surrounding whitespace, ``..``, a relative path under a remote ``base``…) goes through :func:`normalize_uri`
    itself, so the result is the same."""
    a = uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris
    t = a.type.value_type if pa.types.is_dictionary(a.type) else a.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        return pa.array([normalize_uri(u, base) if u and u.strip() else "" for u in a.to_pylist()], pa.string())
    a = a.cast(pa.string())
    ok = _printable_ends(a)
    out = a
    if ok.any():
        file = pc.starts_with(a, "file://")
        v = pc.if_else(file, pc.utf8_slice_codeunits(a, 7), a) if pc.any(file).as_py() else a
        scheme = pc.match_substring(v, "://")
        fast = scheme
        if os.sep == "/" and not pc.all(pc.or_(scheme, pa.array(~ok))).as_py():  # local paths among the fast rows
            remote = bool(base) and "://" in base and not base.startswith("file://")
            local = "" if remote else (base or os.getcwd()).removeprefix("file://")
            if local.startswith("/"):  # os.path.join(local, v) of the relative ones
                prefix = local if local.endswith("/") else local + "/"
                v = pc.if_else(pc.or_(scheme, pc.starts_with(v, "/")), v, pc.binary_join_element_wise(prefix, v, ""))
            normal = pc.and_not(pc.starts_with(v, "/"), pc.match_substring_regex(v, _NOT_NORMAL))
            fast = pc.or_(scheme, normal)
        ok &= fast.fill_null(False).to_numpy(zero_copy_only=False)
        out = v
    if ok.all():
        return out
    slow = ~ok
    fixed = [normalize_uri(u, base) if u and u.strip() else "" for u in a.filter(pa.array(slow)).to_pylist()]
    return pc.replace_with_mask(out, pa.array(slow), pa.array(fixed, pa.string()))


def _manifest_batch(t: pa.Table, base: str, path: Path, first_row: int) -> pa.Table:
    """Normalise one manifest batch: uri resolved (null or blank stays ""), width/height int32, split/extras as
    strings, and ``_row``: each row's number in the file (CSV: its line; Parquet: 1-based), never written."""
    if "uri" not in t.column_names:
        raise UserError(f"{path}: manifest has no 'uri' column (columns: {', '.join(t.column_names)})")
    cols: dict[str, Any] = {"uri": _normalize_uris(t["uri"], base),
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
            pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group read: memory ~ rows
            names, total = pf.schema_arrow.names, pf.metadata.num_rows
            raw: Iterable = pf.iter_batches(batch_size=batch_size, use_threads=False)
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
    return total, extras, _numbered(_prefetched(raw), base, path, kind)  # read ahead on a thread of its own


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
    cols = [(t[f.name] if t[f.name].type == f.type else t[f.name].cast(f.type)) if f.name in t.column_names
            else pa.nulls(t.num_rows, f.type) for f in schema]
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
        hexes, u64 = _ids(t["uri"])
        order = np.argsort(u64)  # sorted ids: one pass finds the first of equal ids, and lookups are faster
        s = u64[order]
        first_s = np.ones(len(s), bool)
        first_s[1:] = s[1:] != s[:-1]
        if not first_s.all():  # repeated ids: sort again keeping their order, so the first row of each is kept
            order = np.argsort(u64, kind="stable")
            s = u64[order]
        old_s = self.known.contains(s, is_sorted=True)
        keep_s = ~old_s & first_s & ~self.new.contains(s, is_sorted=True)
        self.report.already_present += int(old_s.sum())
        self.report.duplicates += int((~old_s & ~keep_s).sum())
        self.new.add(s[keep_s], is_sorted_unique=True, absent=True)
        keep = np.empty_like(keep_s)
        keep[order] = keep_s
        if not keep.all():
            mask = pa.array(keep)
            t, hexes = t.filter(mask), hexes.filter(mask)
        return self._status(t.append_column("image_id", hexes))

    def _where(self, t: pa.Table, rows: np.ndarray) -> list[str]:
        """How the report names rows ``rows`` of ``t``: the URI, and its manifest row when known."""
        take = pa.array(rows, pa.int64())
        uris = t["uri"].take(take).to_pylist()
        if "_row" not in t.column_names:
            return uris
        return [f"{u} (row {r})" for u, r in zip(uris, t["_row"].take(take).to_pylist())]

    def _status(self, t: pa.Table) -> pa.Table:
        n = t.num_rows
        uri = t["uri"].combine_chunks()
        if self.check:
            checked = list(self.pool.map(check_image, uri.to_pylist()))
            w, h, status_l, error_l = (list(c) for c in zip(*checked)) if n else ([], [], [], [])
            t = t.drop_columns([c for c in ("width", "height") if c in t.column_names])
            t = t.append_column("width", pa.array(w, pa.int32())).append_column("height", pa.array(h, pa.int32()))
            status, error = pa.array(status_l, pa.string()), pa.array(error_l, pa.string())
            bad = np.array([s_ == "error" for s_ in status_l], bool)
        else:  # no header reads, but a scheme nothing can read is still an error row
            error = _scheme_errors(uri)
            ok = pc.equal(error, "")
            status = pc.if_else(ok, pa.scalar("unchecked"), pa.scalar("error"))
            bad = pc.invert(ok).to_numpy(zero_copy_only=False)
        if bad.any():
            rows = np.flatnonzero(bad)
            for at, e in zip(self._where(t, rows), error.take(pa.array(rows, pa.int64())).to_pylist()):
                self.report.fail(at, e)
        split = pa.repeat(pa.scalar(self.split, pa.string()), n) if self.split is not None else (
            pc.fill_null(t["split"], "") if "split" in t.column_names else pa.repeat(pa.scalar("", pa.string()), n))
        t = t.drop_columns([c for c in ("split",) if c in t.column_names])
        for name, values in (("split", split), ("status", status), ("error", error),
                             ("source", pa.repeat(pa.scalar(self.source, pa.string()), n))):
            t = t.append_column(name, values)
        self.report.added += n
        return t

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


class _Background:
    """Calls ``fn`` on each item put, in order, on a thread of its own: Parquet encoding and compression release
    the GIL, so writing one batch overlaps building the next. At most ``depth`` items wait; an error of ``fn``
    is raised by the next :meth:`put` or by :meth:`close`."""

    def __init__(self, fn, depth: int = 2) -> None:
        self.q: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.abort = False
        self.thread = threading.Thread(target=self._run, args=(fn,), name="ingest-writer", daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None and not self.abort:
                try:
                    fn(item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self, abort: bool = False) -> None:
        """Wait until every item is written (``abort``: skip those still waiting); raise an error of ``fn``."""
        self.abort = abort
        self.q.put(None)
        self.thread.join()
        if self.error is not None and not abort:
            raise self.error


try:  # glibc: give the C heap's free pages back to the OS (elsewhere: nothing to do)
    import ctypes

    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # pragma: no cover
    _malloc_trim = None


def _release_memory() -> None:
    """Hand the memory a finished batch freed back to the OS, so RSS stays flat over millions of rows instead of
    creeping up with allocator caches and heap fragmentation (each call takes well under a millisecond)."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """``items``, produced on a thread of their own (reading and decoding a manifest batch is Arrow code that
    releases the GIL, so it overlaps hashing the previous one); an error is raised where it happened in the
    sequence. At most ``depth`` items wait; closing the generator stops the thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((x, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - raised in the consumer's thread
            put((None, e))
            return
        put((_DONE, None))

    thread = threading.Thread(target=run, name="ingest-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, error = q.get()
            if error is not None:
                raise error
            if x is _DONE:
                return
            yield x
    finally:
        stop.set()
        thread.join()


_DONE = object()


def _write_images(ws: Workspace, ing: _Ingestor, batches: Iterable[pa.Table], extras: list[str], bar) -> None:
    """Stream the old catalog and the new rows into a temp file, then atomically replace the catalog."""
    schema = _catalog_schema(ws, extras)
    had = ws.exists(IMAGES)

    def write(tmp: str) -> None:
        # image_id and uri differ on every row: dictionary-encoding them only costs time (and bytes)
        with pq.ParquetWriter(tmp, schema, filesystem=ws.fs, compression="zstd",
                              use_dictionary=[n for n in schema.names if n not in ("image_id", "uri")]) as w:
            pool = pa.default_memory_pool()

            def put(t: pa.Table) -> None:
                w.write_table(_conform(t, schema))
                pool.release_unused()

            out = _Background(put)
            try:
                if had:
                    with ws.fs.open_input_file(ws.path(IMAGES)) as f:  # no pre-buffering: memory stays flat
                        for b in pq.ParquetFile(f, pre_buffer=False).iter_batches(batch_size=65536):
                            ing.known.add(_hex_to_u64(b.column("image_id")))
                            out.put(pa.table(b))
                for t in batches:
                    rows = ing.rows(t)
                    if rows.num_rows:
                        out.put(rows)
                    bar.update(t.num_rows)
                    del t, rows
                    _release_memory()
            except BaseException:
                out.close(abort=True)
                raise
            out.close()

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
        if hasattr(batches, "close"):  # stops the reader thread of a manifest that was not read to its end
            batches.close()
    with ws.locked(LABELS):
        if kind == "coco" or not ws.exists(LABELS):
            _write_labels(ws, labels, report)
    return report


__all__ = ["FOLDER_SPLIT", "IngestReport", "ingest", "check_image", "detect_kind", "scheme_error"]
