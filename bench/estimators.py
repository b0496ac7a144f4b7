"""Benchmark the data-requirement estimators and LOC on real learning curves (LCDB, Mohr et al. 2022).

LCDB's source distribution (PyPI ``lcdb==0.1.0``) ships ``database-accuracy.csv``: learning curves of sklearn
learners on OpenML datasets. We read that CSV with pandas (``import lcdb`` needs undeclared packages), average the
seeds per (dataset, learner, size), and use the validation accuracy in percent.

Protocol: fit on the points up to 10% (and 20%) of the largest size; target = accuracy at the largest size minus
``--margin`` points; keep curves whose target is at least 0.5 points above the prefix's best. τ is learned on the
other half of the datasets (2-fold by OpenML id). Simulator: T = 1, 3, 5 rounds from the 10% prefix, cap = largest
size, cost 1 per sample.

    python bench/estimators.py [--lcdb PATH] [--max-curves 600]

Prints markdown tables and writes ``bench/estimators.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.curves import make_curve  # noqa: E402
from estimators.laws import get_law, list_laws  # noqa: E402
from estimators.loc import LOCPlanner  # noqa: E402
from estimators.requirement import (EstimatePolicy, learn_correction, make_task, point_estimate,  # noqa: E402
                                    select_law)
from estimators.simulate import simulate, summarize  # noqa: E402

CACHE = Path.home() / ".cache" / "assay"
CSV_NAME = "database-accuracy.csv"


def locate_lcdb(path: str | None) -> Path:
    """Path of LCDB's accuracy CSV: ``--lcdb`` (CSV, folder or sdist .tar.gz), the cache, or a fresh download."""
    if path:
        p = Path(path)
        if p.is_dir():
            hits = sorted(p.rglob(CSV_NAME))
            if not hits:
                sys.exit(f"error: no {CSV_NAME} under {p}")
            return hits[0]
        if p.name.endswith(".tar.gz"):
            return _extract(p)
        if p.exists():
            return p
        sys.exit(f"error: --lcdb {p} does not exist")
    cached = CACHE / "lcdb" / CSV_NAME
    if cached.exists():
        return cached
    dl = CACHE / "lcdb" / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    print(f"downloading the lcdb==0.1.0 source distribution into {dl} ...", file=sys.stderr)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "lcdb==0.1.0",
                        "-d", str(dl)], capture_output=True, text=True)
    tars = sorted(dl.glob("lcdb-*.tar.gz"))
    if r.returncode != 0 or not tars:
        sys.exit("error: could not download lcdb (no network?). Download it with\n  pip download --no-deps "
                 "--no-binary :all: lcdb==0.1.0 -d DIR\nand pass --lcdb DIR/lcdb-0.1.0.tar.gz\n" + r.stderr[-500:])
    return _extract(tars[0])


def _extract(tar: Path) -> Path:
    out = CACHE / "lcdb" / CSV_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("/" + CSV_NAME)), None)
        if member is None:
            sys.exit(f"error: {tar} holds no {CSV_NAME}")
        src = tf.extractfile(member)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(src.read())
        tmp.replace(out)
    return out


def load_curves(csv: Path):
    """(openmlid, learner, LearningCurve) for every LCDB curve, seeds averaged, accuracy in percent."""
    import pandas as pd

    agg_path = CACHE / "lcdb" / "accuracy-curves.parquet"
    if agg_path.exists() and agg_path.stat().st_mtime >= csv.stat().st_mtime:
        agg = pd.read_parquet(agg_path)
    else:
        df = pd.read_csv(csv, usecols=["openmlid", "learner", "size_train", "score_valid"])
        df = df[np.isfinite(df["score_valid"])]
        agg = df.groupby(["openmlid", "learner", "size_train"], as_index=False)["score_valid"].mean()
        agg.to_parquet(agg_path)
    out = []
    for (oid, learner), g in agg.groupby(["openmlid", "learner"], sort=True):
        try:
            c = make_curve(g["size_train"], 100 * g["score_valid"].clip(0, 1), name=f"{oid}/{learner}")
        except ValueError:
            continue
        out.append((int(oid), learner, c))
    return out


def ratio_stats(est: np.ndarray, truth: np.ndarray, n0: np.ndarray) -> dict:
    est_tot = np.maximum(est, n0)  # (n0 + n_hat) / (n0 + n*) with n_hat, n* the additional data
    ratio = est_tot / truth
    logr = np.abs(np.log(ratio))
    return {"ratio_median": float(np.median(ratio)), "ratio_mean_finite": float(np.mean(ratio[np.isfinite(ratio)])),
            "under_share": float(np.mean(est_tot < truth)), "median_abs_log": float(np.median(logr)),
            "unreachable_share": float(np.mean(~np.isfinite(est)))}


def estimation_bench(items, folds, fraction, margin):
    tasks = [(oid, make_task(c, fraction=fraction, margin=margin)) for oid, _, c in items]
    tasks = [(oid, t) for oid, t in tasks if t is not None]
    n0 = np.array([t.n[-1] for _, t in tasks])
    truth = np.array([t.n_star for _, t in tasks])
    rows, fit_ms = {}, {}
    for name in list(list_laws()) + ["auto"]:
        t0 = time.perf_counter()
        est = np.array([_safe(point_estimate, t.n, t.y, t.target, law=name) for _, t in tasks])
        fit_ms[name] = 1e3 * (time.perf_counter() - t0) / len(tasks)
        rows[name] = est
    for name in ("power", "auto"):
        rows[f"{name}+tau"], taus = _cross_fit_tau(tasks, rows[name], folds, name)
    per = {"bracket_min": np.min([rows[k] for k in ("power", "arctan", "log", "root")], axis=0),
           "bracket_max": np.max([rows[k] for k in ("power", "arctan", "log", "root")], axis=0)}
    rows.update(per)
    stats = {k: ratio_stats(v, truth, n0) for k, v in rows.items()}
    covered = float(np.mean((per["bracket_min"] <= truth) & (truth <= per["bracket_max"])))
    return {"curves": len(tasks), "stats": stats, "fit_ms_per_curve": fit_ms, "bracket_covers": covered}


def _safe(fn, *a, **k):
    try:
        return fn(*a, **k)
    except ValueError:
        return math.inf


def _cross_fit_tau(tasks, est, folds, law):
    out, taus = est.copy(), {}
    for f in (0, 1):
        train = [t for oid, t in tasks if folds[oid] != f]
        corr = learn_correction(train, law=law)
        taus[f] = corr.tau
        for i, (oid, t) in enumerate(tasks):
            if folds[oid] == f and est[i] > t.n[-1]:
                out[i] = corr.apply(est[i], t.n[-1])
    return out, taus


def simulation_bench(items, folds, margin, rounds_list, n_boot, loc_risk, max_curves):
    runs = []
    for oid, _, c in items:
        t = make_task(c, fraction=0.1, margin=margin)
        if t is not None:
            runs.append((oid, c, t))
    runs = runs[:max_curves]
    corr = {f: learn_correction([t for oid, _, t in runs if folds[oid] != f], law="power") for f in (0, 1)}
    out, plan_ms = {}, []
    for T in rounds_list:
        res = {"power": [], "power+tau": [], "loc": []}
        for oid, c, t in runs:
            n0 = float(t.n[-1])
            pols = {"power": EstimatePolicy(law="power"),
                    "power+tau": EstimatePolicy(law="power", correction=corr[folds[oid]]),
                    "loc": LOCPlanner(cost=1.0, risk=loc_risk, rounds=T, n_boot=n_boot, seed=0)}
            for name, pol in pols.items():
                t0 = time.perf_counter()
                res[name].append(simulate(c, pol, target=t.target, n0=n0, rounds=T))
                if name == "loc":
                    plan_ms.append(1e3 * (time.perf_counter() - t0) / max(res[name][-1].rounds_used, 1))
        out[T] = {k: summarize(v) for k, v in res.items()}
        print(f"  simulated T={T}", file=sys.stderr, flush=True)
    return {"curves": len(runs), "tau": {str(k): v.tau for k, v in corr.items()}, "by_rounds": out,
            "plan_ms_per_round": float(np.median(plan_ms))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lcdb", help="LCDB accuracy CSV, a folder holding it, or the lcdb sdist .tar.gz")
    ap.add_argument("--max-curves", type=int, default=600)
    ap.add_argument("--margin", type=float, default=1.0, help="target = final accuracy minus this (points)")
    ap.add_argument("--n-boot", type=int, default=60, help="bootstrap resamples per LOC plan")
    ap.add_argument("--loc-risk", type=float, default=0.05, help="LOC's acceptable failure risk")
    ap.add_argument("--out", default=str(ROOT / "bench" / "estimators.json"))
    args = ap.parse_args(argv)
    csv = locate_lcdb(args.lcdb)
    items = load_curves(csv)
    rng = np.random.default_rng(0)
    items = [items[i] for i in rng.permutation(len(items))]
    oids = sorted({oid for oid, _, _ in items})
    folds = {oid: int(i) for oid, i in zip(oids, rng.permutation(len(oids)) % 2)}
    usable = [it for it in items if make_task(it[2], fraction=0.1, margin=args.margin) is not None]
    items = usable[: args.max_curves]
    print(f"LCDB: {len(oids)} datasets, {len(items)} curves used", file=sys.stderr)
    report = {"source": str(csv), "args": vars(args), "estimation": {}}
    for frac in (0.1, 0.2):
        report["estimation"][str(frac)] = estimation_bench(items, folds, frac, args.margin)
        print(f"  estimated at {frac:.0%}", file=sys.stderr, flush=True)
    report["simulation"] = simulation_bench(items, folds, args.margin, (1, 3, 5), args.n_boot, args.loc_risk,
                                            args.max_curves)
    print_tables(report)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    return 0


def print_tables(rep) -> None:
    for frac, e in rep["estimation"].items():
        print(f"\n### Estimation, fit on points up to {float(frac):.0%} of the largest size ({e['curves']} curves)\n")
        print("| estimator | median (n0+n̂)/(n0+n*) | under-estimates | median abs log(n̂/n*) | unreachable | ms/fit |")
        print("|---|---|---|---|---|---|")
        for k, s in e["stats"].items():
            ms = e["fit_ms_per_curve"].get(k)
            print(f"| {k} | {s['ratio_median']:.3f} | {s['under_share']:.1%} | {s['median_abs_log']:.3f} | "
                  f"{s['unreachable_share']:.1%} | {'' if ms is None else f'{ms:.1f}'} |")
        print(f"\nbracket [min, max] over the four paper laws covers n* on {e['bracket_covers']:.1%} of curves")
    s = rep["simulation"]
    print(f"\n### Simulated collection ({s['curves']} curves, start at 10%, cap = largest size; τ = {s['tau']})\n")
    print("| T | policy | failure rate | median cost ratio | mean cost ratio | mean rounds |")
    print("|---|---|---|---|---|---|")
    for T, d in s["by_rounds"].items():
        for k, v in d.items():
            print(f"| {T} | {k} | {v['failure_rate']:.1%} | {v['cost_ratio_median']:.3f} | "
                  f"{v['cost_ratio_mean']:.3f} | {v['rounds_mean']:.2f} |")
    print(f"\nLOC plan: {s['plan_ms_per_round']:.0f} ms per round (median)")


if __name__ == "__main__":
    sys.exit(main())
