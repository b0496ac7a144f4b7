"""How much data is needed: bootstrap intervals, model selection, the correction factor τ, multi-round protocol.

Everything here works on the *score percent* view of a curve (see :mod:`estimators.curves`); public entry points
that take a :class:`~estimators.curves.LearningCurve` take targets in the curve's own units and convert.

The correction factor τ (CVPR'22 reports that most laws under-estimate) is applied to the *additional* data:
``n_tau = n0 + τ·(n_hat − n0)``, where ``n0`` is the largest size measured so far. τ is learned from past curves as
``exp(quantile_q(log((n* − n0) / (n_hat − n0))))``: fit on a prefix of each curve, estimate the size reaching a target
that the rest of the curve reaches, and compare with the truth. ``q = 0.5`` makes the corrected estimate
median-unbiased (in log); a higher ``q`` trades cost for fewer under-estimates.

Law selection (``law="auto"``) is learned on the same past curves (:func:`learn_selection`): each law is fitted on
their prefixes, corrected by its own τ, and ranked by its median ``|log(n̂/n*)|``; a new curve uses the best-ranked
law whose estimate is usable (finite and above the current size), falling back down the ranking. Choosing the law on
the held-back largest points of the new curve alone (:func:`select_law`, ``law="holdout"``) is kept, but on LCDB it
predicts extrapolation quality poorly (see ``bench/estimators.md``); it is what ``"auto"`` does when no past curves
are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from estimators.curves import LearningCurve, true_required_n
from estimators.laws import (
    PAPER_LAWS,
    get_law,
    list_laws,
    power_profile,
    power_required_n,
)


# ----------------------------------------------------------------------------------------------- bootstrap
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
    base = get_law(law).fit(n, y)
    m, k = len(n), len(base.p_)
    y_hat = base.predict(base.n_fit_)
    r = (base.y_fit_ - y_hat) * math.sqrt(m / max(m - k, 1))
    sd = np.zeros(m) if spread is None else np.asarray(spread, float)[np.argsort(n)]
    if law == "power" and method == "residual":  # vectorized variable projection: all resamples at once
        ys = y_hat + r * rng.choice((-1.0, 1.0), size=(n_boot, m)) + sd * rng.standard_normal((n_boot, m))
        w = np.arange(1, m + 1) / m if base.weights == "linear" else np.ones(m)
        a, b_, c = power_profile(base.n_fit_ / base.scale_, ys, w)
        return power_required_n(a, b_, c, base.scale_, target, lo=min(1.0, float(base.n_fit_[0])))
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


def interval(draws: np.ndarray, level: float = 0.8) -> tuple[float, float, float]:
    """``(median, low, high)`` percentile interval of bootstrap draws (inf draws count as +inf)."""
    a = (1 - level) / 2
    q = np.quantile(np.asarray(draws, float), [0.5, a, 1 - a], method="inverted_cdf")
    return float(q[0]), float(q[1]), float(q[2])


# ----------------------------------------------------------------------------------------------- selection
def select_law(n, y, *, laws: Sequence[str] | None = None, holdout: int | None = None,
               default: str = "power") -> tuple[str, dict[str, float]]:
    """Pick the law with the smallest extrapolation error on the held-back largest points.

    Each law is fitted on all but the ``holdout`` largest points (default: a quarter, at least 1) and scored by the
    mean absolute error (score points) on the held-back ones. Returns ``(name, errors)``; when fewer than
    ``3 + holdout`` points exist, returns ``(default, {})``.
    """
    laws = list(laws or list_laws())
    n, y = np.asarray(n, float), np.asarray(y, float)
    order = np.argsort(n)
    n, y = n[order], y[order]
    h = holdout if holdout is not None else max(1, len(n) // 4)
    if len(n) - h < 3:
        return default, {}
    errs = {}
    for name in laws:
        try:
            pred = get_law(name).fit(n[:-h], y[:-h]).predict(n[-h:])
            errs[name] = float(np.mean(np.abs(pred - y[-h:])))
        except ValueError:
            errs[name] = math.inf
        if not np.isfinite(errs[name]):
            errs[name] = math.inf
    best = min(errs, key=lambda k: (errs[k], laws.index(k)))
    return (best if np.isfinite(errs[best]) else default), errs


# ----------------------------------------------------------------------------------------------- correction
@dataclass(frozen=True)
class Correction:
    """A learned correction factor: ``n0 + tau·(n_hat − n0)``.

    ``log_ratios`` keeps the past curves' ``log((n* − n0) / (n_hat − n0))`` (the empirical error distribution τ was
    taken from); :func:`estimators.loc.learn_distribution` can use it to calibrate LOC's distribution of D*.
    """

    tau: float = 1.0
    quantile: float = 0.5
    n_curves: int = 0
    law: str = "power"
    log_ratios: tuple = ()

    def apply(self, n_hat, n0):
        """Corrected total size(s); ``inf`` stays ``inf``; never below ``n0``."""
        n_hat = np.asarray(n_hat, float)
        out = np.where(np.isfinite(n_hat), n0 + self.tau * np.maximum(n_hat - n0, 0.0), np.inf)
        return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Task:
    """One requirement-estimation task cut from a full curve (see :func:`make_task`)."""

    n: np.ndarray          # prefix sizes, shape (k,)
    y: np.ndarray          # prefix scores (percent), shape (k,)
    target: float          # score percent
    n_star: float          # true required size (log-n interpolation of the full curve)
    n_max: float           # largest size of the full curve


def make_task(curve: LearningCurve, *, fraction: float = 0.1, margin: float = 1.0,
              min_gain: float = 0.5) -> Task | None:
    """Cut the benchmark task from a full curve: fit on points up to ``fraction`` of the largest size; target =
    score at the largest size minus ``margin`` (score points). Returns None when the prefix has < 3 points or the
    target is not at least ``min_gain`` above the best prefix score (nothing to estimate)."""
    s = curve.score()
    keep = curve.n <= fraction * curve.n[-1] * (1 + 1e-9)
    if keep.sum() < 3 or np.ptp(s[keep]) == 0:
        return None
    target = float(s[-1] - margin)
    if target < s[keep].max() + min_gain:
        return None
    n_star = true_required_n(curve, target)
    return Task(n=curve.n[keep], y=s[keep], target=target, n_star=n_star, n_max=float(curve.n[-1]))


def point_estimate(n, y, target: float, *, law: str = "power", selection: "Selection | None" = None) -> float:
    """Required size for ``target`` (score percent) from one fit; inf if never.

    ``law="auto"`` with a ``selection`` learned on past curves returns its (τ-corrected) estimate (see
    :meth:`Selection.estimate`); without one, or with ``law="holdout"``, the law is chosen on the held-back points
    (:func:`select_law`) and the estimate is not corrected.
    """
    if law == "auto" and selection is not None:
        return selection.estimate(n, y, target)[0]
    name = select_law(n, y)[0] if law in ("auto", "holdout") else law
    return get_law(name).fit(n, y).required_n(target)


def _log_ratios(est, n0, n_star) -> np.ndarray:
    """``log((n* − n0) / (n_hat − n0))`` where both exceed n0 and the estimate is finite."""
    est, n0, n_star = (np.asarray(v, float) for v in (est, n0, n_star))
    ok = np.isfinite(est) & (est > n0 * (1 + 1e-9)) & (n_star > n0)
    return np.log((n_star[ok] - n0[ok]) / (est[ok] - n0[ok]))


def correction_from_estimates(est, n0, n_star, *, law: str = "power", quantile: float = 0.5) -> Correction:
    """τ from precomputed estimates on past tasks (arrays of shape (k,)); see :func:`learn_correction`."""
    logs = _log_ratios(est, n0, n_star)
    if len(logs) == 0:
        raise ValueError("learn_correction: no past curve gave a finite estimate above its current size")
    return Correction(tau=float(math.exp(np.quantile(logs, quantile))), quantile=quantile, n_curves=len(logs),
                      law=law, log_ratios=tuple(float(v) for v in logs))


def _task_arrays(tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([float(t.n[-1]) for t in tasks]), np.array([t.n_star for t in tasks])


def _safe_estimate(t: Task, law: str) -> float:
    try:
        return point_estimate(t.n, t.y, t.target, law=law)
    except ValueError:
        return math.inf


def learn_correction(tasks: Sequence[Task], *, law: str = "power", quantile: float = 0.5) -> Correction:
    """Learn τ from past tasks (see the module docstring). Tasks whose estimate is inf or <= n0 are skipped.

    Raises ``ValueError`` when no usable task remains.
    """
    n0, n_star = _task_arrays(tasks)
    est = np.array([_safe_estimate(t, law) for t in tasks])
    return correction_from_estimates(est, n0, n_star, law=law, quantile=quantile)


def corrected_error(est, n0, n_star, corr: Correction) -> float:
    """Median ``|log(max(n0, corrected) / n*)|`` over tasks; unreachable estimates count as infinite error."""
    est, n0, n_star = (np.asarray(v, float) for v in (est, n0, n_star))
    fixed = np.where(est > n0, corr.apply(est, n0) if len(est) else est, n0)
    return float(np.median(np.abs(np.log(np.maximum(fixed, n0) / n_star))))


@dataclass(frozen=True)
class Selection:
    """Laws ranked on past curves by their τ-corrected extrapolation error, each with its own correction.

    This is what ``law="auto"`` means when past curves are available: the law that, fitted on past curves' prefixes
    and corrected by its own τ, came closest to their true requirements (median ``|log(n̂/n*)|``, unreachable
    estimates counting as infinitely wrong). Build it with :func:`learn_selection`.

    Attributes
    ----------
    ranking : tuple of str
        Laws, best first.
    corrections : dict[str, Correction]
        τ of each law (learned on the same past curves).
    errors : dict[str, float]
        Each law's median ``|log ratio|`` on the past curves after its correction.
    how : {"best", "median"}
        ``"best"``: the first law in the ranking whose estimate is finite (an unreachable estimate falls back to the
        next law); ``"median"``: the median of the finite corrected estimates of all ranked laws.
    """

    ranking: tuple
    corrections: dict
    errors: dict
    how: str = "best"

    @property
    def law(self) -> str:
        return self.ranking[0]

    def combine(self, per_law: dict, n0: float) -> tuple[float, str, str | None]:
        """Combine uncorrected per-law estimates (``{law: n_hat}``) into ``(corrected n, law used, note)``.

        A law is usable when its estimate is finite and above ``n0`` (an estimate at or below ``n0`` claims that a
        target not met at ``n0`` is already met). With no usable law, returns the best-ranked law's own estimate
        (inf, or <= n0) and a note.
        """
        fixed = {k: self.corrections[k].apply(v, n0) for k, v in per_law.items() if _usable(v, n0)}
        if self.how == "median":
            fin = [fixed[k] for k in self.ranking if k in fixed]
            if fin:
                return float(np.median(fin)), "median", None
        else:
            for i, k in enumerate(self.ranking):
                if k in fixed:
                    note = None if i == 0 else (f"{', '.join(self.ranking[:i])} gave no usable estimate "
                                                f"(unreachable or <= the current size); fell back to {k}")
                    return float(fixed[k]), k, note
        first = self.ranking[0]
        return float(per_law.get(first, math.inf)), first, "no law gives a finite estimate above the current size"

    def estimate(self, n, y, target: float) -> tuple[float, str, str | None]:
        """Corrected required size for ``target`` (score percent) with the law used and a fallback note."""
        n0, per = float(np.max(n)), {}
        for k in self.ranking:
            try:
                per[k] = get_law(k).fit(n, y).required_n(target)
            except ValueError:
                per[k] = math.inf
            if self.how == "best" and _usable(per[k], n0):
                break
        return self.combine(per, n0)


def _usable(v: float, n0: float) -> bool:
    return math.isfinite(v) and v > n0 * (1 + 1e-9)


def selection_from_estimates(est: dict, n0, n_star, *, quantile: float = 0.5, how: str = "best") -> Selection:
    """:class:`Selection` from precomputed per-law estimates on past tasks (``{law: array (k,)}``)."""
    corrs, errs = {}, {}
    for law, e in est.items():
        try:
            corrs[law] = correction_from_estimates(e, n0, n_star, law=law, quantile=quantile)
        except ValueError:
            corrs[law] = Correction(law=law)
        errs[law] = corrected_error(e, n0, n_star, corrs[law])
    names = list(est)
    ranking = tuple(sorted(names, key=lambda k: (errs[k], names.index(k))))
    return Selection(ranking=ranking, corrections=corrs, errors=errs, how=how)


def learn_selection(tasks: Sequence[Task], *, laws: Sequence[str] | None = None, quantile: float = 0.5,
                    how: str = "best") -> Selection:
    """Rank ``laws`` (default: all registered) by τ-corrected extrapolation error on past tasks.

    Each law is fitted on every task's prefix, its τ learned (:func:`learn_correction`), and its corrected
    estimates scored by median ``|log(n̂/n*)|``. Raises ``ValueError`` when ``tasks`` is empty.
    """
    if not tasks:
        raise ValueError("learn_selection: no past tasks")
    n0, n_star = _task_arrays(tasks)
    est = {law: np.array([_safe_estimate(t, law) for t in tasks]) for law in (laws or list_laws())}
    return selection_from_estimates(est, n0, n_star, quantile=quantile, how=how)


# ----------------------------------------------------------------------------------------------- one estimate
@dataclass
class RequirementResult:
    """The required training-set size for one curve. Sizes are totals (samples), inf/None when unreachable."""

    curve: str
    target: float
    law: str
    required_n: float
    interval: tuple[float, float]
    level: float
    current_n: float
    additional_n: float
    reason: str | None = None
    tau: float = 1.0
    bracket: tuple[float, float] = (math.nan, math.nan)
    per_law: list[dict] = field(default_factory=list)
    selection_error: dict[str, float] = field(default_factory=dict)

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


def estimate_requirement(curve: LearningCurve, target: float, *, law: str = "auto", n_boot: int = 200,
                         level: float = 0.8, correction: Correction | None = None, method: str = "residual",
                         seed: int = 0, selection: Selection | None = None) -> RequirementResult:
    """Estimate the total size at which ``curve`` reaches ``target``, with a bootstrap interval and a per-law table.

    Parameters
    ----------
    curve : LearningCurve
    target : float
        In the curve's units (score or error, percent or fraction).
    law : str
        A registered law; ``"auto"``: with a ``selection``, the best-ranked law whose estimate is finite, corrected
        by its own τ (unreachable estimates fall back to the next law); without one, like ``"holdout"``: the law
        with the smallest error on the held-back largest points (:func:`select_law`), uncorrected.
    correction : Correction, optional
        Learned τ applied to the estimate and the interval (overrides the selection's τ).
    selection : Selection, optional
        Laws ranked on past curves (:func:`learn_selection`).

    Returns
    -------
    RequirementResult
        ``required_n`` is inf (``None`` in ``to_dict``) with ``reason`` when the fitted curve never reaches the
        target.

    Raises
    ------
    ValueError
        Unknown law, or a target outside the metric's range.
    """
    t = curve.score_target(target)
    if not 0 <= t <= 100:
        raise ValueError(f"target {target:g} is outside the {curve.scale} range of curve {curve.name!r}")
    n, y = curve.n, curve.score()
    sel_err, note = {}, None
    if law == "holdout" or (law == "auto" and selection is None):
        law, sel_err = select_law(n, y)
    per_law, why_of = [], {}
    failed: dict[str, str] = {}
    for name in list_laws():
        try:
            est = get_law(name).fit(n, y)
        except ValueError as e:  # a law whose domain excludes this curve (e.g. m4 with 100% error) is skipped
            failed[name] = f"{name} cannot fit this curve: {e}"
            per_law.append({"law": name, "required_n": float("inf"), "reason": failed[name], "rmse": float("nan"),
                            "params": {}})
            why_of[name] = failed[name]
            continue
        n_req, why = est.solve_required_n(t)
        per_law.append({"law": name, "required_n": n_req, "reason": why, "rmse": est.rmse_, "params": est.params_})
        why_of[name] = why
    if law == "auto":
        best = replace(selection, how="best")  # one law carries the interval and the per-law table
        _, law, note = best.combine({r["law"]: r["required_n"] for r in per_law if r["law"] in selection.ranking},
                                    float(n[-1]))
        sel_err = dict(selection.errors)
        if law in failed:  # nothing usable and the best-ranked law cannot fit: report the best law that can
            law = next((k for k in selection.ranking if k not in failed), law)
    if law not in list_laws():
        raise ValueError(f"unknown law {law!r}; choose from auto, holdout, {', '.join(list_laws())}")
    if law in failed:
        raise ValueError(f"curve {curve.name!r}: {failed[law]}")
    reason = why_of[law] if note is None else f"{note}; {why_of[law]}" if why_of[law] else note
    if correction is None and selection is not None and law in selection.corrections:
        correction = selection.corrections[law]
    corr = correction or Correction(tau=1.0)
    n0 = float(n[-1])
    point = next(r["required_n"] for r in per_law if r["law"] == law)
    spread = curve.spread / np.sqrt(np.maximum(curve.n_seeds, 1)) if np.any(curve.spread > 0) else None
    draws = bootstrap_required_n(n, y, t, law=law, n_boot=n_boot, method=method, spread=spread, seed=seed)
    _, lo, hi = interval(draws, level)
    req = corr.apply(point, n0) if point > n0 else point
    paper = [r["required_n"] for r in per_law if r["law"] in PAPER_LAWS]
    if reason is None and point <= n0:
        reason = f"target already reached within the measured sizes (n <= {n0:g})"
    return RequirementResult(
        curve=curve.name, target=float(target), law=law, required_n=float(req),
        interval=(float(corr.apply(lo, n0)) if lo > n0 else lo, float(corr.apply(hi, n0)) if hi > n0 else hi),
        level=level, current_n=n0, additional_n=float(max(req - n0, 0.0)), reason=reason, tau=corr.tau,
        bracket=(float(min(paper)), float(max(paper))), per_law=per_law, selection_error=sel_err)


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
