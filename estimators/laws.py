"""Learning-curve laws: the CVPR'22 generalized power-law family plus Alabdulmohsin et al.'s M4.

Every law models an increasing **score in percent** ``v(n)`` (use :meth:`estimators.curves.LearningCurve.score` to
turn an error curve or a fraction-scale curve into one). The four laws of Mahmood et al., "How Much More Data Do I
Need?" (CVPR 2022), fitted on the raw score scale with later points weighted more:

================  =====================================================
``power``         θ1·n^θ2 + θ3
``arctan``        (200/π)·arctan(θ1·(π/2)·n + θ2) + θ3
``log``           θ1·log(n + θ2) + θ3
``root``          100·n / (1 + |θ1·n|^θ2)^(1/θ2) + θ3
``m4``            (ε − ε∞) / (ε0 − ε)^α = β·n^c with ε = 100 − v  (Alabdulmohsin et al., NeurIPS 2022)
================  =====================================================

Fits are weighted least squares with bounds (``scipy.optimize.least_squares``, trust-region reflective) from a
deterministic set of starts: the linear parameters of a coarse grid of starts are solved in closed form, and the best
few seed the non-linear fits (``n_starts=1`` by default: on LCDB curves more starts changed the fitted cost by
about 1% at three times the time). The power law is linear in θ1 and θ3 for a fixed exponent, so it is started by
variable projection (:func:`estimators.profile.power_profile`, exact on a fine exponent grid, vectorized over many curves at once —
the bootstrap uses it to fit all resamples in one call). Internally sizes are divided by the largest fitted size, so parameters stay O(1);
``params_`` reports them in the raw units of the table above. ``m4`` is fitted on the horizontal (log n) residuals,
which is the error that matters for data requirements and keeps its implicit form cheap.

Example
-------
>>> law = get_law("power").fit(n, y)
>>> law.predict([1e5]), law.required_n(90.0)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq, least_squares

N_MAX = 1e12  # the largest size any required_n searches (samples)
PAPER_LAWS = ("power", "arctan", "log", "root")


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit``."""


_REGISTRY: dict[str, type["Law"]] = {}


def register_law(cls: type["Law"]) -> type["Law"]:
    """Class decorator: make a :class:`Law` subclass available to :func:`get_law` under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def list_laws() -> list[str]:
    """Names of the registered laws, in registration order."""
    return list(_REGISTRY)


def get_law(name: str, **cfg) -> "Law":
    """A new, unfitted law by name. Raises ``ValueError`` for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown law {name!r}; choose from {', '.join(list_laws())}")
    return _REGISTRY[name](**cfg)


def check_points(n, y) -> tuple[np.ndarray, np.ndarray]:
    """Validate and sort fit input. Returns ``(n, y)`` as float arrays of shape (m,).

    Raises ``ValueError`` when lengths differ, values are not finite, n <= 0, sizes repeat, fewer than 3 sizes are
    given, or all values are equal.
    """
    n = np.asarray(n, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if n.shape != y.shape:
        raise ValueError(f"expected n and y of the same shape (m,), got {n.shape} and {y.shape}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(y))):
        raise ValueError("n and y must be finite")
    if np.any(n <= 0):
        raise ValueError("n must be > 0")
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    if np.any(np.diff(n) == 0):
        raise ValueError("n must not repeat (average repeated seeds first)")
    if len(n) < 3:
        raise ValueError(f"need at least 3 sizes to fit a law, got {len(n)}")
    if np.ptp(y) == 0:
        raise ValueError("all values are equal; a flat curve has no trend to fit")
    return n, y


def _lin_solve(cols: list[np.ndarray], y: np.ndarray, sw: np.ndarray) -> np.ndarray:
    a = np.stack(cols, axis=1) * sw[:, None]
    return np.linalg.lstsq(a, y * sw, rcond=None)[0]


class Law:
    """Base class: a parametric learning curve with the scikit-learn estimator contract.

    Parameters
    ----------
    weights : {"linear", "uniform"}
        Least-squares weights: ``"linear"`` weights the i-th smallest of m points by i/m (later points count more,
        as in the CVPR'22 paper); ``"uniform"`` weights all points equally.
    n_starts : int
        How many of the best grid starts are refined by ``least_squares``.
    max_nfev : int
        Function-evaluation budget per start.

    Attributes
    ----------
    params_ : dict[str, float]
        Fitted parameters in raw units (see the module table).
    rmse_ : float
        Weighted root-mean-square residual of the fit (score points; log-n units for ``m4``).
    cost_ : float
        ``least_squares`` cost (half the weighted sum of squared residuals).
    success_ : bool
        Whether the optimizer reported convergence.
    n_fit_, y_fit_ : ndarray of shape (m,)
        The sorted points the law was fitted on.
    """

    name = "base"
    param_names: tuple[str, ...] = ()

    def __init__(self, *, weights: str = "linear", n_starts: int = 1, max_nfev: int = 150):
        self.weights = weights
        self.n_starts = n_starts
        self.max_nfev = max_nfev

    # --- to be provided by each law (x = n / scale, p = internal parameters) ---
    def _model(self, x, p):
        raise NotImplementedError

    def _bounds(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _starts(self, x, y, sw) -> list[np.ndarray]:
        raise NotImplementedError

    def _raw_params(self, p, s) -> dict[str, float]:
        raise NotImplementedError

    def _residuals(self, p, x, y, sw):
        return sw * (self._model(x, p) - y)

    # --- the contract ---
    def fit(self, n, y, *, init=None):
        """Fit the law to points ``(n, y)``.

        Parameters
        ----------
        n : array-like of shape (m,)
            Training-set sizes (> 0, distinct, any order), m >= 3.
        y : array-like of shape (m,)
            Scores in percent.
        init : ndarray, optional
            Internal parameters to start from (a single start; used by bootstraps to warm-start from a full fit).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Degenerate points (see :func:`check_points`) or an unknown ``weights``.
        """
        n, y = check_points(n, y)
        if self.weights not in ("linear", "uniform"):
            raise ValueError(f"weights must be 'linear' or 'uniform', got {self.weights!r}")
        s = float(n[-1])
        x = n / s
        w = np.arange(1, len(n) + 1) / len(n) if self.weights == "linear" else np.ones(len(n))
        sw = np.sqrt(w)
        lo, hi = self._bounds(x, y)
        starts = [np.asarray(init, dtype=float)] if init is not None else self._best_starts(x, y, sw)
        best = None
        for p0 in starts:
            p0 = np.clip(p0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
            r = least_squares(self._residuals, p0, bounds=(lo, hi), args=(x, y, sw), method="trf",
                              max_nfev=self.max_nfev, x_scale="jac")
            if best is None or r.cost < best.cost:
                best = r
        self.p_, self.scale_ = best.x, s
        self.params_ = self._raw_params(best.x, s)
        self.cost_ = float(best.cost)
        self.rmse_ = float(np.sqrt(2 * best.cost / sw.dot(sw)))
        self.success_ = bool(best.success)
        self.n_fit_, self.y_fit_ = n, y
        return self

    def _best_starts(self, x, y, sw) -> list[np.ndarray]:
        lo, hi = self._bounds(x, y)
        scored = []
        for p in self._starts(x, y, sw):
            p = np.clip(p, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
            with np.errstate(all="ignore"):
                r = self._residuals(p, x, y, sw)
            c = float(r.dot(r)) if np.all(np.isfinite(r)) else math.inf
            scored.append((c, len(scored), p))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [p for _, _, p in scored[: self.n_starts]]

    def _check_fitted(self) -> None:
        if not hasattr(self, "p_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(n, y) first")

    def predict(self, n) -> np.ndarray:
        """Predicted score (percent) at sizes ``n``; same shape as ``n``. NaN where the law is undefined.

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        """
        self._check_fitted()
        n = np.asarray(n, dtype=float)
        with np.errstate(all="ignore"):
            return self._model(n / self.scale_, self.p_)

    def solve_required_n(self, target: float) -> tuple[float, str | None]:
        """Smallest size at which the fitted curve reaches ``target`` (score percent), with a reason if never.

        Returns
        -------
        n : float
            The size (samples), or ``inf`` when the fitted curve stays below ``target`` up to ``N_MAX``.
        reason : str or None
            Why ``n`` is infinite, else None.
        """
        self._check_fitted()
        lo = min(1.0, float(self.n_fit_[0]))
        grid = np.geomspace(lo, N_MAX, 721)
        v = self.predict(grid)
        ok = np.nan_to_num(v, nan=-np.inf) >= target
        if not ok.any():
            top = np.nanmax(v) if np.any(np.isfinite(v)) else float("nan")
            return math.inf, (f"{self.name}: the fitted curve never reaches {target:.4g}; its best value up to "
                              f"{N_MAX:.0e} samples is {top:.4g}")
        i = int(np.argmax(ok))
        if i == 0:
            return float(grid[0]), None
        f = lambda t: float(self.predict(math.exp(t))) - target  # noqa: E731
        a, b = math.log(grid[i - 1]), math.log(grid[i])
        if not (np.isfinite(f(a)) and np.isfinite(f(b))):
            return float(grid[i]), None
        return float(math.exp(brentq(f, a, b, xtol=1e-12, rtol=1e-12))), None

    def required_n(self, target: float) -> float:
        """Smallest size reaching ``target`` (score percent); ``inf`` if never (see :meth:`solve_required_n`)."""
        return self.solve_required_n(target)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights!r}, n_starts={self.n_starts})"


@register_law
class PowerLaw(Law):
    """θ1·n^θ2 + θ3 (CVPR'22). Internally θ3 + a·x^b with x = n / n_max."""

    name = "power"
    param_names = ("theta1", "theta2", "theta3")

    def _model(self, x, p):
        return p[2] + p[0] * np.power(x, p[1])

    def _bounds(self, x, y):
        return np.array([-1e4, -4.0, -1e4]), np.array([1e4, 2.0, 1e4])

    def _starts(self, x, y, sw):
        out = []
        for b in (-2.0, -1.0, -0.5, -0.25, -0.1, 0.1, 0.3):
            a, c = _lin_solve([np.power(x, b), np.ones_like(x)], y, sw)
            out.append(np.array([a, b, c]))
        return out

    def _best_starts(self, x, y, sw) -> list[np.ndarray]:
        from estimators.profile import power_profile  # profile.py imports N_MAX from here

        a, b, c = power_profile(x, y[None, :], sw ** 2)  # variable projection: one near-optimal start
        return [np.array([a[0], b[0], c[0]])]

    def _raw_params(self, p, s):
        return {"theta1": float(p[0] * s ** (-p[1])), "theta2": float(p[1]), "theta3": float(p[2])}


@register_law
class ArctanLaw(Law):
    """(200/π)·arctan(θ1·(π/2)·n + θ2) + θ3 (CVPR'22). Internally θ1 = a / n_max."""

    name = "arctan"
    param_names = ("theta1", "theta2", "theta3")

    def _model(self, x, p):
        return (200 / np.pi) * np.arctan(p[0] * (np.pi / 2) * x + p[1]) + p[2]

    def _bounds(self, x, y):
        return np.array([1e-8, -1e3, -1e3]), np.array([1e6, 1e3, 1e3])

    def _starts(self, x, y, sw):
        out = []
        for a in (0.1, 1.0, 10.0, 100.0, 1000.0):
            for b in (-1.0, 0.0, 1.0):
                g = (200 / np.pi) * np.arctan(a * (np.pi / 2) * x + b)
                c = float(np.dot(sw ** 2, y - g) / np.dot(sw, sw))
                out.append(np.array([a, b, c]))
        return out

    def _raw_params(self, p, s):
        return {"theta1": float(p[0] / s), "theta2": float(p[1]), "theta3": float(p[2])}


@register_law
class LogLaw(Law):
    """θ1·log(n + θ2) + θ3 (CVPR'22). Internally a·log(x + b) + c with θ2 = b·n_max."""

    name = "log"
    param_names = ("theta1", "theta2", "theta3")

    def _model(self, x, p):
        return p[0] * np.log(x + p[1]) + p[2]

    def _bounds(self, x, y):
        return np.array([-1e4, -0.999 * x[0], -1e5]), np.array([1e4, 1e3, 1e5])

    def _starts(self, x, y, sw):
        out = []
        for b in (-0.5 * x[0], 0.0, x[0], 0.1, 1.0):
            a, c = _lin_solve([np.log(x + b), np.ones_like(x)], y, sw)
            out.append(np.array([a, b, c]))
        return out

    def _raw_params(self, p, s):
        return {"theta1": float(p[0]), "theta2": float(p[1] * s), "theta3": float(p[2] - p[0] * math.log(s))}


@register_law
class RootLaw(Law):
    """100·n / (1 + |θ1·n|^θ2)^(1/θ2) + θ3 (CVPR'22), the algebraic root; levels off at 100/|θ1| + θ3.

    Internally p = (log(θ1·n_max), θ2, θ3), evaluated in log space so large θ1·n never overflows.
    """

    name = "root"
    param_names = ("theta1", "theta2", "theta3")

    def _model(self, x, p):
        s = self._s
        lu, k = p[0], p[1]
        t = np.log(np.maximum(x, 1e-300)) + lu  # log(θ1·n)
        return 100.0 * s * x * np.exp(-np.logaddexp(0.0, k * t) / k) + p[2]

    def fit(self, n, y, *, init=None):
        self._s = float(np.max(np.asarray(n, dtype=float))) if np.size(n) else 1.0
        return super().fit(n, y, init=init)

    def _bounds(self, x, y):
        ls = math.log(self._s)
        return np.array([ls - 25.0, 0.01, -1e3]), np.array([ls + 25.0, 20.0, 100.0])

    def _starts(self, x, y, sw):
        out = []
        top = float(np.max(y))
        for k in (0.2, 0.5, 1.0, 3.0):
            for asym in (top + 1.0, top + 5.0, top + 20.0):
                for c in (0.0, float(np.min(y)) - 10.0):
                    if asym - c <= 0:
                        continue
                    lu = math.log(100.0 / (asym - c) * self._s)
                    p = np.array([lu, k, c])
                    p[2] = float(np.dot(sw ** 2, y - (self._model(x, p) - c)) / np.dot(sw, sw))
                    out.append(p)
        return out

    def _raw_params(self, p, s):
        return {"theta1": float(math.exp(p[0]) / s), "theta2": float(p[1]), "theta3": float(p[2])}


@register_law
class M4Law(Law):
    """Alabdulmohsin et al. (NeurIPS 2022) M4: (ε − ε∞)/(ε0 − ε)^α = β·n^c on the error ε = 100 − score.

    ε0 (the error of an untrained model) is fixed at ``e0`` (default 100); fitted: ε∞ (irreducible error), α ≥ 0,
    β > 0, c < 0. With α = 0 it is a power law in the error. Fitted on log-n residuals of the closed-form inverse
    log n(ε) = (log(ε − ε∞) − α·log(ε0 − ε) − log β) / c; ``predict`` solves the implicit equation by bisection.
    """

    name = "m4"
    param_names = ("e_inf", "alpha", "beta", "c")

    def __init__(self, *, weights: str = "linear", n_starts: int = 1, max_nfev: int = 150, e0: float = 100.0):
        super().__init__(weights=weights, n_starts=n_starts, max_nfev=max_nfev)
        self.e0 = e0

    def _g(self, e, p):  # log(ε − ε∞) − α·log(ε0 − ε), increasing in ε
        return np.log(np.maximum(e - p[0], 1e-300)) - p[1] * np.log(np.maximum(self.e0 - e, 1e-300))

    def _residuals(self, p, x, y, sw):
        return sw * ((self._g(100.0 - y, p) - p[2]) / p[3] - np.log(x))

    def _bounds(self, x, y):
        e = 100.0 - y
        if np.max(e) >= self.e0:
            raise ValueError(f"m4: errors must stay below e0={self.e0:g}; got {np.max(e):g}")
        return np.array([0.0, 0.0, -200.0, -5.0]), np.array([max(np.min(e) * (1 - 1e-6), 1e-12), 5.0, 200.0, -1e-3])

    def _starts(self, x, y, sw):
        e, out = 100.0 - y, []
        for frac in (0.0, 0.5, 0.9, 0.99):
            for alpha in (0.0, 0.5, 1.0):
                p = np.array([frac * np.min(e), alpha, 0.0, -0.5])
                lb, c = _lin_solve([np.ones_like(x), np.log(x)], self._g(e, p), sw)
                out.append(np.array([p[0], alpha, lb, min(c, -1e-2)]))
        return out

    def _model(self, x, p):
        x = np.asarray(x, dtype=float)
        rhs = p[2] + p[3] * np.log(np.maximum(x, 1e-300))
        lo = np.full(x.shape, p[0])
        hi = np.full(x.shape, float(self.e0))
        for _ in range(60):  # bisection on ε in (ε∞, ε0), vectorized over x
            mid = 0.5 * (lo + hi)
            up = self._g(mid, p) > rhs
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
        return 100.0 - 0.5 * (lo + hi)

    def solve_required_n(self, target):
        self._check_fitted()
        p, e = self.p_, 100.0 - float(target)
        if e <= p[0]:
            return math.inf, (f"m4: target {target:.4g} needs error {e:.4g} <= the fitted irreducible error "
                              f"{p[0]:.4g}")
        if e >= self.e0:
            return min(1.0, float(self.n_fit_[0])), None
        n = self.scale_ * math.exp((float(self._g(e, p)) - p[2]) / p[3])
        if n > N_MAX:
            return math.inf, f"m4: target {target:.4g} needs {n:.3g} samples, beyond {N_MAX:.0e}"
        return n, None

    def _raw_params(self, p, s):
        return {"e_inf": float(p[0]), "alpha": float(p[1]), "beta": float(math.exp(p[2]) * s ** (-p[3])),
                "c": float(p[3])}


def law_bracket(n, y, target: float, *, laws=PAPER_LAWS) -> tuple[float, float, dict[str, float]]:
    """The cheap bracket: min and max over laws of the required size for ``target`` (score percent).

    Returns
    -------
    low, high : float
        Smallest and largest required n over the fitted laws (``high`` is inf if any law never reaches the target).
    per_law : dict[str, float]
        Required n of each law.
    """
    per = {name: get_law(name).fit(n, y).required_n(target) for name in laws}
    vals = np.array(list(per.values()))
    return float(vals.min()), float(vals.max()), per
