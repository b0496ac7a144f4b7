"""The shipped prior: the law ranking, each law's τ and LOC's calibration, learned on LCDB and stored as JSON.

A team that has no past learning curves of its own still gets the correction that makes an estimate usable: the
prior is a :class:`~estimators.past.Selection` learned on the public Learning Curve Database (LCDB 0.1.0) with the
same protocol as ``--past`` (fit each curve's prefix up to ``fit_fraction`` of its largest size, target = its final
accuracy minus ``margin`` points), stored in ``estimators/data/prior.json`` with its provenance. ``assay estimate``
and ``assay plan`` use it when no ``--past`` is given.

Rebuild it (2,279 usable curves; 8 minutes with ``--jobs 2`` on a busy 2-core machine)::

    pip download --no-deps --no-binary :all: lcdb==0.1.0 -d /tmp/lcdb
    python -m estimators.prior build --lcdb /tmp/lcdb/lcdb-0.1.0.tar.gz

and inspect it with ``python -m estimators.prior show [PATH]``. The JSON holds, per law, τ, the number of curves it
was learned on, its median ``|log(n̂/n*)|`` after τ, and ``log_ratio_quantiles`` — quantiles of the past errors
``log((n* − n0)/(n̂ − n0))`` that LOC's ``calibrate="past"`` spreads its requirement distribution by.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from estimators.errors import EstimatorInputError
from estimators.laws import list_laws
from estimators.past import Correction, Selection, make_task, point_estimate, selection_from_estimates

SCHEMA = "assay.estimators.prior"
VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "prior.json"
N_QUANTILES = 101
PROVENANCE = {"source": str, "lcdb_version": str, "metric": str, "n_curves": int, "n_datasets": int,
              "fold_scheme": str, "fit_fraction": float, "margin": float, "min_gain": float, "quantile": float,
              "created": str, "command": str}
LAW_FIELDS = {"tau": float, "n_curves": int, "error": (float, type(None)), "log_ratio_quantiles": list}


class PriorError(EstimatorInputError):
    """A prior file that is missing, not JSON, or does not match the schema (the message names file and field)."""


@dataclass(frozen=True)
class Prior:
    """A loaded, validated prior: the selection it carries, its provenance and where it came from."""

    selection: Selection
    provenance: dict
    path: str

    def correction(self, law: str) -> Correction:
        """The correction learned for ``law`` (τ and the past-error quantiles LOC calibrates with)."""
        return self.selection.corrections[law]

    def describe(self) -> str:
        """One line for CLI output: what was learned on how much data."""
        p = self.provenance
        return (f"prior learned on LCDB {p['lcdb_version']} ({p['n_curves']:,} curves, {p['n_datasets']} datasets; "
                f"law ranking {' > '.join(self.selection.ranking)})")


# ----------------------------------------------------------------------------------------------- learning
def task_estimates(curve, *, fraction: float, margin: float, min_gain: float = 0.5,
                   laws: Sequence[str] | None = None) -> dict | None:
    """Cut the past-curve task from ``curve`` and estimate it with every law (uncorrected).

    Returns ``{"n0", "n_star", "est": {law: n_hat}}`` (``inf`` where a law cannot fit or never reaches the target),
    or None when the curve gives no task (see :func:`estimators.past.make_task`).
    """
    t = make_task(curve, fraction=fraction, margin=margin, min_gain=min_gain)
    if t is None:
        return None
    est = {}
    for law in laws or list_laws():
        try:
            est[law] = float(point_estimate(t.n, t.y, t.target, law=law))
        except ValueError:
            est[law] = math.inf
    return {"n0": float(t.n[-1]), "n_star": float(t.n_star), "est": est}


def selection_from_tasks(rows: Sequence[dict], *, quantile: float = 0.5) -> Selection:
    """The :class:`Selection` (ranking, τ, past errors) learned from :func:`task_estimates` rows."""
    if not rows:
        raise EstimatorInputError("no past curve gives a task (too few points in the prefix, or no gain to reach)")
    laws = list(rows[0]["est"])
    n0 = np.array([r["n0"] for r in rows])
    n_star = np.array([r["n_star"] for r in rows])
    est = {k: np.array([r["est"][k] for r in rows]) for k in laws}
    return selection_from_estimates(est, n0, n_star, quantile=quantile)


def _quantiles(log_ratios, k: int = N_QUANTILES) -> list[float]:
    v = np.sort(np.asarray(log_ratios, float))
    if len(v) <= k:
        return [round(float(x), 5) for x in v]
    return [round(float(x), 5) for x in np.quantile(v, (np.arange(k) + 0.5) / k)]


def prior_dict(selection: Selection, provenance: dict) -> dict:
    """The JSON object of a prior (see :func:`validate_prior` for the schema)."""
    laws = {}
    for k in selection.ranking:
        c = selection.corrections[k]
        err = selection.errors.get(k)
        laws[k] = {"tau": float(c.tau), "n_curves": int(c.n_curves),
                   "error": float(err) if err is not None and math.isfinite(err) else None,
                   "log_ratio_quantiles": _quantiles(c.log_ratios)}
    return {"schema": SCHEMA, "version": VERSION, "provenance": provenance,
            "selection": {"ranking": list(selection.ranking), "how": selection.how, "laws": laws}}


def write_prior(obj: dict, path: str | Path) -> Path:
    """Validate and write a prior JSON atomically (temp file + rename)."""
    path = Path(path)
    validate_prior(obj, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------- loading
def _need(d: dict, key: str, typ, where: str):
    if not isinstance(d, dict) or key not in d:
        raise PriorError(f"{where}: missing field {key!r}")
    v = d[key]
    ok = isinstance(v, typ) and not isinstance(v, bool)
    if typ is float or (isinstance(typ, tuple) and float in typ):
        ok = ok or (isinstance(v, int) and not isinstance(v, bool))
    if not ok:
        raise PriorError(f"{where}: field {key!r} is {v!r}, expected {getattr(typ, '__name__', typ)}")
    return v


def validate_prior(obj, where: str = "<prior>") -> None:
    """Check a prior object against the schema; raise :class:`PriorError` naming the file and field."""
    if not isinstance(obj, dict):
        raise PriorError(f"{where}: a prior is a JSON object, got {type(obj).__name__}")
    if obj.get("schema") != SCHEMA:
        raise PriorError(f"{where}: field 'schema' is {obj.get('schema')!r}, expected {SCHEMA!r}")
    if obj.get("version") != VERSION:
        raise PriorError(f"{where}: field 'version' is {obj.get('version')!r}; this Assay reads version {VERSION}")
    prov = _need(obj, "provenance", dict, where)
    for key, typ in PROVENANCE.items():
        _need(prov, key, typ, f"{where}: provenance")
    if prov["n_curves"] < 1 or prov["n_datasets"] < 1:
        raise PriorError(f"{where}: provenance: n_curves and n_datasets must be >= 1")
    sel = _need(obj, "selection", dict, where)
    ranking = _need(sel, "ranking", list, f"{where}: selection")
    laws = _need(sel, "laws", dict, f"{where}: selection")
    if not ranking:
        raise PriorError(f"{where}: selection: field 'ranking' is empty")
    for k in ranking:
        if k not in list_laws():
            raise PriorError(f"{where}: selection: field 'ranking' names unknown law {k!r} "
                             f"(known: {', '.join(list_laws())})")
        row = _need(laws, k, dict, f"{where}: selection.laws")
        for f, typ in LAW_FIELDS.items():
            _need(row, f, typ, f"{where}: selection.laws.{k}")
        if not (math.isfinite(row["tau"]) and row["tau"] > 0):
            raise PriorError(f"{where}: selection.laws.{k}: field 'tau' is {row['tau']!r}, expected a number > 0")
        q = row["log_ratio_quantiles"]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in q) or list(q) != sorted(q):
            raise PriorError(f"{where}: selection.laws.{k}: field 'log_ratio_quantiles' must be sorted finite "
                             "numbers")


def load_prior(path: str | Path | None = None) -> Prior:
    """Load and validate a prior (default: the one shipped in the package, ``estimators/data/prior.json``).

    Raises
    ------
    PriorError
        The file is missing, is not JSON, or does not match the schema (the message names the file and field).
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise PriorError(f"{path}: no such prior file (rebuild it with `python -m estimators.prior build --lcdb "
                         "PATH`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PriorError(f"{path}: not a readable JSON prior: {e}") from e
    validate_prior(obj, str(path))
    sel = obj["selection"]
    corrs, errs = {}, {}
    for k in sel["ranking"]:
        row = sel["laws"][k]
        corrs[k] = Correction(tau=float(row["tau"]), quantile=float(obj["provenance"]["quantile"]),
                              n_curves=int(row["n_curves"]), law=k,
                              log_ratios=tuple(float(v) for v in row["log_ratio_quantiles"]))
        errs[k] = math.inf if row["error"] is None else float(row["error"])
    selection = Selection(ranking=tuple(sel["ranking"]), corrections=corrs, errors=errs, how="best")
    return Prior(selection=selection, provenance=dict(obj["provenance"]), path=str(path))


# ----------------------------------------------------------------------------------------------- build CLI
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _estimate_job(args):
    curve, fraction, margin, min_gain = args
    return task_estimates(curve, fraction=fraction, margin=margin, min_gain=min_gain)


def build(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m estimators.prior build",
                                 description="Learn the prior on LCDB 0.1.0 and write it as JSON.")
    ap.add_argument("--lcdb", required=True, help="LCDB's database-accuracy.csv, a folder holding it, or the "
                                                  "lcdb-0.1.0.tar.gz sdist")
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--fraction", type=float, default=0.1, help="prefix fitted (share of each curve's largest size)")
    ap.add_argument("--margin", type=float, default=1.0, help="target = final accuracy minus this (points)")
    ap.add_argument("--min-gain", type=float, default=0.5, help="skip curves whose target is not this far above "
                                                                "the prefix's best")
    ap.add_argument("--quantile", type=float, default=0.5, help="τ = this quantile of the past errors")
    ap.add_argument("--max-curves", type=int, default=0, help="use at most this many curves (0: all)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = ap.parse_args(argv)
    from estimators.lcdb import LCDB_VERSION, read_lcdb

    src = Path(args.lcdb)
    curves = read_lcdb(src)
    if args.max_curves:
        curves = curves[: args.max_curves]
    print(f"LCDB: {len(curves)} curves on {len({c.openmlid for c in curves})} datasets; fitting every law on each "
          f"prefix ...", file=sys.stderr, flush=True)
    jobs = [(c.curve, args.fraction, args.margin, args.min_gain) for c in curves]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.jobs) as pool:
            rows = pool.map(_estimate_job, jobs, chunksize=8)
    else:
        rows = []
        for i, j in enumerate(jobs):
            rows.append(_estimate_job(j))
            if (i + 1) % 200 == 0:
                print(f"  {i + 1}/{len(jobs)} curves", file=sys.stderr, flush=True)
    used = [(c, r) for c, r in zip(curves, rows) if r is not None]
    selection = selection_from_tasks([r for _, r in used], quantile=args.quantile)
    cmd = "python -m estimators.prior build " + " ".join(argv)
    prov = {"source": f"LCDB (Mohr et al. 2022), {src.name}", "lcdb_version": LCDB_VERSION,
            "metric": "validation accuracy (score_valid), seeds averaged, percent",
            "n_curves": len(used), "n_datasets": len({c.openmlid for c, _ in used}),
            "fold_scheme": "none: learned on every usable curve of every dataset (held-out figures: "
                           "bench/estimators.py, folds by dataset)",
            "fit_fraction": args.fraction, "margin": args.margin, "min_gain": args.min_gain,
            "quantile": args.quantile, "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
            "command": cmd}
    if src.is_file():
        prov["source_sha256"] = _sha256(src)
    out = write_prior(prior_dict(selection, prov), args.out)
    print(f"wrote {out}: {len(used)} curves; ranking {' > '.join(selection.ranking)}; tau "
          + ", ".join(f"{k} {selection.corrections[k].tau:.2f}" for k in selection.ranking))
    return 0


def show(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m estimators.prior show")
    ap.add_argument("path", nargs="?", default=None)
    args = ap.parse_args(argv)
    p = load_prior(args.path)
    print(p.describe())
    for k in p.selection.ranking:
        c = p.correction(k)
        print(f"  {k:7s} tau {c.tau:6.2f}  median |log(n/n*)| after tau {p.selection.errors[k]:.3f}  "
              f"({c.n_curves} curves)")
    print("provenance: " + json.dumps(p.provenance, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m estimators.prior {build,show} ...``; a user error prints one line and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {"build": build, "show": show}
    if not argv or argv[0] not in cmds:
        print("usage: python -m estimators.prior {build,show} ...", file=sys.stderr)
        return 2
    try:
        return cmds[argv[0]](argv[1:])
    except EstimatorInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
