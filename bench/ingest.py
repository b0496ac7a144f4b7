"""Ingest throughput and peak memory; world generation speed.

Cases, each in a fresh subprocess so peak RSS (``ru_maxrss``) is its own:

* ``manifest``: a synthetic Parquet manifest of ``--rows`` rows (default 1M, s3:// URIs, four metadata columns)
  ingested with header checks off.
* ``world``: ``make_world`` of ``--images`` 512x384 images (default 2,000; its time is the world-speed figure),
  then the world's ``images/`` folder ingested with header checks on into a fresh workspace.

Usage: ``python bench/ingest.py [--rows N] [--images N] [--workers N]``; prints a table, writes bench/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def case_manifest(rows: int, tmp: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.pool import ingest

    path = tmp / "manifest.parquet"
    schema = pa.schema([("uri", pa.string()), ("split", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("camera", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for s in range(0, rows, 100_000):
            n = min(100_000, rows - s)
            w.write_table(pa.table({"uri": [f"s3://bucket/pool/{i:09d}.jpg" for i in range(s, s + n)],
                                    "split": ["pool"] * n, "width": [512] * n, "height": [384] * n,
                                    "camera": [f"cam{i % 17}" for i in range(s, s + n)]}, schema=schema))
    base = _peak_mib()
    t0 = time.perf_counter()
    rep = ingest(path, tmp / "ws", check_headers=False, progress=False)
    dt = time.perf_counter() - t0
    return {"case": f"manifest {rows:,} rows, headers off", "rows": rep.added, "seconds": dt,
            "rows_per_s": rep.added / dt, "peak_rss_mib": _peak_mib(), "rss_before_ingest_mib": base}


def case_world(images: int, workers: int, tmp: Path) -> dict:
    from actors.pool import ingest
    from actors.world import make_world

    s = make_world(tmp / "world", n_images=images, workers=workers)
    t0 = time.perf_counter()
    rep = ingest(tmp / "world" / "images", tmp / "ws", check_headers=True, progress=False)
    dt = time.perf_counter() - t0
    return {"case": f"world folder {images:,} images, headers on", "rows": rep.added, "seconds": dt,
            "rows_per_s": rep.added / dt, "peak_rss_mib": _peak_mib(), "world_seconds": s.seconds,
            "world_images_per_s": images / s.seconds, "world_ingest_coco_seconds": s.ingest_seconds,
            "world_workers": workers, "errors": rep.errors}


def _run_case(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--case", choices=["manifest", "world"])
    a = p.parse_args()
    if a.case:
        with tempfile.TemporaryDirectory() as tmp:
            r = case_manifest(a.rows, Path(tmp)) if a.case == "manifest" else case_world(a.images, a.workers, Path(tmp))
        print(json.dumps(r))
        return
    results = [_run_case(["--case", "manifest", "--rows", str(a.rows)]),
               _run_case(["--case", "world", "--images", str(a.images), "--workers", str(a.workers)])]
    from apps.output import console, table

    console.print(table("ingest", ["case", "rows", "seconds", "rows/s", "peak RSS MiB"],
                        [(r["case"], r["rows"], r["seconds"], r["rows_per_s"], r["peak_rss_mib"]) for r in results]))
    w = results[1]
    console.print(f"make_world: {a.images:,} images 512x384 in {w['world_seconds']:.1f}s "
                  f"({w['world_images_per_s']:.1f} img/s, {a.workers} workers), COCO->catalog "
                  f"{w['world_ingest_coco_seconds']:.1f}s")
    (ROOT / "bench" / "ingest.json").write_text(json.dumps({"results": results, "args": vars(a)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
