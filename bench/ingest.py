"""Ingest throughput and peak memory; world generation speed.

Cases, each in a fresh subprocess so peak RSS (``ru_maxrss``) is its own:

* ``manifest``: a synthetic Parquet manifest of ``--rows`` rows (default 1M, s3:// URIs, four metadata columns)
  ingested with header checks off; then, in another fresh subprocess, a manifest of ``--small-rows`` rows (default
  a tenth) whose result is kept under ``small`` in the manifest result: peak RSS at both sizes shows whether memory
  grows with the row count.
* ``world``: ``make_world`` of ``--images`` 512x384 images (default 2,000; its time is the world-speed figure),
  then the world's ``images/`` folder ingested with header checks on into a fresh workspace.

Usage: ``python bench/ingest.py [--rows N] [--images N] [--workers N] [--only manifest|world]``; prints a table
and writes bench/ingest.json. ``--only`` re-measures one case and keeps the other case's stored result (each
result records its own arguments). ``--smoke``: 2,000 rows and 16 images of 128x96, JSON to ``--out`` (seconds).
Every case records ``load_avg_1m``, the machine's 1-minute load average when it starts: timings are noisy when
other jobs share the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from actors.catalog.ingest import ingest

    load = os.getloadavg()[0]
    path = tmp / "manifest.parquet"
    schema = pa.schema([("uri", pa.string()), ("split", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("camera", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for s in range(0, rows, 100_000):  # s3://bucket/pool/{i:09d}.jpg, split pool, 512x384, camera cam{i % 17}
            i = np.arange(s, min(s + 100_000, rows))
            n = len(i)
            digits = pc.utf8_lpad(pa.array(i).cast(pa.string()), 9, "0")
            w.write_table(pa.table({
                "uri": pc.binary_join_element_wise("s3://bucket/pool/", digits, ".jpg", ""),
                "split": pa.repeat("pool", n), "width": pa.repeat(pa.scalar(512, pa.int32()), n),
                "height": pa.repeat(pa.scalar(384, pa.int32()), n),
                "camera": pc.binary_join_element_wise("cam", pa.array(i % 17).cast(pa.string()), "")}, schema=schema))
    base = _peak_mib()
    t0 = time.perf_counter()
    rep = ingest(path, tmp / "ws", check_headers=False, progress=False)
    dt = time.perf_counter() - t0
    peak = _peak_mib()  # the ingest's own peak (the floor below is measured after it)
    # baseline in the same run: the bare pyarrow floor — stream the manifest, hash every URI, write it back out
    t1 = time.perf_counter()
    with pq.ParquetWriter(tmp / "floor.parquet", pa.schema([("image_id", pa.string()), ("uri", pa.string())])) as w:
        for b in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=["uri"]):
            uris = b.column(0).to_pylist()
            w.write_table(pa.table({"image_id": [hashlib.sha1(u.encode()).hexdigest()[:16] for u in uris],
                                    "uri": uris}))
    floor = time.perf_counter() - t1
    return {"case": f"manifest {rows:,} rows, headers off", "rows": rep.added, "seconds": dt,
            "rows_per_s": rep.added / dt, "peak_rss_mib": peak, "rss_before_ingest_mib": base,
            "ingest_rss_growth_mib": peak - base, "baseline": "stream+hash+write floor",
            "baseline_rows_per_s": rows / floor, "load_avg_1m": load}


def case_world(images: int, workers: int, tmp: Path, size: tuple[int, int] = (512, 384)) -> dict:
    from actors.catalog.ingest import ingest
    from actors.catalog.world import make_world

    load = os.getloadavg()[0]
    s = make_world(tmp / "world", n_images=images, workers=workers, size=size)
    t0 = time.perf_counter()
    rep = ingest(tmp / "world" / "images", tmp / "ws", check_headers=True, progress=False)
    dt = time.perf_counter() - t0
    # baseline in the same run: a bare sequential loop opening every image header with PIL
    from PIL import Image

    files = sorted((tmp / "world" / "images").rglob("*.jpg"))
    t1 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.size
    floor = time.perf_counter() - t1
    return {"case": f"world folder {images:,} images, headers on", "rows": rep.added, "seconds": dt,
            "rows_per_s": rep.added / dt, "peak_rss_mib": _peak_mib(), "world_seconds": s.seconds,
            "world_images_per_s": images / s.seconds, "world_ingest_coco_seconds": s.ingest_seconds,
            "world_images": images, "world_size": list(size),
            "world_workers": workers, "errors": rep.errors,
            "baseline": "sequential PIL header loop", "baseline_rows_per_s": len(files) / floor, "load_avg_1m": load}


def _run_case(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small-rows", type=int, default=None,
                   help="rows of a second, smaller manifest run (peak RSS vs row count); default --rows / 10, 0: none")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--case", choices=["manifest", "world"], help=argparse.SUPPRESS)  # one case, in this process
    p.add_argument("--size", default="512x384", help="world image size WxH")
    p.add_argument("--only", choices=["manifest", "world"], help="re-measure this case only")
    p.add_argument("--smoke", action="store_true", help="2,000 rows, 16 images of 128x96 (seconds); needs --out")
    p.add_argument("--out", default=None, help="JSON path (default bench/ingest.json)")
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.lower().split("x"))
    if a.case:
        with tempfile.TemporaryDirectory() as tmp:
            r = (case_manifest(a.rows, Path(tmp)) if a.case == "manifest"
                 else case_world(a.images, a.workers, Path(tmp), size))
        print(json.dumps(r))
        return
    if a.smoke:
        if not a.out:
            p.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        a.rows, a.images, a.size, a.workers = 2000, 16, "128x96", 1
    small = a.rows // 10 if a.small_rows is None else a.small_rows
    out = Path(a.out) if a.out else ROOT / "bench" / "ingest.json"
    stored = json.loads(out.read_text()) if a.only and out.exists() else {}
    old = {("manifest" if r["case"].startswith("manifest") else "world"): r for r in stored.get("results", [])}
    results = []
    for case in ("manifest", "world"):
        if a.only and case != a.only and case in old:
            results.append(old[case])
            continue
        args = ["--case", case, "--rows", str(a.rows)] if case == "manifest" else \
            ["--case", case, "--images", str(a.images), "--workers", str(a.workers), "--size", a.size]
        r = {**_run_case(args), "command": "python bench/ingest.py " + " ".join(args[2:])}
        if case == "manifest" and small:
            r["small"] = _run_case(["--case", case, "--rows", str(small)])
            r["small"]["ratio"] = r["small"]["rows_per_s"] / r["small"]["baseline_rows_per_s"]
            r["command"] += f" --small-rows {small}"
        results.append(r)
    from apps.cli.output import console, table

    console.print(table("ingest", ["case", "rows", "seconds", "rows/s", "baseline", "baseline rows/s",
                                   "ratio", "peak RSS MiB"],
                        [(r["case"], r["rows"], r["seconds"], r["rows_per_s"], r["baseline"],
                          r["baseline_rows_per_s"], r["rows_per_s"] / r["baseline_rows_per_s"], r["peak_rss_mib"])
                         for r in [results[0], *([results[0]["small"]] if "small" in results[0] else []),
                                   *results[1:]]]))
    w = results[1]
    console.print(f"make_world: {w['world_images']:,} images in {w['world_seconds']:.1f}s "
                  f"({w['world_images_per_s']:.1f} img/s, {w['world_workers']} workers), COCO->catalog "
                  f"{w['world_ingest_coco_seconds']:.1f}s")
    for r in results:
        r["ratio"] = r["rows_per_s"] / r["baseline_rows_per_s"]
    out.write_text(json.dumps({"results": results, "smoke": a.smoke,
                               "notes": "timings on a shared 2-core machine: noisy"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
