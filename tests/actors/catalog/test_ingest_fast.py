"""The vectorised parts of a manifest ingest give exactly what the per-row functions give."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.catalog.ingest import (_IdSet, _hex_to_u64, _ids, _normalize_uris, _scheme_errors, ingest,
                                   scheme_error)
from actors.catalog.schema import IMAGES, image_id, normalize_uri

MIXED = ["s3://bucket/a.jpg", "S3://Bucket/b.jpg", "gs://b/c d.jpg", "http://example.com/x.jpg", "HTTP://x/y",
         "file:///data/abs.jpg", "file://rel/x.jpg", "file://s3://b/x.jpg", "file://", "file:// /a.jpg",
         "file:///data/../up.jpg", "rel/a.jpg", "./rel/b.jpg", "rel/../c.jpg", "rel//d.jpg", "rel/e/", "..", ".",
         "/abs/ok.jpg", "/abs/../f.jpg", "/abs//g.jpg", "/abs/./h.jpg", "/abs/i/", "/abs/.", "/abs/..", "/abs/.hid",
         "/abs/..dots", "/abs/x..", "//host/share.jpg", "///triple.jpg", "/", "", "   ", None, " s3://pad/a.jpg ",
         "\ts3://tab/b.jpg\n", " /abs/pad.jpg", "rel/pad.jpg ", "naïve/é.jpg", "/abs/é", "é/abs", "\u00a0/nbsp.jpg",
         "/x.jpg\u3000", "/x\u2028", "\x1c/fs.jpg", "a\nb", "/a/.\n", "x://y", "abc/s3://d", "s3:/one-slash.jpg",
         "/abs/ok.jpg", "s3://bucket/a.jpg"]
BASES = ["/data/m", "/data/m/", "/data//m", "/", "s3://bucket/dir", "gs://b", "file:///data/m", None, "", "rel/base"]


def _expected(values, base):
    return [normalize_uri(u, base) if u and u.strip() else "" for u in values]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["string", "large_string", "dictionary", "chunked", "sliced"])
def test_vectorised_normalisation_is_normalize_uri_on_a_mixed_batch(base, kind):
    a = pa.array(MIXED, pa.string())
    if kind == "large_string":
        a = a.cast(pa.large_string())
    elif kind == "dictionary":
        a = a.dictionary_encode()
    elif kind == "chunked":
        a = pa.chunked_array([a[:20], a[20:]])
    got = _normalize_uris(a if kind != "sliced" else pa.array(["pad"] * 3 + MIXED)[3:], base).to_pylist()
    assert got == _expected(MIXED, base)


def test_vectorised_normalisation_common_cases_and_odd_columns():
    many = [f"s3://b/{i}.jpg" for i in range(100)] + [f"/d/{i}.png" for i in range(100)]
    assert _normalize_uris(pa.array(many), "/m").to_pylist() == many
    rel = [f"img/{i}.png" for i in range(50)]
    assert _normalize_uris(pa.array(rel), "/m").to_pylist() == [f"/m/img/{i}.png" for i in range(50)]
    assert _normalize_uris(pa.array([None, None], pa.string()), "/m").to_pylist() == ["", ""]
    assert _normalize_uris(pa.array([], pa.string()), "/m").to_pylist() == []
    assert _normalize_uris(pa.array([None, None]), "/m").to_pylist() == ["", ""]  # an all-null column (type null)
    cwd = os.getcwd()
    assert _normalize_uris(pa.array(["x.jpg", "s3://b/y"]), None).to_pylist() == [f"{cwd}/x.jpg", "s3://b/y"]


def test_vectorised_scheme_errors_are_scheme_error():
    values = [u for u in MIXED if u is not None] + ["ABFSS://c/x", "abfsss://c/x", "Gcs://x", "ftp://x", "K3://x",
                                                    "\u212a://x", "s3://a://b", "://nothing"]
    assert _scheme_errors(pa.array(values, pa.string())).to_pylist() == [scheme_error(u) for u in values]
    assert _scheme_errors(pa.array(["s3://a"] * 5)).to_pylist() == [""] * 5
    assert _scheme_errors(pa.array([], pa.string())).to_pylist() == []


def test_ids_are_sha1_prefixes_and_hex_round_trips():
    uris = [normalize_uri(u, "/m") for u in MIXED if u and u.strip()] + ["s3://b/é.jpg", "/", "x" * 300]
    hexes, u64 = _ids(pa.chunked_array([pa.array(uris[:10]), pa.array(uris[10:])]))
    assert hexes.to_pylist() == [image_id(u) for u in uris]
    assert u64.tolist() == [int(hashlib.sha1(u.encode()).hexdigest()[:16], 16) for u in uris]
    assert _hex_to_u64(hexes).tolist() == u64.tolist()
    assert _hex_to_u64(pa.array(["00000000000000FF", "ffffffffffffffff"])).tolist() == [255, 2**64 - 1]
    assert _hex_to_u64(pa.array(["ff", "0x10"])).tolist() == [255, 16]  # other forms: int(i, 16)
    assert _ids(pa.array([], pa.string()))[1].size == 0


def test_id_set_is_a_set():
    rng = np.random.default_rng(0)
    s, ref = _IdSet(), set()
    for _ in range(40):
        x = rng.integers(0, 2**64, int(rng.integers(0, 3000)), dtype=np.uint64)
        x = np.concatenate([x, rng.choice(np.array(sorted(ref) or [1], np.uint64), 200)])  # some known ids again
        probe = np.concatenate([x, rng.integers(0, 2**64, 500, dtype=np.uint64)])
        assert s.contains(probe).tolist() == [int(v) in ref for v in probe]
        s.add(x)
        ref.update(int(v) for v in x)
    assert len(s) == len(ref)
    assert s.contains(np.array(sorted(ref), np.uint64), is_sorted=True).all()


def test_mixed_manifest_catalog_matches_the_per_row_definitions(tmp_path, workspace):
    uris = MIXED * 3 + [f"s3://b/{i % 300}.jpg" for i in range(1000)]
    pq.write_table(pa.table({"uri": pa.array(uris, pa.string()), "n": list(range(len(uris)))}), tmp_path / "m.parquet")
    report = ingest(tmp_path / "m.parquet", workspace, check_headers=False, batch_size=37, progress=False)
    want: dict[str, int] = {}
    for u in uris:
        v = normalize_uri(u, str(tmp_path)) if u and u.strip() else ""
        if v:
            want.setdefault(v, len(want))
    got = workspace.read_table(IMAGES).to_pylist()
    assert [r["uri"] for r in got] == list(want)
    for r in got:
        assert r["image_id"] == image_id(r["uri"]) and r["error"] == scheme_error(r["uri"])
        assert r["status"] == ("error" if r["error"] else "unchecked") and r["source"] == str(tmp_path / "m.parquet")
    blanks = sum(1 for u in uris if not (u and u.strip()))
    assert (report.added, report.errors) == (len(want), blanks + sum(1 for v in want if scheme_error(v)))
    assert report.duplicates == len(uris) - blanks - len(want) and report.rows_read == len(uris)


def test_a_defect_deep_in_a_manifest_or_a_failed_write_leaves_nothing_and_no_thread(tmp_path, workspace, monkeypatch):
    import threading

    from actors.catalog import ingest as mod
    from actors.core.errors import UserError

    lines = [f"s3://b/{i}.jpg,train" for i in range(200_000)]  # 4 MB: read a block at a time
    lines[150_000] += ",extra,cols"  # read on the reader thread, after earlier batches were hashed and written
    (tmp_path / "bad.csv").write_text("uri,split\n" + "\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"bad\.csv: cannot read the csv manifest near row"):
        ingest(tmp_path / "bad.csv", workspace, check_headers=False, batch_size=10_000, progress=False)
    assert not workspace.exists(IMAGES) and not list((workspace.local_path("catalog")).glob(".images*tmp*"))

    pq.write_table(pa.table({"uri": [f"s3://b/{i}.jpg" for i in range(5000)]}), tmp_path / "m.parquet")
    calls = []

    def failing(t, schema):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return conform(t, schema)

    conform = mod._conform
    monkeypatch.setattr(mod, "_conform", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path / "m.parquet", workspace, check_headers=False, batch_size=100, progress=False)
    assert not workspace.exists(IMAGES) and not list((workspace.local_path("catalog")).glob(".images*tmp*"))
    assert not [t for t in threading.enumerate() if t.name.startswith("ingest-")]
