"""Benchmark the data-requirement estimators, the shipped prior and LOC on real learning curves (LCDB 0.1.0).

Data: LCDB's ``database-accuracy.csv`` (:mod:`estimators.lcdb`), seeds averaged, validation accuracy in percent.

Held-out protocol. Datasets (OpenML ids) are split into ``--folds`` folds. For each fold, a prior is learned with the
shipped prior's own code (:mod:`estimators.prior`: every usable curve of the *other* folds, prefix up to 10%, target
= final accuracy − ``--margin``), written as JSON and loaded back, exactly as the CLI loads the shipped one. On up to
``--max-curves`` held-out curves (a seeded sample), fitted on the points up to 10% (and 20%) of the largest size with
the target = accuracy at the largest size − margin (every such curve reaches its target), we compare:

- ``power``: the plain power law; the other laws uncorrected;
- ``no prior``: what ``assay estimate`` did without ``--past`` before the prior shipped (law chosen on held-back
  points, uncorrected);
- ``power+tau``: the power law corrected by the fold prior's τ;
- ``default CLI``: :func:`estimators.requirement.estimate_requirement` with the fold's prior — the path ``assay
  estimate`` takes with no ``--past`` (status: estimate / open / unreachable / worse);
- ``--past``: the same call with a selection learned on the *same dataset's other learners* (a team's own past
  curves), where the dataset has at least 3 other usable curves.

Simulator (``estimators.simulate``): T = 1, 3, 5 rounds from the 10% prefix, cost 1 per sample, every registered
policy including the ``cap`` reference (collect up to the cap in round 1). Two caps: the truth's largest size (the
policies are told where the truth ends; a run at the cap then succeeds for free), and a team cap of 100× the
current size (the CLI default), under which requests beyond the truth's largest size are unmeasurable and reported
as such, not as successes. Failures are also charged a penalty equal to the cap reference's cost (``--penalty-x``
times it) in the all-runs cost.

    python bench/estimators.py --lcdb PATH [--max-curves 600] [--sim-curves 200] [--folds 5] [--jobs 1]
    python bench/estimators.py --smoke          # seconds, synthetic curves, writes into a temp dir
    # the committed figures: both halves side by side on a busy machine, then merged
    python bench/estimators.py --lcdb PATH --part estimation --max-curves 250 --jobs 2 --out /tmp/est.json
    python bench/estimators.py --lcdb PATH --part simulation --max-curves 250 --sim-curves 100 --jobs 2 --out /tmp/sim.json
    python bench/estimators.py --merge /tmp/est.json /tmp/sim.json

Prints markdown tables, writes them to ``bench/estimators.md`` and the numbers to ``bench/estimators.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.estimators_report import render_markdown, verdicts  # noqa: E402
from estimators.curves import make_curve  # noqa: E402
from estimators.laws import get_law, list_laws  # noqa: E402
from estimators.lcdb import LcdbCurve, dataset_folds, read_lcdb  # noqa: E402
from estimators.past import make_task, point_estimate  # noqa: E402
from estimators.prior import (load_prior, prior_dict, selection_from_tasks, task_estimates,  # noqa: E402
                              write_prior)
from estimators.requirement import estimate_requirement  # noqa: E402
from estimators.simulate import get_policy, list_policies, simulate, summarize  # noqa: E402

CACHE = Path.home() / ".cache" / "assay"
FRACTIONS = (0.1, 0.2)
ROUNDS = (1, 3, 5)
TEAM_CAP_X = 100.0
PAPER_NOTE = ("NeurIPS'22 (Mahmood et al., Optimizing Data Collection for ML), Table 1 pattern: regression-based "
              "estimators fail often when they may collect only a few rounds (e.g. ImageNet, T=5: 56% failures for "
              "the regression estimate) while LOC fails rarely (2%) at a comparable or modestly higher cost ratio.")


# --------------------------------------------------------------------------------------------- data
def synthetic_curves(n_datasets: int = 4, per_dataset: int = 4, seed: int = 0) -> list[LcdbCurve]:
    """Tiny LCDB-like curves for ``--smoke``: saturating power laws with noise, 16 … 16·2^9 samples."""
    rng = np.random.default_rng(seed)
    sizes = 16 * 2.0 ** np.arange(0, 10, 0.5)
    out = []
    for d in range(n_datasets):
        top = rng.uniform(80, 97)
        for k in range(per_dataset):
            a, b = rng.uniform(80, 300), -rng.uniform(0.3, 0.7)
            y = np.clip(top - a * sizes ** b + rng.normal(0, 0.2, len(sizes)), 0, 100)
            out.append(LcdbCurve(1000 + d, f"learner{k}", make_curve(sizes, y, name=f"{1000 + d}/learner{k}")))
    return out


def _pmap(fn, items, jobs: int, chunksize: int = 4, label: str = ""):
    """``map`` in ``jobs`` processes, printing progress every 50 items when ``label`` is given."""
    out = []
    if jobs <= 1:
        it = map(fn, items)
    else:
        pool = mp.get_context("fork").Pool(jobs)
        it = pool.imap(fn, items, chunksize=chunksize)
    for i, r in enumerate(it):
        out.append(r)
        if label and (i + 1) % 50 == 0:
            print(f"  {label}: {i + 1}/{len(items)}", file=sys.stderr, flush=True)
    if jobs > 1:
        pool.close()
        pool.join()
    return out


def _task_job(args):
    c, margin = args
    return task_estimates(c.curve, fraction=0.1, margin=margin)


def prefix_estimates(curves, args, cache: Path | None) -> list:
    """:func:`estimators.prior.task_estimates` of every curve, kept in ``cache`` (resumable across runs)."""
    key = f"margin={args.margin}"
    done = {}
    if cache and cache.exists():
        done = json.loads(cache.read_text()).get(key, {})
    todo = [c for c in curves if c.curve.name not in done]
    for i in range(0, len(todo), 400):  # checkpoint every 400 curves
        part = todo[i:i + 400]
        for c, r in zip(part, _pmap(_task_job, [(c, args.margin) for c in part], args.jobs, chunksize=16)):
            done[c.curve.name] = r
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps({key: done}))
            tmp.replace(cache)
        print(f"  prefix estimates: {len(done)}/{len(curves)}", file=sys.stderr, flush=True)
    return [_inf(done[c.curve.name]) for c in curves]


def _inf(r):
    """JSON round trip: estimates stored as Infinity come back as float inf (json does this); None stays None."""
    return None if r is None else {**r, "est": {k: float(v) for k, v in r["est"].items()}}


def fold_priors(curves, rows, folds, k, margin, out_dir: Path, source: str) -> dict:
    """Learn one prior per fold on the other folds' curves, write it as JSON and load it back."""
    priors = {}
    for f in range(k):
        train = [r for c, r in zip(curves, rows) if r is not None and folds[c.openmlid] != f]
        sel = selection_from_tasks(train)
        prov = {"source": source, "lcdb_version": "0.1.0", "metric": "validation accuracy, percent",
                "n_curves": len(train), "n_datasets": len({c.openmlid for c, r in zip(curves, rows)
                                                            if r is not None and folds[c.openmlid] != f}),
                "fold_scheme": f"{k}-fold by dataset (seed 0); fold {f} held out",
                "fit_fraction": 0.1, "margin": margin, "min_gain": 0.5, "quantile": 0.5,
                "created": time.strftime("%Y-%m-%d", time.gmtime()), "command": "bench/estimators.py"}
        priors[f] = load_prior(write_prior(prior_dict(sel, prov), out_dir / f"prior-fold{f}.json"))
    return priors


def past_selections(curves, rows, min_curves: int = 3) -> dict:
    """``--past`` for each curve: a selection learned on the same dataset's other usable curves (None if < 3)."""
    by_ds = {}
    for i, (c, r) in enumerate(zip(curves, rows)):
        if r is not None:
            by_ds.setdefault(c.openmlid, []).append(i)
    out = {}
    for i, c in enumerate(curves):
        others = [rows[j] for j in by_ds.get(c.openmlid, []) if j != i]
        out[i] = selection_from_tasks(others) if len(others) >= min_curves else None
    return out


# --------------------------------------------------------------------------------------------- estimation
def _raw(law, t):
    try:
        return float(get_law(law).fit(t.n, t.y).required_n(t.target))
    except ValueError:
        return math.inf


def evaluate_curve(job):
    """Every estimator on one held-out curve at each prefix fraction."""
    c, prior, past, margin, n_boot = job
    out = {}
    for frac in FRACTIONS:
        t = make_task(c.curve, fraction=frac, margin=margin)
        if t is None:
            continue
        pre = c.curve.head(t.n[-1])
        n0 = float(t.n[-1])
        t0 = time.perf_counter()
        r = estimate_requirement(pre, t.target, selection=prior.selection, n_boot=n_boot, prior="fold")
        ms = 1e3 * (time.perf_counter() - t0)
        est = {row["law"]: float(row["required_n"]) for row in r.per_law}
        try:
            est["no prior"] = float(point_estimate(t.n, t.y, t.target, law="holdout"))
        except ValueError:
            est["no prior"] = math.inf
        p = est["power"]
        est["power+tau"] = float(prior.correction("power").apply(p, n0)) if p > n0 else p
        est["default CLI"] = float(r.required_n)
        status = {"default CLI": r.status}
        if past is not None:
            rp = estimate_requirement(pre, t.target, selection=past, n_boot=n_boot)
            est["--past"], status["--past"] = float(rp.required_n), rp.status
        out[frac] = {"n0": n0, "n_star": float(t.n_star), "m": len(t.n), "est": est, "status": status,
                     "default_ms": ms, "default_law": r.law}
    return out


def _code_key(args) -> str:
    """What an evaluation depends on besides the curve: the estimators' source, margin, bootstrap, folds."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "estimators").rglob("*.py")) + [ROOT / "estimators" / "data" / "prior.json"]:
        h.update(f.read_bytes())
    return f"margin={args.margin},n_boot={args.n_boot},folds={args.folds},code={h.hexdigest()[:16]}"


def cached_evals(names, jobs, args, cache: Path | None, say=print) -> list:
    """:func:`evaluate_curve` of every job, kept in ``cache`` per curve (resumable: a rerun after an interruption
    evaluates only the curves not done yet; a change to ``estimators/`` starts a fresh key)."""
    key = _code_key(args)
    done = json.loads(cache.read_text()).get(key, {}) if cache and cache.exists() else {}
    todo = [(nm, j) for nm, j in zip(names, jobs) if nm not in done]
    for i in range(0, len(todo), 20):  # checkpoint every 20 curves
        part = todo[i:i + 20]
        for (nm, _), r in zip(part, _pmap(evaluate_curve, [j for _, j in part], args.jobs)):
            done[nm] = {str(k): v for k, v in r.items()}
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps({key: done}))
            tmp.replace(cache)
        say(f"evaluated {len(names) - len(todo) + i + len(part)}/{len(names)} held-out curves")
    return [{float(k): v for k, v in done[nm].items()} for nm in names]


def ratio_stats(est, truth, n0, status=None) -> dict:
    """Median |log(n̂/n*)|, under-estimate share, share with no estimate; n̂ below n0 counts as n0."""
    est, truth, n0 = (np.asarray(v, float) for v in (est, truth, n0))
    est_tot = np.maximum(est, n0)
    logr = np.abs(np.log(est_tot / truth))
    out = {"curves": int(len(est)), "median_abs_log": float(np.median(logr)) if len(est) else math.nan,
           "ratio_median": float(np.median(est_tot / truth)) if len(est) else math.nan,
           "under_share": float(np.mean(est_tot < truth)) if len(est) else math.nan,
           "unreachable_share": float(np.mean(~np.isfinite(est))) if len(est) else math.nan}
    if status is not None:
        st = np.asarray(status)
        out["status_share"] = {s: float(np.mean(st == s)) for s in sorted(set(status))}
        open_ = st == "open"
        out["open_median_abs_log"] = float(np.median(logr[open_])) if open_.any() else None
        out["unreachable_share"] = float(np.mean(st == "unreachable"))
        out["no_estimate_share"] = float(np.mean(~np.isfinite(est)))
    return out


def estimation_tables(evals) -> dict:
    report = {}
    for frac in FRACTIONS:
        rows = [e[frac] for e in evals if frac in e]
        if not rows:
            continue
        n0 = np.array([r["n0"] for r in rows])
        truth = np.array([r["n_star"] for r in rows])
        names = list(list_laws()) + ["no prior", "power+tau", "default CLI"]
        stats = {k: ratio_stats([r["est"][k] for r in rows], truth, n0,
                                [r["status"][k] for r in rows] if k in rows[0]["status"] else None) for k in names}
        has = [i for i, r in enumerate(rows) if "--past" in r["est"]]
        sub = lambda k: [rows[i]["est"][k] for i in has]  # noqa: E731
        stats["--past"] = ratio_stats(sub("--past"), truth[has], n0[has], [rows[i]["status"]["--past"] for i in has])
        stats["default CLI (same curves as --past)"] = ratio_stats(sub("default CLI"), truth[has], n0[has])
        stats["power (same curves as --past)"] = ratio_stats(sub("power"), truth[has], n0[has])
        laws_used = [r["default_law"] for r in rows]
        report[str(frac)] = {"curves": len(rows), "points_median": float(np.median([r["m"] for r in rows])),
                             "stats": stats, "default_ms_median": float(np.median([r["default_ms"] for r in rows])),
                             "default_law_share": {k: laws_used.count(k) / len(rows) for k in sorted(set(laws_used))}}
    return report


# --------------------------------------------------------------------------------------------- simulation
def simulate_curve(job):
    """Every registered policy at every T under both caps on one curve: {cap: {policy: {T: SimResult}}}."""
    c, prior, margin, n_boot, risk, penalty_x = job
    t = make_task(c.curve, fraction=0.1, margin=margin)
    n0, n_max = float(t.n[-1]), float(c.curve.n[-1])
    cfg = {"correction": prior.correction("power"), "selection": prior.selection, "risk": risk, "n_boot": n_boot}
    out = {}
    for cap_name, cap in (("truth", n_max), ("team", TEAM_CAP_X * n0)):
        out[cap_name] = {}
        for name in list_policies():
            out[cap_name][name] = {}
            for T in ROUNDS:
                out[cap_name][name][T] = simulate(c.curve, get_policy(name, rounds=T, **cfg), target=t.target, n0=n0,
                                                  rounds=T, penalty=penalty_x * (n_max - n0), max_total=cap)
    return out


def simulation_tables(sims) -> dict:
    out = {}
    for cap in ("truth", "team"):
        out[cap] = {str(T): {k: summarize([s[cap][k][T] for s in sims]) for k in sims[0][cap]} for T in ROUNDS}
    return out


def time_20_point_fits(curves, k: int = 40) -> dict:
    """Mean and max ms per fit of each law on the first 20 points of ``k`` curves (serial, in this process)."""
    cs = [c.curve for c in curves if len(c.curve.n) >= 20 and np.ptp(c.curve.score()[:20]) > 0][:k]
    out = {}
    for name in list_laws():
        ms = []
        for c in cs:
            t0 = time.perf_counter()
            try:
                get_law(name).fit(c.n[:20], c.score()[:20])
            except ValueError:
                pass
            ms.append(1e3 * (time.perf_counter() - t0))
        out[name] = {"mean": float(np.mean(ms)) if ms else math.nan, "max": float(np.max(ms)) if ms else math.nan,
                     "curves": len(ms)}
    return out


# --------------------------------------------------------------------------------------------- driver
def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lcdb", help="LCDB accuracy CSV, a folder holding it, or the lcdb-0.1.0 sdist .tar.gz")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic run (seconds); writes into a temp dir "
                                                         "unless --out/--md are given")
    ap.add_argument("--max-curves", type=int, default=600, help="held-out curves evaluated")
    ap.add_argument("--sim-curves", type=int, default=200, help="of those, how many are simulated")
    ap.add_argument("--folds", type=int, default=5, help="folds by dataset")
    ap.add_argument("--margin", type=float, default=1.0, help="target = final accuracy minus this (points)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (estimates and LOC plans)")
    ap.add_argument("--loc-risk", type=float, default=0.05, help="LOC's acceptable failure risk ε")
    ap.add_argument("--penalty-x", type=float, default=1.0, help="failure penalty, in units of the cap reference's "
                                                                 "cost (truth's largest size − n0)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--part", choices=("all", "estimation", "simulation"), default="all",
                    help="run only one half (two processes side by side), then --merge their JSON files")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine --part reports into --out/--md")
    ap.add_argument("--out", default=None, help="JSON output (default bench/estimators.json)")
    ap.add_argument("--md", default=None, help="markdown output (default bench/estimators.md)")
    args = ap.parse_args(argv)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="assay-bench-smoke-"))
        args.out = args.out or str(tmp / "estimators.json")
        args.md = args.md or str(tmp / "estimators.md")
        args.max_curves, args.folds, args.n_boot = min(args.max_curves, 6), 2, min(args.n_boot, 20)
        args.sim_curves = min(args.sim_curves, 6)
    elif not args.merge:
        if not args.lcdb:
            ap.error("--lcdb PATH is required (pip download --no-deps --no-binary :all: lcdb==0.1.0 -d DIR); "
                     "or --smoke")
    if not args.smoke:
        args.out = args.out or str(ROOT / "bench" / "estimators.json")
        args.md = args.md or str(ROOT / "bench" / "estimators.md")
    return args


def _write(report, args, argv) -> None:
    report["targets"] = verdicts(report) if "estimation" in report and "simulation" in report else []
    md = render_markdown(report, argv) if report["targets"] else ""
    if md:
        print(md)
    for path, text in ((args.md, md), (args.out, json.dumps(report, indent=1, default=float))):
        if path and text:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(p)


def merge(args, argv) -> int:
    """Combine an ``--part estimation`` and an ``--part simulation`` report (run side by side) into one."""
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    report = dict(parts[0])
    for extra in parts[1:]:
        for k in ("estimation", "simulation"):
            if k in extra:
                report[k] = extra[k]
        report["wall_s"] = max(report["wall_s"], extra["wall_s"])
    report["commands"] = [p["command"] for p in parts]
    _write(report, args, report["commands"])
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    if args.merge:
        return merge(args, argv)
    t_start = time.perf_counter()
    say = lambda m: print(f"[{time.perf_counter() - t_start:6.0f} s] {m}", file=sys.stderr, flush=True)  # noqa
    if args.smoke:
        curves, source = synthetic_curves(), "synthetic (smoke)"
    else:
        curves = read_lcdb(args.lcdb, cache=CACHE / "lcdb" / "accuracy-curves-v2.parquet")
        source = f"LCDB 0.1.0 ({Path(args.lcdb).name})"
    folds = dataset_folds(curves, args.folds, seed=0)
    say(f"{len(curves)} curves on {len(folds)} datasets; per-law prefix estimates for the fold priors ...")
    rows = prefix_estimates(curves, args, None if args.smoke else CACHE / "bench-estimators-rows.json")
    prior_dir = Path(tempfile.mkdtemp(prefix="assay-fold-priors-"))
    priors = fold_priors(curves, rows, folds, args.folds, args.margin, prior_dir, source)
    order = np.random.default_rng(0).permutation(len(curves))
    pick = [int(i) for i in order if rows[i] is not None][: args.max_curves]
    report = {"source": source, "args": vars(args), "paper_note": PAPER_NOTE,
              "command": "python bench/estimators.py " + " ".join(argv),
              "data": {"curves": len(curves), "datasets": len(folds), "usable_10pct": sum(r is not None for r in rows),
                       "evaluated": len(pick)},
              "fold_priors": {str(f): {"ranking": list(p.selection.ranking), "n_curves": p.provenance["n_curves"],
                                       "tau": {k: p.correction(k).tau for k in p.selection.ranking}}
                              for f, p in priors.items()}}
    if args.part in ("all", "estimation"):
        pasts = past_selections(curves, rows)
        say(f"{sum(r is not None for r in rows)} usable curves; evaluating {len(pick)} held-out curves ...")
        jobs = [(curves[i], priors[folds[curves[i].openmlid]], pasts[i], args.margin, args.n_boot) for i in pick]
        evals = cached_evals([curves[i].curve.name for i in pick], jobs, args,
                             None if args.smoke else CACHE / "bench-estimators-evals.json", say)
        report["fit_ms_20_points"] = time_20_point_fits(curves, k=5 if args.smoke else 40)
        report["estimation"] = estimation_tables(evals)
    if args.part in ("all", "simulation"):
        say("simulating collection campaigns ...")
        sim_jobs = [(curves[i], priors[folds[curves[i].openmlid]], args.margin, args.n_boot, args.loc_risk,
                     args.penalty_x) for i in pick[: args.sim_curves]]
        sims = _pmap(simulate_curve, sim_jobs, args.jobs, chunksize=2, label="simulated")
        report["simulation"] = {"curves": len(sims), "rounds": list(ROUNDS), "team_cap_x": TEAM_CAP_X,
                                "loc_risk": args.loc_risk, "penalty_x": args.penalty_x,
                                "by_cap": simulation_tables(sims)}
    report["wall_s"] = time.perf_counter() - t_start
    _write(report, args, [report["command"]])
    say(f"wrote {args.out}" + (f" and {args.md}" if report["targets"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
