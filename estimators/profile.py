"""Variable-projection fits of the log law for many curves at once (the bootstrap's fast path).

``a·log(x + b) + c`` is linear in ``a`` and ``c`` for a fixed offset ``b``, so — like the power law's
:func:`estimators.laws.power_profile` — the best ``(a, c)`` is solved in closed form for every ``b`` on a grid and
every resampled curve at once, and the grid is refined around each curve's best ``b``. The grid spans the
:class:`estimators.laws.LogLaw` bounds ``b ∈ (−0.999·x0, 1000]``. A single bootstrap of 200 resamples then costs one
vectorized pass instead of 200 trust-region fits (about 8 s → 0.05 s on a 10-point LCDB prefix).
"""

from __future__ import annotations

import numpy as np

from estimators.laws import N_MAX, _profile_rss


def _log_features(x, shift):
    with np.errstate(all="ignore"):
        return np.log(np.maximum(x + shift, 1e-300))


def log_profile(x, Y, w, *, n_grid: int = 161, zooms: int = 2):
    """Weighted least-squares ``c + a·log(x + b)`` for every row of ``Y`` by variable projection.

    Parameters
    ----------
    x : ndarray of shape (m,)
        Sizes divided by the largest size (as :class:`estimators.laws.LogLaw` fits them), increasing.
    Y : ndarray of shape (B, m)
        Scores, one curve per row.
    w : ndarray of shape (m,)
        Non-negative point weights.

    Returns
    -------
    a, b, c : ndarray of shape (B,)
    """
    x, Y, w = np.asarray(x, float), np.atleast_2d(np.asarray(Y, float)), np.asarray(w, float)
    w = w / w.sum()
    my = Y @ w
    yc = Y - my[:, None]
    vary = (yc ** 2) @ w
    b_min = -0.999 * float(x[0])
    lu = np.linspace(np.log(1e-4 * float(x[0])), np.log(1e3 - b_min), n_grid)  # log(b − b_min)
    feats = _log_features(x[None, :], (b_min + np.exp(lu))[:, None])                      # (G, m)
    rss, _ = _profile_rss(feats[None], w, yc, vary)                                         # (B, G)
    u = lu[np.argmin(rss, axis=1)]
    h = float(lu[1] - lu[0])
    for _ in range(zooms):
        cand = np.clip(u[:, None] + np.linspace(-h, h, 21)[None, :], lu[0], lu[-1])           # (B, 21)
        f = _log_features(x[None, None, :], (b_min + np.exp(cand))[..., None])                # (B, 21, m)
        rss, _ = _profile_rss(f, w, yc, vary)
        u = cand[np.arange(len(u)), np.argmin(rss, axis=1)]
        h /= 10
    b = b_min + np.exp(u)
    f = _log_features(x[None, :], b[:, None])                                               # (B, m)
    _, a = _profile_rss(f[:, None, :], w, yc, vary)
    a = a[:, 0]
    c = my - a * (f @ w)
    return a, b, c


def log_required_n(a, b, c, scale: float, target: float, *, lo: float = 1.0) -> np.ndarray:
    """Smallest n in [lo, N_MAX] where ``c + a·log(n/scale + b) >= target``, vectorized over fits; inf if never."""
    a, b, c = (np.asarray(v, float) for v in (a, b, c))
    with np.errstate(all="ignore"):
        v_lo = c + a * np.log(lo / scale + b)
        n_sol = scale * (np.exp((target - c) / a) - b)
    out = np.where((a > 0) & np.isfinite(n_sol), np.maximum(n_sol, lo), np.inf)
    out = np.where(out > N_MAX, np.inf, out)
    return np.where(np.nan_to_num(v_lo, nan=-np.inf) >= target, lo, out)
