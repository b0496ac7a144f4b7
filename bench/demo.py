"""Benchmark: how long `assay demo` (the README's first command) takes, start to finish, and its peak memory.

Each run is ``python -m apps.cli.main demo --out <fresh folder> --json`` in a new process, as a newcomer runs it
after install (the interpreter's start and every import included): its wall time measured from outside, the demo's
own total (``seconds``, what it prints as "demo finished in Ns") and per-step times, the process's peak RSS
(``wait4``), the load average before and after, and the curve it showed (first and last round's mAP@.5). At least
3 runs; the median, min and max. Writes ``bench/demo.json``.

    python bench/demo.py --runs 3 --work /tmp/demo-bench
    python bench/demo.py --smoke --out /tmp/demo.json      # one 60-image run with a 2-round curve (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMOKE_LEARN = dict(initial=20, budget=20, rounds=2, min_steps=0, epochs=6)  # as tests/e2e/test_demo.py


def one_run(out: Path, images: int | None, smoke: bool) -> dict:
    """One demo in a fresh process writing into ``out`` (removed first)."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["--out", str(out), "--json"] + (["--images", str(images)] if images else [])
    if smoke:  # the small curve needs the learn schedule of the e2e test: set it in the child, then run the CLI
        code = ("import sys; from apps.cli import demo; demo.DEMO_LEARN = " + repr(SMOKE_LEARN) +
                "; from apps.cli.main import main; sys.exit(main(['demo'] + sys.argv[1:]))")
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "apps.cli.main", "demo", *args]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.stdout", "w") as so, open(out.parent / f"{out.name}.stderr", "w") as se:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"demo failed (exit {os.waitstatus_to_exitcode(status)}); see {se.name}")
    rep = json.loads((out.parent / f"{out.name}.stdout").read_text())
    v = rep["curve"]["value"]
    return {"wall_s": wall, "demo_seconds": rep["seconds"], "step_seconds": rep["step_seconds"],
            "peak_rss_mib": usage.ru_maxrss / 1024, "load_before": load, "load_after": os.getloadavg()[0],
            "curve_first_map50": v[0], "curve_last_map50": v[-1], "curve_labels": rep["curve"]["n"]}


def _stats(xs: list[float]) -> dict:
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="demo runs (>= 3)")
    ap.add_argument("--images", type=int, default=None, help="world size (default: the demo's own)")
    ap.add_argument("--work", default="/tmp/demo-bench", help="scratch folder (each run's output, removed before)")
    ap.add_argument("--smoke", action="store_true", help="one 60-image run; needs --out")
    ap.add_argument("--out", default=None, help="JSON path (default bench/demo.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        if not args.out:
            ap.error("--smoke needs --out (smoke figures never overwrite the committed JSON)")
        args.runs, args.images, args.work = 1, 60, str(Path(args.out).resolve().parent / "demo-smoke")
    elif args.runs < 3:
        ap.error("--runs must be >= 3 (timings are compared)")
    out = Path(args.out) if args.out else ROOT / "bench" / "demo.json"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.runs):
        runs.append(one_run(work / f"run{r}", args.images, args.smoke))
        x = runs[-1]
        print(f"run {r + 1}: {x['wall_s']:.0f} s wall ({x['demo_seconds']:.0f} s by the demo's own clock), peak RSS "
              f"{x['peak_rss_mib']:.0f} MiB, load {x['load_before']:.2f} -> {x['load_after']:.2f}; steps "
              + ", ".join(f"{k} {v:.0f} s" for k, v in x["step_seconds"].items()), flush=True)
    steps = list(runs[0]["step_seconds"])
    result = {
        "smoke": args.smoke, "command": "python bench/demo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": os.cpu_count(), "runs_n": len(runs),
        "wall_s": _stats([x["wall_s"] for x in runs]), "demo_seconds": _stats([x["demo_seconds"] for x in runs]),
        "step_seconds": {k: _stats([x["step_seconds"][k] for x in runs]) for k in steps},
        "peak_rss_mib": _stats([x["peak_rss_mib"] for x in runs]),
        "load_before": _stats([x["load_before"] for x in runs]),
        "curve_first_map50": _stats([x["curve_first_map50"] for x in runs]),
        "curve_last_map50": _stats([x["curve_last_map50"] for x in runs]),
        "notes": "each run a fresh `assay demo` process and output folder; wall_s from outside (interpreter start and "
                 "imports included); peak RSS of the demo process (Ray's worker processes not included)",
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
