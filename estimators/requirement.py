"""How much data is needed for one curve: the bootstrap interval, the estimate and what kind of answer it is.

Everything here works on the *score percent* view of a curve (see :mod:`estimators.curves`); public entry points
that take a :class:`~estimators.curves.LearningCurve` take targets in the curve's own units and convert. What past
curves teach (law ranking, the correction factor τ) lives in :mod:`estimators.past`, and the shipped prior learned on
LCDB in :mod:`estimators.prior`; their names are re-exported here.

:func:`estimate_requirement` answers with a ``status``:

``estimate``     a finite requirement with a closed interval;
``open``         a finite requirement whose interval has no upper end: the fitted law levels off below the target
                 (or its estimate is unusable) but bootstrap fits inside the interval reach it;
``unreachable``  the bootstrap interval excludes the target: none of its fits reaches it;
``reached``      the largest measured size already meets the target (the size where it was first met is reported);
``worse``        the curve gets worse with more data in the stated direction (a wrong ``direction`` is the usual
                 cause); no estimate is made.

No answer is ever below the smallest measured size: a law that reads the target below the data is not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from estimators.curves import LearningCurve, true_required_n
from estimators.errors import EstimatorInputError
from estimators.laws import PAPER_LAWS, get_law, list_laws
from estimators.past import (  # noqa: F401  (re-exported: the past-curve API lived here)
    Correction,
    Selection,
    Task,
    correction_from_estimates,
    corrected_error,
    learn_correction,
    learn_selection,
    make_task,
    point_estimate,
    select_law,
    selection_from_estimates,
)
from estimators.profile import log_profile, log_required_n, power_profile, power_required_n

STATUSES = ("estimate", "open", "unreachable", "reached", "worse")
__all__ = ["STATUSES", "Correction", "EstimatePolicy", "RequirementResult", "RoundsResult", "Selection", "Task",
           "bootstrap_required_n", "correction_from_estimates", "corrected_error", "estimate_requirement",
           "gets_worse", "interval", "learn_correction", "learn_selection", "make_task", "multi_round",
           "point_estimate", "select_law", "selection_from_estimates", "worse_message"]


# ----------------------------------------------------------------------------------------------- bootstrap
def _wild_residuals(n: np.ndarray, y: np.ndarray, law: str):
    """The full fit of ``law``, its fitted values at the fit sizes, and the residuals inflated by sqrt(m / (m − k))
    for k fitted parameters: what a wild-residual bootstrap resamples around."""
    base = get_law(law).fit(n, y)
    m, k = len(n), len(base.p_)
    y_hat = base.predict(base.n_fit_)
    return base, y_hat, (base.y_fit_ - y_hat) * math.sqrt(m / max(m - k, 1))


def bootstrap_required_n(n, y, target: float, *, law: str = "power", n_boot: int = 200, method: str = "residual",
                         spread=None, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the required size for ``target`` (score percent).

    Parameters
    ----------
    n, y : array-like of shape (m,)
        The curve (sizes, score percent).
    method : {"residual", "pairs"}
        ``"residual"``: wild bootstrap, ``y* = y_hat + r·v`` with Rademacher ``v`` and residuals ``r`` inflated by
        sqrt(m / (m − k)) for k fitted parameters, plus per-point seed noise ``spread`` when given;
        ``"pairs"``: resample the points with replacement (the NeurIPS'22 recipe; redrawn until 3 sizes remain).
    spread : array-like of shape (m,), optional
        Standard error of each point (e.g. seed std / sqrt(seeds)).

    Returns
    -------
    ndarray of shape (n_boot,)
        Required sizes; ``inf`` where a resample's fitted curve never reaches the target.
    """
    n, y = np.asarray(n, float), np.asarray(y, float)
    if method not in ("residual", "pairs"):
        raise ValueError(f"method must be 'residual' or 'pairs', got {method!r}")
    rng = np.random.default_rng(seed)
    base, y_hat, r = _wild_residuals(n, y, law)
    m = len(n)
    sd = np.zeros(m) if spread is None else np.asarray(spread, float)[np.argsort(n)]
    if law in ("power", "log") and method == "residual":  # vectorized variable projection: all resamples at once
        ys = y_hat + r * rng.choice((-1.0, 1.0), size=(n_boot, m)) + sd * rng.standard_normal((n_boot, m))
        w = np.arange(1, m + 1) / m if base.weights == "linear" else np.ones(m)
        profile, solve = (power_profile, power_required_n) if law == "power" else (log_profile, log_required_n)
        a, b_, c = profile(base.n_fit_ / base.scale_, ys, w)
        return solve(a, b_, c, base.scale_, target, lo=min(1.0, float(base.n_fit_[0])))
    out = np.empty(n_boot)
    est = get_law(law, max_nfev=50)  # warm-started from the full fit: a short budget suffices
    for b in range(n_boot):
        if method == "residual":
            ys = y_hat + r * rng.choice((-1.0, 1.0), size=m) + sd * rng.standard_normal(m)
            ns = base.n_fit_
        else:
            idx = rng.integers(0, m, size=m)
            while len(np.unique(idx)) < 3:
                idx = rng.integers(0, m, size=m)
            idx = np.unique(idx)  # duplicate sizes add weight only; keep the distinct points
            ns, ys = base.n_fit_[idx], base.y_fit_[idx]
        try:
            out[b] = est.fit(ns, ys, init=base.p_).required_n(target)
        except ValueError:  # a resample that is flat
            out[b] = math.inf
    return out


def bootstrap_curves(n, y, grid, *, law: str = "power", n_boot: int = 60, seed: int = 0) -> np.ndarray:
    """The fitted curve of ``law`` on ``grid`` (score percent) for each wild-residual bootstrap resample: the same
    resampling as :func:`bootstrap_required_n` (``method="residual"``, no seed noise), for drawing a band.

    Returns
    -------
    ndarray of shape (b, len(grid))
        One row per resample whose fit converged (``b <= n_boot``; 0 rows when none did).
    """
    n, y = np.asarray(n, float), np.asarray(y, float)
    grid = np.asarray(grid, float)
    rng = np.random.default_rng(seed)
    base, y_hat, r = _wild_residuals(n, y, law)
    m = len(n)
    est = get_law(law, max_nfev=50)  # warm-started from the full fit, as in bootstrap_required_n
    rows = []
    for _ in range(n_boot):
        ys = y_hat + r * rng.choice((-1.0, 1.0), size=m)
        try:
            rows.append(est.fit(base.n_fit_, ys, init=base.p_).predict(grid))
        except ValueError:  # a resample that is flat
            continue
    return np.array(rows).reshape(len(rows), len(grid))


def interval(draws: np.ndarray, level: float = 0.8) -> tuple[float, float, float]:
    """``(median, low, high)`` percentile interval of bootstrap draws (inf draws count as +inf)."""
    a = (1 - level) / 2
    q = np.quantile(np.asarray(draws, float), [0.5, a, 1 - a], method="inverted_cdf")
    return float(q[0]), float(q[1]), float(q[2])


# ----------------------------------------------------------------------------------------------- one estimate
@dataclass
class RequirementResult:
    """The required training-set size for one curve. Sizes are totals (samples); inf (None in JSON) when none.

    ``status`` is one of :data:`STATUSES` (see the module docstring); ``interval[1]`` is inf when the upper end is
    open; ``reason`` says in words why the answer is not a plain estimate.
    """

    curve: str
    target: float
    law: str
    required_n: float
    interval: tuple[float, float]
    level: float
    current_n: float
    additional_n: float
    status: str = "estimate"
    reason: str | None = None
    tau: float = 1.0
    bracket: tuple[float, float] = (math.nan, math.nan)
    per_law: list[dict] = field(default_factory=list)
    selection_error: dict[str, float] = field(default_factory=dict)
    prior: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; infinite sizes become None."""
        d = asdict(self)
        fin = lambda v: float(v) if v is not None and math.isfinite(v) else None  # noqa: E731
        d["required_n"], d["additional_n"] = fin(self.required_n), fin(self.additional_n)
        d["interval"] = [fin(v) for v in self.interval]
        d["bracket"] = [fin(v) for v in self.bracket]
        for row in d["per_law"]:
            row["required_n"] = fin(row["required_n"])
        d["selection_error"] = {k: fin(v) for k, v in self.selection_error.items()}
        return d


def _fit_laws(n, y, t: float) -> tuple[list[dict], dict[str, str]]:
    """Every registered law fitted to ``(n, y)`` and solved for ``t``: per-law rows and the laws that cannot fit.

    The last few answers are kept (the fits are deterministic), so asking the same curve again — with another
    selection, level or seed — does not refit every law."""
    key = (np.asarray(n, float).tobytes(), np.asarray(y, float).tobytes(), float(t), tuple(list_laws()))
    if key not in _FITS:
        if len(_FITS) >= 16:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = _fit_laws_uncached(n, y, t)
    rows, failed = _FITS[key]
    return [{**r, "params": dict(r["params"])} for r in rows], dict(failed)


_FITS: dict = {}


def _fit_laws_uncached(n, y, t: float) -> tuple[list[dict], dict[str, str]]:
    rows, failed = [], {}
    for name in list_laws():
        try:
            est = get_law(name).fit(n, y)
        except ValueError as e:  # a law whose domain excludes this curve (e.g. m4 with 100% error) is skipped
            failed[name] = f"{name} cannot fit this curve: {e}"
            rows.append({"law": name, "required_n": math.inf, "reason": failed[name], "rmse": math.nan,
                         "params": {}})
            continue
        n_req, why = est.solve_required_n(t)
        if why is None and n_req < n[0]:
            why = (f"{name} reads the target below the smallest measured size (n={n[0]:g}) although no measured "
                   "point reaches it; not used")
        elif why is None and n_req <= n[-1]:
            why = f"{name} puts the target within the measured sizes although the largest (n={n[-1]:g}) misses it"
        rows.append({"law": name, "required_n": n_req, "reason": why, "rmse": est.rmse_, "params": est.params_})
    return rows, failed


def worse_message(curve: LearningCurve) -> str:
    """The message for a curve that gets worse with more data, with the ``--direction`` that would fit."""
    other = "lower" if curve.direction == "higher" else "higher"
    kind = "an error or a loss" if other == "lower" else "a score such as accuracy or mAP"
    return (f"curve {curve.name!r} gets worse with more data under --direction {curve.direction} "
            f"({curve.value[0]:g} at n={curve.n[0]:g}, {curve.value[-1]:g} at n={curve.n[-1]:g}), so no law can "
            f"say how much more data reaches the target; if {other} values are better for this metric ({kind}), "
            f"pass --direction {other}")


def gets_worse(n, y) -> bool:
    """The measured curve falls with more data: it ends below where it starts and its rank correlation with n is
    below −0.5 (for 3 points: strictly falling)."""
    if y[-1] >= y[0]:
        return False
    rn = np.argsort(np.argsort(n)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rn, ry)[0, 1]) < -0.5


def _choose_law(law, selection, n, y, rows, failed) -> tuple[str, dict, str | None]:
    """The law that carries the answer, its selection errors, and a fallback note."""
    sel_err, note = {}, None
    if law == "holdout" or (law == "auto" and selection is None):
        law, sel_err = select_law(n, y)
    elif law == "auto":
        best = replace(selection, how="best")  # one law carries the interval and the per-law table
        _, law, note = best.combine({r["law"]: r["required_n"] for r in rows if r["law"] in selection.ranking},
                                    float(n[-1]))
        sel_err = dict(selection.errors)
        if law in failed:  # nothing usable and the best-ranked law cannot fit: report the best law that can
            law = next((k for k in selection.ranking if k not in failed), law)
    if law not in list_laws():
        raise EstimatorInputError(f"unknown law {law!r}; choose from auto, holdout, {', '.join(list_laws())}")
    return law, sel_err, note


def estimate_requirement(curve: LearningCurve, target: float, *, law: str = "auto", n_boot: int = 200,
                         level: float = 0.8, correction: Correction | None = None, method: str = "residual",
                         seed: int = 0, selection: Selection | None = None,
                         prior: str | None = None) -> RequirementResult:
    """Estimate the total size at which ``curve`` reaches ``target``, with a bootstrap interval and a per-law table.

    Parameters
    ----------
    curve : LearningCurve
    target : float
        In the curve's units (score or error, percent or fraction).
    law : str
        A registered law; ``"auto"``: with a ``selection``, the best-ranked law whose estimate is finite and above
        the current size, corrected by its own τ (unusable estimates fall back to the next law); without one, like
        ``"holdout"``: the law with the smallest error on the held-back largest points (:func:`select_law`).
    correction : Correction, optional
        Learned τ applied to the estimate and the interval (overrides the selection's τ).
    selection : Selection, optional
        Laws ranked on past curves (:func:`learn_selection`) or the shipped prior (:mod:`estimators.prior`).
    prior : str, optional
        Where ``selection`` came from, copied to the result for the output.

    Returns
    -------
    RequirementResult
        See the module docstring for ``status``. ``required_n`` is inf for ``unreachable`` and ``worse``.

    Raises
    ------
    EstimatorInputError
        Unknown law, a law that cannot fit this curve asked for by name, or a target outside the metric's range.
    """
    t = curve.score_target(target)
    if not 0 <= t <= 100:
        raise EstimatorInputError(f"target {target:g} is outside the {curve.scale} range of curve {curve.name!r}")
    n, y = curve.n, curve.score()
    n0 = float(n[-1])
    rows, failed = _fit_laws(n, y, t)
    law, sel_err, note = _choose_law(law, selection, n, y, rows, failed)
    if law in failed:
        raise EstimatorInputError(f"curve {curve.name!r}: {failed[law]}")
    if correction is None and selection is not None and law in selection.corrections:
        correction = selection.corrections[law]
    corr = correction or Correction(tau=1.0)
    paper = [r["required_n"] for r in rows if r["law"] in PAPER_LAWS]
    base = dict(curve=curve.name, target=float(target), law=law, level=level, current_n=n0, tau=corr.tau,
                bracket=(float(min(paper)), float(max(paper))), per_law=rows, selection_error=sel_err, prior=prior)
    if y[-1] >= t:
        hit = max(true_required_n(curve, t), float(n[0]))
        return RequirementResult(required_n=hit, interval=(hit, hit), additional_n=0.0, status="reached",
                                 reason=f"target already reached within the measured sizes (first at n ≈ {hit:,.0f})",
                                 **base)
    if gets_worse(n, y):
        return RequirementResult(required_n=math.inf, interval=(math.inf, math.inf), additional_n=math.inf,
                                 status="worse", reason=worse_message(curve), **base)
    point = next(r["required_n"] for r in rows if r["law"] == law)
    spread = curve.spread / np.sqrt(np.maximum(curve.n_seeds, 1)) if np.any(curve.spread > 0) else None
    draws = bootstrap_required_n(n, y, t, law=law, n_boot=n_boot, method=method, spread=spread, seed=seed)
    req, (lo, hi), status, why = _answer(point, np.maximum(draws, n0), n0, corr, level, law, t)
    reasons = [v for v in (note, why, next(r["reason"] for r in rows if r["law"] == law)) if v]
    return RequirementResult(required_n=req, interval=(lo, hi), additional_n=max(req - n0, 0.0), status=status,
                             reason="; ".join(reasons) or None, **base)


def _answer(point, draws, n0, corr, level, law, t) -> tuple[float, tuple[float, float], str, str | None]:
    """Point, interval, status and note from the chosen law's estimate and its bootstrap draws (clipped at n0)."""
    _, lo, hi = interval(draws, level)
    fix = lambda v: float(corr.apply(v, n0))  # noqa: E731  (τ on the additional data; inf stays inf)
    lo_c, hi_c = fix(lo), fix(hi)
    usable = math.isfinite(point) and point > n0 * (1 + 1e-9)
    if usable:
        req = fix(point)
        if math.isfinite(hi_c):
            return req, (min(lo_c, req), max(hi_c, req)), "estimate", None
        return req, (min(lo_c, req), math.inf), "open", (
            f"the interval has no upper end: some bootstrap fits of {law} never reach {t:.4g}")
    if not math.isfinite(lo_c):
        share = float(np.mean(np.isfinite(draws)))
        return math.inf, (math.inf, math.inf), "unreachable", (
            f"unreachable: the {level:.0%} bootstrap interval excludes the target (only {share:.0%} of the "
            f"{law} fits reach {t:.4g})")
    fin = draws[np.isfinite(draws)]
    req = fix(float(np.median(fin)))
    if math.isfinite(hi_c):
        return req, (lo_c, max(hi_c, req)), "estimate", (
            f"the {law} fit puts the target at or below the current size although the largest measured point misses "
            f"it (a noisy curve near the target); estimate = the median of its bootstrap fits, at least n0")
    return req, (lo_c, math.inf), "open", (
        f"the {law} fit does not reach {t:.4g} above the current size, but {len(fin) / len(draws):.0%} of its "
        f"bootstrap fits do: estimate (their median) with an open upper bound")


# ----------------------------------------------------------------------------------------------- multi-round
@dataclass
class EstimatePolicy:
    """Collect up to the (τ-corrected) point estimate each round; collect to the cap when it is unreachable."""

    law: str = "power"
    correction: Correction | None = None
    selection: Selection | None = None  # with law="auto": the past-curve selection (already corrected)

    def next_total(self, n, y, target: float, *, rounds_left: int, max_total: float) -> float:
        try:
            n_hat = point_estimate(n, y, target, law=self.law, selection=self.selection)
        except ValueError:
            return max_total
        n0 = float(np.max(n))
        if self.correction is not None and n_hat > n0 and not (self.law == "auto" and self.selection):
            n_hat = self.correction.apply(n_hat, n0)
        return float(min(n_hat, max_total))


@dataclass
class RoundsResult:
    """Outcome of :func:`multi_round`: totals after each round and the measured score."""

    success: bool
    totals: list[float]
    scores: list[float]
    rounds_used: int

    def to_dict(self) -> dict:
        return asdict(self)


def multi_round(measure: Callable[[float], float], n, y, target: float, *, rounds: int, policy=None,
                max_total: float = math.inf) -> RoundsResult:
    """The multi-round protocol: estimate, collect, measure, re-fit, repeat (at most ``rounds`` rounds).

    Parameters
    ----------
    measure : callable
        ``measure(total_n) -> score percent`` after training on ``total_n`` samples.
    n, y : array-like of shape (m,)
        The points measured so far.
    policy : object with ``next_total(n, y, target, *, rounds_left, max_total) -> float``
        Default :class:`EstimatePolicy` (plain power law).
    max_total : float
        Never collect beyond this total.

    Returns
    -------
    RoundsResult
        Stops early when the target is met, or when the policy asks for no more data.
    """
    policy = policy or EstimatePolicy()
    n, y = list(np.asarray(n, float)), list(np.asarray(y, float))
    totals, scores = [], []
    for t in range(rounds):
        if y[-1] >= target:
            break
        q = min(max(policy.next_total(np.array(n), np.array(y), target, rounds_left=rounds - t,
                                      max_total=max_total), n[-1]), max_total)
        if q <= n[-1]:
            break
        v = float(measure(q))
        n.append(q)
        y.append(v)
        totals.append(q)
        scores.append(v)
    return RoundsResult(success=bool(y[-1] >= target), totals=totals, scores=scores, rounds_used=len(totals))
