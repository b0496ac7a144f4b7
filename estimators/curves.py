"""Learning curves: a validated (n, value) type, file readers, and seed aggregation.

A learning curve is a handful of ``(n, value)`` points measured by training on nested subsets of the data a team
already has. ``value`` is either a score (higher is better, e.g. mAP or accuracy) or an error (lower is better), on a
percent scale ``[0, 100]`` or a fraction scale ``[0, 1]``. The estimators in :mod:`estimators.laws` model an
increasing *score in percent*; :meth:`LearningCurve.score` gives that view of any curve and
:meth:`LearningCurve.score_target` converts a target the same way.

Degenerate input never reaches a fit: :func:`make_curve` raises :class:`CurveError` (a ``ValueError``) naming the
source, the row and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from estimators.errors import EstimatorInputError

Direction = Literal["higher", "lower"]
Scale = Literal["percent", "fraction"]

MIN_SIZES = 3
SCALE_MAX = {"percent": 100.0, "fraction": 1.0}


class CurveError(EstimatorInputError):
    """A learning curve that cannot be fitted (too few sizes, NaN, duplicates, out-of-range values, ...)."""


@dataclass(frozen=True)
class LearningCurve:
    """A validated learning curve. Build it with :func:`make_curve` or the readers, not directly.

    Attributes
    ----------
    n : ndarray of shape (m,)
        Training-set sizes, strictly increasing, > 0.
    value : ndarray of shape (m,)
        Metric at each size (mean over seeds), in the curve's ``scale`` and ``direction``.
    spread : ndarray of shape (m,)
        Standard deviation over seeds at each size (0 where a size has a single seed).
    n_seeds : ndarray of shape (m,)
        Number of seeds averaged at each size.
    name : str
        Curve name (the ``curve`` column, or ``"curve"``).
    direction : {"higher", "lower"}
        ``"higher"``: a score; ``"lower"``: an error.
    scale : {"percent", "fraction"}
        Values lie in ``[0, 100]`` or ``[0, 1]``.
    """

    n: np.ndarray
    value: np.ndarray
    spread: np.ndarray
    n_seeds: np.ndarray
    name: str = "curve"
    direction: Direction = "higher"
    scale: Scale = "percent"
    source: str = field(default="<memory>", compare=False)

    def __len__(self) -> int:
        return len(self.n)

    def score(self) -> np.ndarray:
        """The curve as an increasing-is-better score in percent, shape (m,)."""
        return self.score_target(self.value)

    def score_target(self, target):
        """Convert a target (or array) from the curve's metric units to score percent."""
        v = np.asarray(target, dtype=float) * (100.0 / SCALE_MAX[self.scale])
        v = v if self.direction == "higher" else 100.0 - v
        return float(v) if v.ndim == 0 else v

    def from_score(self, score):
        """Inverse of :meth:`score_target`: score percent back to the curve's metric units."""
        v = np.asarray(score, dtype=float)
        v = v if self.direction == "higher" else 100.0 - v
        v = v * (SCALE_MAX[self.scale] / 100.0)
        return float(v) if v.ndim == 0 else v

    def head(self, max_n: float) -> "LearningCurve":
        """The points with ``n <= max_n`` (raises :class:`CurveError` if fewer than 3 remain)."""
        keep = self.n <= max_n
        return make_curve(self.n[keep], self.value[keep], spread=self.spread[keep], n_seeds=self.n_seeds[keep],
                          name=self.name, direction=self.direction, scale=self.scale, source=self.source)


def make_curve(n, value, *, spread=None, n_seeds=None, name: str = "curve", direction: Direction = "higher",
               scale: Scale = "percent", source: str = "<memory>", rows=None) -> LearningCurve:
    """Validate points and build a :class:`LearningCurve` (points are sorted by ``n``).

    Parameters
    ----------
    n, value : array-like of shape (m,)
        Sizes (> 0, distinct) and metric values (finite, inside the scale's range).
    spread, n_seeds : array-like of shape (m,), optional
        Per-size standard deviation over seeds and number of seeds (defaults 0 and 1).
    rows : array-like of shape (m,), optional
        Row numbers in the source file, used in error messages.

    Raises
    ------
    CurveError
        Fewer than 3 sizes, NaN/inf, n <= 0, duplicate n, all values equal, values outside the scale's range,
        unknown direction/scale, or mismatched lengths.
    """
    where = f"{source}: curve {name!r}"
    if direction not in ("higher", "lower"):
        raise CurveError(f"{where}: direction must be 'higher' or 'lower', got {direction!r}")
    if scale not in SCALE_MAX:
        raise CurveError(f"{where}: scale must be 'percent' or 'fraction', got {scale!r}")
    n = np.asarray(n, dtype=float).ravel()
    value = np.asarray(value, dtype=float).ravel()
    rows = np.arange(1, len(n) + 1) if rows is None else np.asarray(rows)
    if len(n) != len(value):
        raise CurveError(f"{where}: n has {len(n)} entries but value has {len(value)}")
    _check_points(n, value, rows, where, scale)
    order = np.argsort(n, kind="stable")
    n, value, rows = n[order], value[order], rows[order]
    dup = np.flatnonzero(np.diff(n) == 0)
    if len(dup):
        raise CurveError(f"{where}: rows {rows[dup[0]]} and {rows[dup[0] + 1]}: duplicate n={n[dup[0]]:g} "
                         "(give a 'seed' column to average repeated runs)")
    if len(n) < MIN_SIZES:
        raise CurveError(f"{where}: {len(n)} distinct size(s); need at least {MIN_SIZES} to fit a learning curve")
    if np.ptp(value) == 0:
        raise CurveError(f"{where}: all {len(n)} values equal {value[0]:g}; a flat curve has no trend to fit")
    spread = np.zeros_like(n) if spread is None else np.asarray(spread, dtype=float).ravel()[order]
    n_seeds = np.ones(len(n), dtype=int) if n_seeds is None else np.asarray(n_seeds).ravel()[order]
    return LearningCurve(n=n, value=value, spread=spread, n_seeds=n_seeds, name=str(name), direction=direction,
                         scale=scale, source=source)


def _check_points(n, value, rows, where, scale) -> None:
    for fld, arr in (("n", n), ("value", value)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise CurveError(f"{where}: row {rows[bad[0]]}: field {fld!r} is {arr[bad[0]]} (must be finite)")
    bad = np.flatnonzero(n <= 0)
    if len(bad):
        raise CurveError(f"{where}: row {rows[bad[0]]}: field 'n' is {n[bad[0]]:g} (must be > 0)")
    hi = SCALE_MAX[scale]
    bad = np.flatnonzero((value < 0) | (value > hi))
    if len(bad):
        raise CurveError(f"{where}: row {rows[bad[0]]}: field 'value' is {value[bad[0]]:g}, outside the "
                         f"{scale} range [0, {hi:g}] (pass scale='fraction'/'percent' to match the file)")


def curves_from_frame(df, *, source: str = "<frame>", direction: Direction = "higher",
                      scale: Scale = "percent") -> list[LearningCurve]:
    """Build curves from a table with columns ``n``, ``value`` and optional ``seed`` and ``curve``.

    Repeated seeds at one size are averaged (mean, with their standard deviation as ``spread``). Returns one curve
    per distinct ``curve`` value, in order of first appearance.

    Raises
    ------
    CurveError
        A missing column, a duplicate ``(curve, seed, n)`` row, or any degenerate curve (see :func:`make_curve`).
    """
    import pandas as pd

    missing = [c for c in ("n", "value") if c not in df.columns]
    if missing:
        raise CurveError(f"{source}: missing column(s) {missing}; expected 'n', 'value' and optional 'seed', "
                         f"'curve' (found {list(df.columns)})")
    df = df.reset_index(drop=True).copy()
    df["_row"] = np.arange(2, len(df) + 2) if source.endswith(".csv") else np.arange(1, len(df) + 1)
    if len(df) == 0:
        raise CurveError(f"{source}: no rows")
    for col in ("n", "value"):
        conv = pd.to_numeric(df[col], errors="coerce")
        bad = conv.isna() & df[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise CurveError(f"{source}: row {df['_row'][i]}: field {col!r} is {df[col][i]!r} (not a number)")
        df[col] = conv.astype(float)
    if "curve" not in df.columns:
        df["curve"] = "curve"
    out = []
    for name, g in df.groupby("curve", sort=False):
        out.append(_curve_from_group(g, str(name), source, direction, scale))
    return out


def _curve_from_group(g, name, source, direction, scale) -> LearningCurve:
    if "seed" not in g.columns:
        return make_curve(g["n"], g["value"], name=name, direction=direction, scale=scale, source=source,
                          rows=g["_row"].to_numpy())
    dup = g.duplicated(["n", "seed"], keep="first").to_numpy()
    if dup.any():
        r = g.iloc[int(np.flatnonzero(dup)[0])]
        raise CurveError(f"{source}: curve {name!r}: row {r['_row']}: duplicate (n={r['n']:g}, seed={r['seed']})")
    # validate raw rows before averaging so the error names the offending row
    _check_points(g["n"].to_numpy(), g["value"].to_numpy(), g["_row"].to_numpy(), f"{source}: curve {name!r}", scale)
    agg = g.groupby("n", sort=True).agg(value=("value", "mean"), spread=("value", "std"),
                                         n_seeds=("value", "size"), row=("_row", "first"))
    return make_curve(agg.index.to_numpy(), agg["value"], spread=agg["spread"].fillna(0.0), n_seeds=agg["n_seeds"],
                      name=name, direction=direction, scale=scale, source=source, rows=agg["row"].to_numpy())


def read_curves(path, *, direction: Direction = "higher", scale: Scale = "percent") -> list[LearningCurve]:
    """Read one or more learning curves from a CSV, Parquet or JSON file.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.parquet``/``.pq`` or ``.json``. JSON is a list of row objects, an object of columns, or an
        object with a ``"points"`` list. Columns: ``n``, ``value``, optional ``seed`` and ``curve``.
    direction, scale
        How to read ``value`` (see :class:`LearningCurve`).

    Returns
    -------
    list of LearningCurve
        One per distinct ``curve`` value.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CurveError
        Unknown extension, unreadable content, or a degenerate curve (the message names file, row and field).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such curve file")
    ext = path.suffix.lower()
    try:
        if ext == ".csv":
            df = pd.read_csv(path)
        elif ext in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif ext == ".json":
            df = _read_json(path)
        else:
            raise CurveError(f"{path}: unknown curve file type {ext!r}; use .csv, .parquet or .json")
    except CurveError:
        raise
    except Exception as e:  # parser errors of every flavour become one user error
        raise CurveError(f"{path}: cannot read curve file: {e}") from e
    return curves_from_frame(df, source=str(path), direction=direction, scale=scale)


def _read_json(path: Path):
    import json

    import pandas as pd

    obj = json.loads(path.read_text())
    if isinstance(obj, dict) and "points" in obj:
        obj = obj["points"]
    if isinstance(obj, dict) and not all(isinstance(v, list) for v in obj.values()):
        raise CurveError(f"{path}: JSON must be a list of rows, an object of columns, or {{'points': [...]}}")
    return pd.DataFrame(obj)


def interpolate_curve(curve: LearningCurve, n) -> np.ndarray:
    """Score percent at sizes ``n`` by linear interpolation in log n (clamped at both ends), shape like ``n``."""
    return np.interp(np.log(np.asarray(n, dtype=float)), np.log(curve.n), curve.score())


def true_required_n(curve: LearningCurve, score_target: float) -> float:
    """Smallest n at which the log-n-interpolated curve first reaches ``score_target`` (percent); inf if never."""
    s = curve.score()
    hit = np.flatnonzero(s >= score_target)
    if len(hit) == 0:
        return float("inf")
    i = int(hit[0])
    if i == 0:
        return float(curve.n[0])
    x0, x1, y0, y1 = np.log(curve.n[i - 1]), np.log(curve.n[i]), s[i - 1], s[i]
    return float(np.exp(x0 + (score_target - y0) / (y1 - y0) * (x1 - x0)))
