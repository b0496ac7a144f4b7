"""Cached loaders and the estimator calls behind the planner's pages.

Every number a page shows comes from here, and here from :mod:`estimators` / :mod:`actors` — the functions the
``assay`` CLI calls (``estimate_requirement``, ``plan_collection``, ``learn_distribution``, ``mine``).

Files the pages read from a workspace (all optional; a page says which command writes what is missing):

``runs/<run_id>/curve.parquet``
    A learning curve (``assay learn`` writes one per run): ``n_labeled`` (or ``n``) and ``value`` are required;
    ``round``, ``metric`` (default ``"metric"``), ``strategy`` and ``seed`` are optional. Rows with another metric
    are separate curves. A run's strategy is the ``strategy`` column, else ``strategy`` in
    ``runs/<run_id>/config.json`` (``assay learn``) or ``report.json``, else the run id.
``runs/<run_id>/report.json`` or ``runs/<run_id>/<folder>/report.json``
    A compression report (``assay compress --out WS/runs/<run_id>/compressed`` writes one): ``models`` maps each
    variant (original, compressed, compressed_int8) to ``latency_ms`` (a number or ``{"p50": …}``) and ``accuracy``
    (a number or ``{"map50": …}``) plus optional params/macs/file_bytes; the per-layer plan is ``plan.layers``
    (layer name -> fields). Also read: ``"kind": "compression"`` with a list of variants under ``variants`` /
    ``points`` / ``results`` (``name``, ``latency_ms``, ``map``) and a list under ``layers``.

Uploaded files are read from memory (bytes); their names never become paths.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from actors.core.errors import UserError

CURVE_FILE = "curve.parquet"
REPORT_FILE = "report.json"
LATENCY_KEYS = ("latency_ms", "latency")
QUALITY_KEYS = ("map", "mAP", "map50", "metric", "value")
VARIANT_KEYS = ("variants", "points", "results")
MAP50_PCT = "mAP@.5 (%)"  # how every page names the detector metric (always in percent)
LAYER_KEYS = ("layers", "per_layer", "plan")


# ----------------------------------------------------------------------------------------------- curves
@dataclass(frozen=True)
class CurvePoints:
    """A learning curve as hashable plain data (what the cached functions take)."""

    n: tuple[float, ...]
    value: tuple[float, ...]
    spread: tuple[float, ...]
    n_seeds: tuple[int, ...]
    name: str
    direction: str
    scale: str
    metric: str = "value"  # what the values are (titles and axis labels; see :func:`metric_label`)

    def curve(self):
        """The validated :class:`~estimators.curves.LearningCurve`."""
        from estimators.curves import make_curve

        return make_curve(self.n, self.value, spread=self.spread, n_seeds=self.n_seeds, name=self.name,
                          direction=self.direction, scale=self.scale)

    @classmethod
    def of(cls, c) -> "CurvePoints":
        return cls(tuple(map(float, c.n)), tuple(map(float, c.value)), tuple(map(float, c.spread)),
                   tuple(int(v) for v in c.n_seeds), c.name, c.direction, c.scale)


def read_upload(data: bytes, kind: str) -> pd.DataFrame:
    """A curve table from uploaded bytes (``kind`` ``"csv"`` or ``"parquet"``); :class:`UserError` if unreadable."""
    if not data:
        raise UserError("the uploaded file is empty")
    try:
        if kind == "csv":
            return pd.read_csv(io.BytesIO(data))
        if kind == "parquet":
            return pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001  (any parser failure is the file's fault)
        raise UserError(f"the uploaded file is not a readable {kind.upper()} table ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else 'unreadable'})") from e
    raise UserError(f"unsupported file type {kind!r}; upload a .csv or .parquet file")


def upload_kind(name: str) -> str:
    """``"csv"`` or ``"parquet"`` from an uploaded file's extension (the name is only looked at, never opened)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext == "csv":
        return "csv"
    if ext in ("parquet", "pq"):
        return "parquet"
    raise UserError(f"unsupported file type {('.' + ext) if ext else '(no extension)'}; upload a .csv or "
                    ".parquet file with columns n, value")


def curves_from_table(df: pd.DataFrame, source: str, direction: str, scale: str) -> list[CurvePoints]:
    """Validated curves (one per ``curve`` value) from a table with columns ``n``, ``value`` [, ``seed``, ``curve``]."""
    from estimators.curves import curves_from_frame

    return [CurvePoints.of(c) for c in curves_from_frame(df, source=source, direction=direction, scale=scale)]


def guess_scale(values) -> str:
    """``"fraction"`` when every value lies in [0, 1], else ``"percent"`` (a default the page lets the user change)."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    return "fraction" if len(v) and v.between(0, 1).all() else "percent"


METRIC_NAMES = {"val_map50_pct": "mAP@.5", "val_map_pct": "mAP@[.5:.95]", "map50": "mAP@.5",
                "map": "mAP@[.5:.95]"}  # curve.parquet's metric column -> the name a reader knows


def metric_label(metric: str, scale: str) -> str:
    """The axis title of a metric: its readable name and unit, e.g. ``"mAP@.5 (%)"`` for ``val_map50_pct``."""
    return f"{METRIC_NAMES.get(metric, metric)} ({'%' if scale == 'percent' else '0-1'})"


def run_label(run_id: str, strategy: str, seed=None, mtime_ns: int | None = None) -> str:
    """A run as a reader tells runs apart: strategy, seed, when it was written, and its id
    (``"entropy · seed 1 · 2025-06-01 14:02 · learn-…"``); runs of one strategy never look the same."""
    import datetime as dt

    parts = [strategy]
    if seed is not None:
        parts.append(f"seed {seed}")
    if mtime_ns:
        parts.append(dt.datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M"))
    if run_id != strategy:
        parts.append(run_id)
    return " · ".join(parts)


# ----------------------------------------------------------------------------------------------- workspace runs
def _stamp(ws, rel: str) -> tuple:
    """(mtime, size) of a workspace file, so cached reads refresh when the file changes."""
    import pyarrow.fs as pafs

    info = ws.fs.get_file_info(ws.path(rel))
    if info.type == pafs.FileType.NotFound:
        return (None, None)
    return (info.mtime_ns, info.size)


def list_runs(ws) -> list[str]:
    """Run ids (folders under ``runs/``), sorted."""
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(ws.path("runs"), allow_not_found=True)
    return sorted(i.base_name for i in ws.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)


def curve_runs(ws) -> list[str]:
    """Run ids that have a ``curve.parquet``."""
    return [r for r in list_runs(ws) if ws.exists(f"runs/{r}/{CURVE_FILE}")]


def report_files(ws) -> list[str]:
    """Workspace-relative paths of ``runs/<run_id>/report.json`` and ``runs/<run_id>/<folder>/report.json``."""
    import pyarrow.fs as pafs

    out = []
    for r in list_runs(ws):
        if ws.exists(f"runs/{r}/{REPORT_FILE}"):
            out.append(f"runs/{r}/{REPORT_FILE}")
        sel = pafs.FileSelector(ws.path(f"runs/{r}"), allow_not_found=True)
        for i in ws.fs.get_file_info(sel):
            if i.type == pafs.FileType.Directory and ws.exists(f"runs/{r}/{i.base_name}/{REPORT_FILE}"):
                out.append(f"runs/{r}/{i.base_name}/{REPORT_FILE}")
    return out


def run_curve(ws, run_id: str) -> pd.DataFrame:
    """``runs/<run_id>/curve.parquet`` normalized to columns run_id, strategy, run (:func:`run_label`), metric,
    round, n_labeled, value (+ seed when present). :class:`UserError` naming the file and field when it cannot be
    read."""
    rel = f"runs/{run_id}/{CURVE_FILE}"
    return _run_curve(ws.uri, rel, run_id, _stamp(ws, rel), _stamp(ws, f"runs/{run_id}/config.json")).copy()


@st.cache_data(show_spinner=False, max_entries=256)
def _run_curve(uri: str, rel: str, run_id: str, stamp1, stamp2) -> pd.DataFrame:
    from actors.core.workspace import Workspace

    ws = Workspace(uri)
    try:
        df = ws.read_table(rel).to_pandas()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{ws.path(rel)}: not a readable Parquet table ({type(e).__name__})") from e
    ncol = "n_labeled" if "n_labeled" in df.columns else "n" if "n" in df.columns else None
    if ncol is None or "value" not in df.columns:
        raise UserError(f"{ws.path(rel)}: needs columns 'n_labeled' (or 'n') and 'value', found {list(df.columns)}")
    out = pd.DataFrame({"n_labeled": pd.to_numeric(df[ncol], errors="coerce"),
                        "value": pd.to_numeric(df["value"], errors="coerce")})
    out["metric"] = df["metric"].astype(str) if "metric" in df.columns else "metric"
    out["round"] = (pd.to_numeric(df["round"], errors="coerce") if "round" in df.columns
                    else out["n_labeled"].rank(method="dense") - 1)
    if "seed" in df.columns:
        out["seed"] = df["seed"]
    strategy = df["strategy"].astype(str) if "strategy" in df.columns else None
    seed = None
    for name in ("config.json", REPORT_FILE):
        try:
            rep = _report(uri, f"runs/{run_id}/{name}")
        except UserError:
            continue
        if isinstance(rep, dict):
            seed = rep.get("seed") if seed is None else seed
            if strategy is None and rep.get("strategy"):
                strategy = str(rep["strategy"])
    if strategy is None:
        strategy = run_id
    first = strategy if isinstance(strategy, str) else str(strategy.iloc[0]) if len(strategy) else run_id
    out.insert(0, "run", run_label(run_id, first, seed, stamp1[0]))
    out.insert(0, "strategy", strategy)
    out.insert(0, "run_id", run_id)
    bad = out["n_labeled"].isna() | out["value"].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{ws.path(rel)}: row {i + 1}: 'n_labeled'/'value' is not a number")
    return out


def run_labels(ws, runs: list[str]) -> dict[str, str]:
    """Each run's :func:`run_label` (its id alone when its curve cannot be read: the page says why when picked)."""
    out = {}
    for r in runs:
        try:
            out[r] = str(run_curve(ws, r)["run"].iloc[0])
        except (UserError, IndexError):
            out[r] = r
    return out


def read_report(ws, rel: str) -> dict | None:
    """A workspace JSON report as a dict, None when absent; :class:`UserError` when not a JSON object."""
    if not ws.exists(rel):
        return None
    rep = _report(ws.uri, rel, _stamp(ws, rel))
    if not isinstance(rep, dict):
        raise UserError(f"{ws.path(rel)}: expected a JSON object")
    return rep


@st.cache_data(show_spinner=False, max_entries=256)
def _report(uri: str, rel: str, stamp=None):
    from actors.core.workspace import Workspace

    ws = Workspace(uri)
    if not ws.exists(rel):
        return None
    try:
        return json.loads(ws.read_bytes(rel))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{ws.path(rel)}: not valid JSON ({e})") from e


def _num(v, key: str):
    """``v`` if it is a number, ``v[key]`` if ``v`` is a dict holding a number there, else None."""
    if isinstance(v, dict):
        v = v.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def compression_view(rep: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(variants: name, latency_ms, quality, quality_field [+ params, macs, file_bytes, file]; per-layer plan) of a
    compression report, None if ``rep`` is not one (see the module docstring for the formats read). mAP is in
    percent (``quality_field`` ends in ``(%)``), also when the report stores fractions."""
    rows, layers = [], []
    if isinstance(rep.get("models"), dict):  # assay compress
        for name, m in rep["models"].items():
            if not isinstance(m, dict):
                continue
            lat, q = _num(m.get("latency_ms"), "p50"), _num(m.get("accuracy"), "map50")
            if lat is None or q is None:
                continue
            row = {"name": str(name), "latency_ms": lat, "quality": 100.0 * q, "quality_field": MAP50_PCT}
            row.update({k: m[k] for k in ("params", "macs", "file_bytes") if isinstance(m.get(k), (int, float))})
            if isinstance(m.get("file"), str):
                row["file"] = m["file"]
            rows.append(row)
        plan = rep.get("plan") if isinstance(rep.get("plan"), dict) else {}
        pl = plan.get("layers")
        if isinstance(pl, dict):
            layers = [{"layer": k, **v} for k, v in pl.items() if isinstance(v, dict)]
        elif isinstance(pl, list):
            layers = [r for r in pl if isinstance(r, dict)]
    else:
        variants = next((rep[k] for k in VARIANT_KEYS if isinstance(rep.get(k), list)), None)
        if rep.get("kind") != "compression" and variants is None:
            return None
        for i, v in enumerate(variants or []):
            if not isinstance(v, dict):
                continue
            lat = next((_num(v[k], "p50") for k in LATENCY_KEYS if _num(v.get(k), "p50") is not None), None)
            q = next(((k, _num(v[k], "map50")) for k in QUALITY_KEYS if _num(v.get(k), "map50") is not None),
                     (None, None))
            if lat is None or q[1] is None:
                continue
            rows.append({"name": str(v.get("name", f"variant {i + 1}")), "latency_ms": lat, "quality": q[1],
                         "quality_field": q[0]})
        layers = next(([r for r in rep[k] if isinstance(r, dict)] for k in LAYER_KEYS
                       if isinstance(rep.get(k), list)), [])
        _as_percent(rows)
    cols = ["name", "latency_ms", "quality", "quality_field"]
    return pd.DataFrame(rows).reindex(columns=cols + [c for c in ("params", "macs", "file_bytes", "file")
                                                      if any(c in r for r in rows)]), pd.DataFrame(layers)


def _as_percent(rows: list[dict]) -> None:
    """mAP-like qualities given as fractions (every value in [0, 1]) become percent, labelled ``(%)``: the
    planner shows mAP in percent on every page."""
    fields = {r["quality_field"] for r in rows}
    if len(fields) != 1 or not str(next(iter(fields))).lower().startswith("map"):
        return
    if all(0.0 <= r["quality"] <= 1.0 for r in rows):
        field = next(iter(fields))
        for r in rows:
            r["quality"], r["quality_field"] = 100.0 * r["quality"], f"{field} (%)"


# ----------------------------------------------------------------------------------------------- estimators
def default_selection():
    """The shipped prior's law selection and a line describing it, or ``(None, why)`` when no prior is available.

    Without a prior, estimates use the CLI's default: ``law="auto"`` chosen on held-back points and τ = 1.
    """
    try:
        from estimators.prior import load_prior
    except ImportError:
        return None, "no shipped prior in this version: law chosen on held-back points, τ = 1 (the CLI default)"
    try:
        prior = load_prior()
    except (ValueError, OSError) as e:
        return None, f"no shipped prior ({str(e)[:160]}): law chosen on held-back points, τ = 1 (the CLI default)"
    return prior.selection, prior.describe()


@st.cache_data(show_spinner=False, max_entries=64)
def requirement(points: CurvePoints, target: float, level: float = 0.8, n_boot: int = 200, seed: int = 0,
                law: str = "auto") -> dict:
    """:func:`estimators.requirement.estimate_requirement` on the curve, with the shipped prior when present.

    Returns the result's ``to_dict()`` plus ``prior`` (a line saying which default was used)."""
    from estimators.requirement import Correction, estimate_requirement

    selection, why = default_selection()
    corr = None if selection is not None else Correction(tau=1.0)
    res = estimate_requirement(points.curve(), target, law=law, n_boot=n_boot, level=level, correction=corr,
                               seed=seed, selection=selection, prior=why if selection is not None else None)
    out = res.to_dict()
    out["default"] = why
    return out


@st.cache_data(show_spinner=False, max_entries=256)
def law_requirement(points: CurvePoints, target: float, law: str, level: float = 0.8, n_boot: int = 100,
                    seed: int = 0) -> dict | None:
    """:func:`requirement` with one named law (its own τ from the prior, as ``assay estimate --law LAW``); None when
    that law cannot fit the curve."""
    from estimators.errors import EstimatorInputError

    try:
        return requirement(points, target, level=level, n_boot=n_boot, seed=seed, law=law)
    except EstimatorInputError:
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def fitted_lines(points: CurvePoints, x_max: float, n_grid: int = 120) -> pd.DataFrame:
    """Each law's fit evaluated on a log grid from the smallest size to ``x_max``: columns law, n, value (curve
    units). Laws that cannot fit this curve are left out."""
    from estimators.laws import get_law, list_laws

    c = points.curve()
    grid = np.geomspace(c.n[0], max(x_max, c.n[-1] * 1.01), n_grid)
    frames = []
    for name in list_laws():
        try:
            law = get_law(name).fit(c.n, c.score())
        except ValueError:
            continue
        frames.append(pd.DataFrame({"law": name, "n": grid, "value": c.from_score(law.predict(grid))}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["law", "n", "value"])


@st.cache_data(show_spinner=False, max_entries=64)
def bootstrap_band(points: CurvePoints, law: str, x_max: float, level: float = 0.8, n_boot: int = 60, seed: int = 0,
                   n_grid: int = 80) -> pd.DataFrame:
    """The ``level`` band of ``law``'s fitted curve over wild-residual bootstrap resamples (the resampling
    :func:`estimators.requirement.bootstrap_required_n` uses), on a log grid to ``x_max``: columns n, lo, hi (curve
    units). Display only: the required-n interval comes from ``estimate_requirement``."""
    from estimators.requirement import bootstrap_curves

    c = points.curve()
    grid = np.geomspace(c.n[0], max(x_max, c.n[-1] * 1.01), n_grid)
    preds = bootstrap_curves(c.n, c.score(), grid, law=law, n_boot=n_boot, seed=seed)
    if not len(preds):
        return pd.DataFrame(columns=["n", "lo", "hi"])
    a = (1 - level) / 2
    lo, hi = np.quantile(preds, [a, 1 - a], axis=0)
    lo, hi = c.from_score(lo), c.from_score(hi)
    return pd.DataFrame({"n": grid, "lo": np.minimum(lo, hi), "hi": np.maximum(lo, hi)})


@st.cache_data(show_spinner=False, max_entries=64)
def collection_plan(points: CurvePoints, target: float, sources: tuple[tuple[str, float, float, float], ...],
                    penalty: float | None, risk: float | None, rounds: int, max_total: float | None,
                    law: str = "power", n_boot: int = 200, seed: int = 0) -> dict:
    """The LOC plan (:func:`estimators.loc.plan_collection`, as ``assay plan``) beside the naive estimate's plan.

    ``sources`` are ``(name, cost per sample, value, available)``; one source is the CLI's ``--cost``. The naive
    plan collects the uncorrected point estimate of ``law`` (:func:`estimate_requirement` with τ = 1) in round 1;
    its risk is ``1 − F(total)`` under the same requirement distribution F that LOC optimizes against
    (:func:`estimators.loc.learn_distribution`, same bootstrap, seed and calibration).

    Returns ``{"loc": plan dict + "risk_after" per round, "naive": {...}, "default": line about the prior}``;
    ``naive`` is None when the plan's status is ``"worse"`` (the curve falls with more data: nothing is planned).
    """
    from estimators.loc import Source, cumulative_cost, learn_distribution, plan_collection
    from estimators.requirement import Correction, estimate_requirement

    c = points.curve()
    srcs = [Source(name, cost, value, available) for name, cost, value, available in sources]
    multi = len(srcs) > 1
    cost = srcs[0].cost if srcs else 1.0
    selection, why = default_selection()
    corr = selection.corrections.get(law) if selection is not None else None
    plan = plan_collection(c, target, cost, penalty, rounds, risk=risk, max_total=max_total, law=law,
                           n_boot=n_boot, seed=seed, sources=srcs if multi else None, correction=corr)
    why_default = why if selection is not None else ("no shipped prior: F is the plain bootstrap + KDE (the CLI "
                                                     "default without --past)")
    if getattr(plan, "status", "plan") == "worse":  # nothing is planned; the note says why (e.g. --direction)
        loc = plan.to_dict()
        loc["risk_after"] = [1.0] * len(plan.totals)
        return {"loc": loc, "naive": None, "default": why_default}
    t = c.score_target(target)
    spread = c.spread / np.sqrt(np.maximum(c.n_seeds, 1)) if np.any(c.spread > 0) else None
    dist = learn_distribution(c.n, c.score(), t, law=law, n_boot=n_boot, spread=spread, seed=seed, correction=corr)
    loc = plan.to_dict()
    loc["risk_after"] = [float(1.0 - dist.cdf(q)) for q in plan.totals]
    naive_est = estimate_requirement(c, target, law=law, n_boot=n_boot, correction=Correction(tau=1.0), seed=seed)
    n0 = float(c.n[-1])
    naive_n = naive_est.required_n
    cap = plan.max_total
    total = min(naive_n, cap) if math.isfinite(naive_n) else cap
    extra = max(total - n0, 0.0)
    spend = float(cumulative_cost(srcs, np.array([extra]))[0]) if multi else cost * extra
    naive_risk = float(1.0 - dist.cdf(total)) if total > n0 else 1.0
    naive = {"law": law, "estimate": naive_n if math.isfinite(naive_n) else None, "status": naive_est.status,
             "total": total, "amount": extra, "collection_cost": spend, "risk": naive_risk,
             "expected_cost": spend + (penalty or 0.0) * naive_risk if penalty is not None else spend,
             "capped": bool(not math.isfinite(naive_n) or naive_n > cap)}
    return {"loc": loc, "naive": naive, "default": why_default}
