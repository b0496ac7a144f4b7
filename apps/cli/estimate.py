"""``assay estimate`` and ``assay plan``: data requirements and LOC collection schedules from a learning-curve file."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import JsonOpt, SeedOpt
from apps.cli.output import console, emit, styled, table

CurveArg = Annotated[str, typer.Argument(help="Learning-curve file (.csv/.parquet/.json: n, value[, seed, curve]).")]
TargetOpt = Annotated[float, typer.Option("--target", help="Target metric value, in the file's units.")]
DirectionOpt = Annotated[str, typer.Option("--direction", help="'higher' (score) or 'lower' (error) is better.")]
ScaleOpt = Annotated[str, typer.Option("--scale", help="Values are 'percent' (0-100) or 'fraction' (0-1).")]
PastOpt = Annotated[Optional[str], typer.Option(
    "--past", help="Past learning curves (same format, same metric): rank the laws and learn each τ on them, so "
                   "'--law auto' picks the law that extrapolated best there (and a named law gets its own τ).")]
PastFractionOpt = Annotated[float, typer.Option("--past-fraction", help="Prefix of each past curve fitted (share of "
                                                                        "its largest size).")]
PastMarginOpt = Annotated[float, typer.Option("--past-margin", help="Past target = final value minus this (score "
                                                                    "points, percent).")]


def _read(path: str, direction: str, scale: str):
    from pathlib import Path

    from estimators.curves import read_curves

    if "://" not in path and not Path(path).exists():
        raise UserError(f"{path}: no such curve file")
    return read_curves(path, direction=direction, scale=scale)


def _past_selection(path: str | None, direction: str, scale: str, fraction: float, margin: float):
    """The :class:`~estimators.requirement.Selection` learned on past curves, or None without ``--past``."""
    if path is None:
        return None
    from estimators.requirement import learn_selection, make_task

    tasks = [t for c in _read(path, direction, scale) if (t := make_task(c, fraction=fraction, margin=margin))]
    if not tasks:
        raise UserError(f"--past: no curve in {path} has >= 3 points within {fraction:.0%} of its largest size "
                         f"and a target {margin:g} points below its final value")
    return learn_selection(tasks)


def estimate(curve: CurveArg, target: TargetOpt,
             law: Annotated[str, typer.Option("--law", help="auto (ranked on --past curves; else chosen on held-back "
                                                            "points), holdout, or a law: power, arctan, log, root, "
                                                            "m4.")] = "auto",
             level: Annotated[float, typer.Option("--level", help="Interval coverage (0-1).")] = 0.8,
             n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 200,
             tau: Annotated[Optional[float], typer.Option("--tau", help="Correction factor on the additional data "
                                                                       "(default: learned on --past, else 1).")] = None,
             past: PastOpt = None, past_fraction: PastFractionOpt = 0.1, past_margin: PastMarginOpt = 1.0,
             direction: DirectionOpt = "higher", scale: ScaleOpt = "percent",
             seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Estimate the training-set size at which each curve in CURVE reaches --target."""
    from estimators.laws import list_laws
    from estimators.requirement import Correction, estimate_requirement

    if law not in ("auto", "holdout") and law not in list_laws():
        raise UserError(f"--law: unknown law {law!r}; choose from auto, holdout, {', '.join(list_laws())}")
    if not 0 < level < 1:
        raise UserError(f"--level must be in (0, 1), got {level}")
    selection = _past_selection(past, direction, scale, past_fraction, past_margin)
    corr = None if tau is None and selection is not None else Correction(tau=1.0 if tau is None else tau)
    results = [estimate_requirement(c, target, law=law, n_boot=n_boot, level=level, correction=corr, seed=seed,
                                    selection=selection) for c in _read(curve, direction, scale)]
    emit([r.to_dict() for r in results], as_json, _render_estimates)


def _render_estimates(results: list[dict]) -> None:
    for r in results:
        lo, hi = r["interval"]
        req = "unreachable" if r["required_n"] is None else f"{r['required_n']:,.0f}"
        console.print(styled((str(r["curve"]), "bold"), f": target {r['target']:g} -> n = {req} "
                             f"({r['level']:.0%} interval {_n(lo)} - {_n(hi)}), law {r['law']}, "
                             f"now {r['current_n']:,.0f}"))
        if r["reason"]:
            console.print(f"  note: {r['reason']}")
        rows = [(p["law"], _n(p["required_n"]), p["rmse"], _err(r["selection_error"], p["law"]), p["reason"] or "")
                for p in r["per_law"]]
        console.print(table(None, ["law", "required n", "fit rmse", "selection err", "reason"], rows))


def _err(errors: dict, law: str):
    """A law's selection error for the table: blank if not scored, 'inf' if scored as never usable."""
    if law not in errors:
        return ""
    return "inf" if errors[law] is None else errors[law]


def _n(v) -> str:
    return "inf" if v is None else f"{v:,.0f}"


def plan(curve: CurveArg, target: TargetOpt,
         cost: Annotated[float, typer.Option("--cost", help="Cost per sample.")] = 1.0,
         penalty: Annotated[Optional[float], typer.Option("--penalty", help="Cost of missing the target.")] = None,
         risk: Annotated[Optional[float], typer.Option("--risk", help="Acceptable failure risk (instead of "
                                                                          "--penalty).")] = None,
         rounds: Annotated[int, typer.Option("--rounds", help="Collection rounds T.")] = 3,
         max_total: Annotated[Optional[float], typer.Option("--max-total", help="Cap on total samples "
                                                                                 "(default 100x current).")] = None,
         law: Annotated[str, typer.Option("--law", help="Law used to learn the requirement distribution.")] = "power",
         n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 200,
         past: PastOpt = None, past_fraction: PastFractionOpt = 0.1, past_margin: PastMarginOpt = 1.0,
         calibrate: Annotated[str, typer.Option("--calibrate", help="With --past: 'past' (draws x past error "
                                                                    "ratios) or 'tau' (draws shifted by τ).")] = "past",
         direction: DirectionOpt = "higher", scale: ScaleOpt = "percent",
         seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Plan how much data to collect in each round (LOC) for each curve in CURVE."""
    from estimators.laws import list_laws
    from estimators.loc import plan_collection

    if (penalty is None) == (risk is None):
        raise UserError("give exactly one of --penalty and --risk")
    if law not in list_laws():
        raise UserError(f"--law: unknown law {law!r}; choose from {', '.join(list_laws())}")
    selection = _past_selection(past, direction, scale, past_fraction, past_margin)
    corr = selection.corrections[law] if selection is not None else None
    plans = [plan_collection(c, target, cost, penalty, rounds, risk=risk, max_total=max_total, law=law,
                             n_boot=n_boot, seed=seed, correction=corr, calibrate=calibrate)
             for c in _read(curve, direction, scale)]
    emit([p.to_dict() for p in plans], as_json, _render_plans)


def _render_plans(plans: list[dict]) -> None:
    for p in plans:
        console.print(styled((str(p["curve"]), "bold"), f": target {p['target']:g}, now {p['n0']:,.0f}, "
                             f"expected cost {p['expected_cost']:,.4g}, risk of failure {p['risk']:.1%}"))
        if p["note"]:
            console.print(f"  note: {p['note']}")
        rows = [(i + 1, a, t) for i, (a, t) in enumerate(zip(p["amounts"], p["totals"]))]
        console.print(table(None, ["round", "collect", "total"], rows))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
    app.command("plan")(plan)
