"""Learn-Optimize-Collect (Mahmood et al., "Optimizing Data Collection for Machine Learning", NeurIPS 2022).

Learn
    the distribution F of the minimum data requirement D*: bootstrap the curve, fit and invert a law per resample,
    and smooth the draws with a Gaussian kernel density in log n. Draws that never reach the target are mass at
    infinity; since the target is not met at the current size n0, F is truncated to D* > n0.
Optimize
    cumulative totals n0 <= q_1 <= ... <= q_T <= max_total minimizing
    ``c·Σ_t (q_t − q_{t−1})·(1 − F(q_{t−1})) + P·(1 − F(q_T))`` — round t is paid only if the target was not met
    before it. Solved exactly on a geometric grid of totals by dynamic programming (deterministic). With a risk ε
    instead of a penalty P, the terminal term becomes the constraint ``1 − F(q_T) <= ε``.
Collect
    the first round's amount, measure, and re-solve with the remaining rounds (earlier rounds are frozen: they are
    the data already held). :meth:`LOCPlanner.next_total` is that policy for :func:`estimators.requirement.multi_round`.

Multi-source: with several sources (e.g. labeled vs. unlabeled data) each with a cost per sample, a value (effective
samples per sample) and an availability, the cheapest effective data is bought first; the DP then runs on the
resulting convex cumulative cost, and each round's purchase is split by source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import ndtr

from estimators.curves import LearningCurve
from estimators.errors import EstimatorInputError
from estimators.requirement import Correction, bootstrap_required_n, gets_worse, worse_message

DEFAULT_CAP_FACTOR = 100.0  # without max_total, a plan collects at most this many times today's size (CLI and app)


@dataclass(frozen=True)
class RequirementDistribution:
    """F, the distribution of the data requirement D* (total samples), truncated to D* > n0.

    Attributes: ``log_draws`` (finite bootstrap draws, log samples, clipped at log n0), ``p_finite`` (share of
    draws that reach the target at all), ``bandwidth`` (kernel width in log n), ``n0``.
    """

    log_draws: np.ndarray
    p_finite: float
    bandwidth: float
    n0: float

    def _raw(self, q):
        q = np.asarray(q, float)
        if len(self.log_draws) == 0:
            return np.zeros_like(q)
        z = (np.log(np.maximum(q, 1e-300))[..., None] - self.log_draws) / self.bandwidth
        return self.p_finite * ndtr(z).mean(axis=-1)

    def cdf(self, q) -> np.ndarray:
        """F(q) = P(D* <= q | D* > n0); same shape as ``q``; 0 at or below n0."""
        q = np.asarray(q, float)
        base = float(self._raw(self.n0))
        if base >= 1 - 1e-12:
            return np.zeros_like(q)
        return np.where(q > self.n0, np.clip((self._raw(q) - base) / (1 - base), 0.0, 1.0), 0.0)

    def quantile(self, p: float, *, hi: float = 1e12) -> float:
        """Smallest total with F >= p (bisection in log n); inf if F stays below p up to ``hi``."""
        if self.cdf(hi) < p:
            return math.inf
        a, b = math.log(self.n0), math.log(hi)
        for _ in range(100):
            mid = 0.5 * (a + b)
            a, b = (a, mid) if self.cdf(math.exp(mid)) >= p else (mid, b)
        return math.exp(b)


def calibrate_draws(draws, n0: float, correction: Correction, *, mode: str = "past",
                    max_points: int = 2000) -> np.ndarray:
    """Correct bootstrap draws of D* with what past curves taught (the additional data ``d − n0`` is rescaled).

    Parameters
    ----------
    draws : ndarray of shape (B,)
        Bootstrap required sizes (inf where unreachable; kept as inf).
    correction : Correction
        Learned on past curves (:func:`estimators.requirement.learn_correction`).
    mode : {"tau", "past"}
        ``"tau"``: ``n0 + τ·(d − n0)`` (shifts F by the median past error); ``"past"``: every draw times every past
        ratio ``exp(log_ratios)`` (F spreads by the past curves' error distribution, not only shifts); falls back to
        ``"tau"`` when the correction holds no ratios.
    max_points : int
        With ``"past"``, the B·k products are summarized by this many quantiles.

    Returns
    -------
    ndarray
        Corrected draws (finite ones first is not guaranteed; inf draws are kept).
    """
    if mode not in ("tau", "past"):
        raise EstimatorInputError(f"calibrate mode must be 'tau' or 'past', got {mode!r}")
    d = np.asarray(draws, float)
    fin = np.isfinite(d) & (d > n0)
    extra = d[fin] - n0
    if mode == "tau" or not correction.log_ratios:
        out = d.copy()
        out[fin] = n0 + correction.tau * extra
        return out
    prod = np.log(extra)[:, None] + np.asarray(correction.log_ratios, float)[None, :]   # (B_fin, k)
    prod = np.sort(prod.ravel())
    if len(prod) > max_points:
        prod = np.quantile(prod, (np.arange(max_points) + 0.5) / max_points)
    n_keep = len(d) - int(fin.sum())  # draws at or below n0 and unreachable ones keep their share
    share = len(prod) / max(int(fin.sum()), 1)
    rest = np.repeat(d[~fin], max(round(share), 1)) if n_keep else np.empty(0)
    return np.concatenate([n0 + np.exp(prod), rest])


def learn_distribution(n, y, target: float, *, law: str = "power", n_boot: int = 200, method: str = "residual",
                       spread=None, seed: int = 0, bandwidth: float | None = None,
                       correction: Correction | None = None, calibrate: str = "past") -> RequirementDistribution:
    """Learn F from a curve (sizes ``n``, scores ``y`` in percent, shape (m,)) and a target (score percent).

    ``bandwidth`` defaults to Scott's rule on the log draws (at least 0.05). With a ``correction`` learned on past
    curves, the bootstrap draws are calibrated first (:func:`calibrate_draws` with ``calibrate``), so that F
    accounts for the systematic under-estimate and the spread of past errors that a single curve's bootstrap
    cannot see.
    """
    draws = bootstrap_required_n(n, y, target, law=law, n_boot=n_boot, method=method, spread=spread, seed=seed)
    n0 = float(np.max(n))
    if correction is not None:
        draws = calibrate_draws(draws, n0, correction, mode=calibrate)
    fin = draws[np.isfinite(draws)]
    logs = np.log(np.maximum(fin, n0))
    if bandwidth is None:
        sd = float(np.std(logs)) if len(logs) > 1 else 0.0
        bandwidth = max(1.06 * sd * max(len(logs), 1) ** -0.2, 0.05)
    return RequirementDistribution(log_draws=logs, p_finite=len(fin) / len(draws), bandwidth=bandwidth, n0=n0)


@dataclass(frozen=True)
class Source:
    """A data source: ``cost`` per sample, ``value`` effective samples per sample, ``available`` samples."""

    name: str
    cost: float
    value: float = 1.0
    available: float = math.inf


def cumulative_cost(sources: list[Source], extra: np.ndarray) -> np.ndarray:
    """Cheapest total cost of each of ``extra`` effective samples from ``sources``, buying the lowest cost per
    effective sample first (what :func:`plan_collection` charges); ``inf`` where the sources' supply runs out."""
    out = np.zeros_like(extra, dtype=float)
    left = extra.astype(float).copy()
    for s in sorted(sources, key=lambda s: s.cost / s.value):
        take = np.minimum(left, s.value * s.available)
        out += take * s.cost / s.value
        left = left - take
    return np.where(left > 1e-9 * np.maximum(extra, 1), np.inf, out)


def _split(sources: list[Source], extra: float) -> dict[str, float]:
    """Samples bought from each source to obtain ``extra`` effective samples (cheapest first)."""
    out, left = {}, extra
    for s in sorted(sources, key=lambda s: s.cost / s.value):
        take = min(left, s.value * s.available)
        out[s.name] = take / s.value
        left -= take
    return out


@dataclass
class CollectionPlan:
    """A LOC schedule. Totals are cumulative samples (effective samples with several sources)."""

    totals: list[float]
    amounts: list[float]
    expected_cost: float
    risk: float
    n0: float
    cost: float
    penalty: float | None
    risk_target: float | None
    max_total: float
    per_source: list[dict[str, float]] = field(default_factory=list)
    note: str | None = None
    curve: str = "curve"
    target: float = math.nan
    status: str = "plan"
    prior: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def optimize_schedule(dist: RequirementDistribution, *, cost: float = 1.0, penalty: float | None = None,
                      risk: float | None = None, rounds: int = 3, max_total: float, grid_size: int = 256,
                      sources: list[Source] | None = None) -> CollectionPlan:
    """Minimize the LOC objective over cumulative totals ``n0 <= q_1 <= ... <= q_T <= max_total`` (grid DP).

    Returns
    -------
    CollectionPlan
        ``expected_cost`` is the objective (penalty term included, or collection cost only under a risk
        constraint); ``risk`` is ``1 − F(q_T)``. When the risk ε cannot be met within ``max_total``, the plan goes
        to ``max_total`` and ``note`` says so.
    """
    n0 = dist.n0
    grid = np.concatenate([[n0], np.geomspace(n0 * 1.001, max(max_total, n0 * 1.002), grid_size - 1)])
    grid = grid[grid <= max(max_total, n0)]
    surv = 1.0 - dist.cdf(grid)                                          # (G,)
    ccost = cumulative_cost(sources, grid - n0) if sources else cost * (grid - n0)
    g = len(grid)
    step = (ccost[None, :] - ccost[:, None]) * surv[:, None]             # (G, G): from i to j
    step[np.tril_indices(g, -1)] = np.inf
    step = np.nan_to_num(step, nan=np.inf)                             # inf·0 and inf − inf: not allowed
    note = None
    if risk is None:
        v = (penalty or 0.0) * surv
    else:
        ok = surv <= risk
        if not ok.any():
            ok = grid >= grid[-1]
            note = (f"risk {risk:g} is not reachable within the cap of {max_total:,.0f} samples; the best risk "
                    f"there is {surv[-1]:.3g}")
        v = np.where(ok & np.isfinite(ccost), 0.0, np.inf)
    choice = []
    for _ in range(rounds):
        tot = step + v[None, :]
        j = np.argmin(tot, axis=1)
        choice.append(j)
        v = tot[np.arange(g), j]
    i, totals = 0, []
    for j in reversed(choice):
        i = int(j[i])
        totals.append(float(grid[i]))
    if dist.p_finite == 0:
        note = "no bootstrap fit reaches the target: the requirement looks unreachable, so nothing is worth collecting"
    prev = [n0] + totals[:-1]
    amounts = [t - p for t, p in zip(totals, prev)]
    split = []
    if sources:  # cumulative purchase by source after each round, differenced: a source's supply is shared
        cum = [_split(sources, 0.0)] + [_split(sources, t - n0) for t in totals]
        split = [{k: b[k] - a[k] for k in b} for a, b in zip(cum, cum[1:])]
    return CollectionPlan(totals=totals, amounts=amounts, expected_cost=float(v[0]),
                          risk=float(1.0 - dist.cdf(totals[-1])), n0=n0, cost=cost, penalty=penalty,
                          risk_target=risk, max_total=float(max_total), per_source=split, note=note)


class LOCPlanner:
    """The LOC policy with the estimator contract.

    Parameters
    ----------
    cost : float
        Cost per sample (ignored when ``sources`` is given).
    penalty : float, optional
        Cost of missing the target after the last round. Give exactly one of ``penalty`` and ``risk``.
    risk : float, optional
        Acceptable probability of missing the target, in (0, 1).
    rounds : int
        Rounds T (>= 1).
    max_total : float, optional
        Cap on the total size; default 100 × the current size.
    law, n_boot, method, seed
        How F is learned (see :func:`learn_distribution`).
    sources : list of Source, optional
        Multi-source collection.
    correction : Correction, optional
        Learned on past curves; calibrates F (see :func:`learn_distribution`). None: the paper's bootstrap + KDE.
    calibrate : {"past", "tau"}
        How the correction calibrates F (see :func:`calibrate_draws`).

    Attributes
    ----------
    distribution_ : RequirementDistribution
    plan_ : CollectionPlan
    """

    def __init__(self, *, cost: float = 1.0, penalty: float | None = None, risk: float | None = None,
                 rounds: int = 3, max_total: float | None = None, law: str = "power", n_boot: int = 200,
                 method: str = "residual", grid_size: int = 256, seed: int = 0, sources: list[Source] | None = None,
                 correction: Correction | None = None, calibrate: str = "past"):
        self.cost, self.penalty, self.risk, self.rounds = cost, penalty, risk, rounds
        self.max_total, self.law, self.n_boot, self.method = max_total, law, n_boot, method
        self.grid_size, self.seed, self.sources = grid_size, seed, sources
        self.correction, self.calibrate = correction, calibrate

    def _validate(self) -> None:
        if (self.penalty is None) == (self.risk is None):
            raise EstimatorInputError("give exactly one of penalty (cost of failure) and risk (acceptable failure rate)")
        if not (self.cost > 0 and math.isfinite(self.cost)):
            raise EstimatorInputError(f"cost must be a positive number, got {self.cost}")
        if self.penalty is not None and not self.penalty >= 0:
            raise EstimatorInputError(f"penalty must be >= 0, got {self.penalty}")
        if self.risk is not None and not 0 < self.risk < 1:
            raise EstimatorInputError(f"risk must be in (0, 1), got {self.risk}")
        if int(self.rounds) != self.rounds or self.rounds < 1:
            raise EstimatorInputError(f"rounds must be an integer >= 1, got {self.rounds}")

    def fit(self, n, y, target: float, *, spread=None, rounds: int | None = None):
        """Learn F from ``(n, y)`` (score percent, shape (m,)) and plan ``rounds`` (default ``self.rounds``).

        Raises ``ValueError`` for invalid settings, a degenerate curve, or ``max_total`` below the current size.
        """
        self._validate()
        n0 = float(np.max(n))
        cap = self.max_total if self.max_total is not None else DEFAULT_CAP_FACTOR * n0
        if cap < n0:
            raise EstimatorInputError(f"max_total {cap:g} is below the current size {n0:g}")
        self.distribution_ = learn_distribution(n, y, target, law=self.law, n_boot=self.n_boot, method=self.method,
                                                spread=spread, seed=self.seed, correction=self.correction,
                                                calibrate=self.calibrate)
        self.plan_ = optimize_schedule(self.distribution_, cost=self.cost, penalty=self.penalty, risk=self.risk,
                                       rounds=int(rounds or self.rounds), max_total=cap, grid_size=self.grid_size,
                                       sources=self.sources)
        self.plan_.target = float(target)
        return self

    def next_total(self, n, y, target: float, *, rounds_left: int, max_total: float) -> float:
        """Policy interface for :func:`estimators.requirement.multi_round`: re-plan, return the first total.

        A plan may leave early rounds empty (using fewer rounds costs nothing in the objective); the first
        non-empty round is collected now, since an empty round would end the campaign.
        """
        saved = self.max_total
        self.max_total = min(max_total, saved) if saved is not None else max_total
        try:
            totals = self.fit(n, y, target, rounds=rounds_left).plan_.totals
        finally:
            self.max_total = saved
        n0 = float(np.max(n))
        return next((t for t in totals if t > n0), totals[-1])


def plan_collection(curve: LearningCurve, target: float, cost: float = 1.0, penalty: float | None = None,
                    rounds: int = 3, *, risk: float | None = None, max_total: float | None = None,
                    law: str = "power", n_boot: int = 200, seed: int = 0,
                    sources: list[Source] | None = None, correction: Correction | None = None,
                    calibrate: str = "past") -> CollectionPlan:
    """Plan a collection campaign for ``curve`` to reach ``target`` (in the curve's units).

    Returns
    -------
    CollectionPlan
        Amount per round, expected cost, risk of failure (``1 − F(q_T)``); ``status`` is ``"plan"``, ``"open"``
        (some bootstrap fits never reach the target: the requirement may exceed the plan) or ``"unreachable"``
        (fewer than 10% of them reach it) or ``"worse"`` (the curve gets worse with more data: nothing is planned
        and ``note`` suggests the other ``--direction``).

    Raises
    ------
    EstimatorInputError
        Invalid cost/penalty/risk/rounds/max_total, a target outside the metric's range, or a target already met.
    """
    t = curve.score_target(target)
    if not 0 <= t <= 100:
        raise EstimatorInputError(f"target {target:g} is outside the {curve.scale} range of curve {curve.name!r}")
    y = curve.score()
    if y[-1] >= t:
        raise EstimatorInputError(f"curve {curve.name!r} already reaches target {target:g} at n={curve.n[-1]:g}")
    if gets_worse(curve.n, y):  # no law can place the target: plan nothing and say why
        n0 = float(curve.n[-1])
        return CollectionPlan(totals=[n0] * int(rounds), amounts=[0.0] * int(rounds), expected_cost=math.nan,
                              risk=1.0, n0=n0, cost=cost, penalty=penalty, risk_target=risk,
                              max_total=float(max_total if max_total is not None else DEFAULT_CAP_FACTOR * n0),
                              note=worse_message(curve), curve=curve.name, target=float(target), status="worse")
    spread = curve.spread / np.sqrt(np.maximum(curve.n_seeds, 1)) if np.any(curve.spread > 0) else None
    planner = LOCPlanner(cost=cost, penalty=penalty, risk=risk, rounds=rounds, max_total=max_total, law=law,
                         n_boot=n_boot, seed=seed, sources=sources, correction=correction,
                         calibrate=calibrate).fit(curve.n, y, t, spread=spread)
    plan = planner.plan_
    plan.curve, plan.target = curve.name, float(target)
    p = planner.distribution_.p_finite
    if p < 0.1:  # as for estimates: the central 80% of bootstrap fits excludes the target
        plan.status = "unreachable"
    elif p < 1.0:
        plan.status = "open"
        plan.note = "; ".join(v for v in (plan.note, f"{1 - p:.0%} of the bootstrap fits never reach the target: "
                                          "the requirement may be far larger than planned (open upper bound)") if v)
    return plan
