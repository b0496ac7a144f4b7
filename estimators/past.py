"""What past learning curves teach: law selection, the correction factor τ, and the past-curve law ranking.

The correction factor τ (CVPR'22 reports that most laws under-estimate) is applied to the *additional* data:
``n_tau = n0 + τ·(n_hat − n0)``, where ``n0`` is the largest size measured so far. τ is learned from past curves as
``exp(quantile_q(log((n* − n0) / (n_hat − n0))))``: fit on a prefix of each curve, estimate the size reaching a target
that the rest of the curve reaches, and compare with the truth. ``q = 0.5`` makes the corrected estimate
median-unbiased (in log); a higher ``q`` trades cost for fewer under-estimates.

Law selection (``law="auto"``) is learned on the same past curves (:func:`learn_selection`): each law is fitted on
their prefixes, corrected by its own τ, and ranked by its median ``|log(n̂/n*)|``; a new curve uses the best-ranked
law whose estimate is usable (finite and above the current size), falling back down the ranking. The shipped prior
(:mod:`estimators.prior`) is such a selection learned on LCDB. Choosing the law on the held-back largest points of
the new curve alone (:func:`select_law`, ``law="holdout"``) predicts extrapolation quality poorly on LCDB (see
``bench/estimators.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from estimators.curves import LearningCurve, true_required_n
from estimators.errors import EstimatorInputError
from estimators.laws import get_law, list_laws


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
        raise EstimatorInputError("learn_correction: no past curve gave a finite estimate above its current size")
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
        raise EstimatorInputError("learn_selection: no past tasks")
    n0, n_star = _task_arrays(tasks)
    est = {law: np.array([_safe_estimate(t, law) for t in tasks]) for law in (laws or list_laws())}
    return selection_from_estimates(est, n0, n_star, quantile=quantile, how=how)
