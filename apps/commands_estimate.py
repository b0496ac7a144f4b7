"""``assay estimate`` and ``assay plan``: data requirements and LOC collection schedules from a learning-curve file."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from apps.options import JsonOpt, SeedOpt
from apps.output import console, emit, table

CurveArg = Annotated[str, typer.Argument(help="Learning-curve file (.csv/.parquet/.json: n, value[, seed, curve]).")]
TargetOpt = Annotated[float, typer.Option("--target", help="Target metric value, in the file's units.")]
DirectionOpt = Annotated[str, typer.Option("--direction", help="'higher' (score) or 'lower' (error) is better.")]
ScaleOpt = Annotated[str, typer.Option("--scale", help="Values are 'percent' (0-100) or 'fraction' (0-1).")]


def _read(path: str, direction: str, scale: str):
    from estimators.curves import read_curves

    return read_curves(path, direction=direction, scale=scale)


def estimate(curve: CurveArg, target: TargetOpt,
             law: Annotated[str, typer.Option("--law", help="auto, or a law: power, arctan, log, root, m4.")] = "auto",
             level: Annotated[float, typer.Option("--level", help="Interval coverage (0-1).")] = 0.8,
             n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 200,
             tau: Annotated[float, typer.Option("--tau", help="Correction factor on the additional data.")] = 1.0,
             direction: DirectionOpt = "higher", scale: ScaleOpt = "percent",
             seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Estimate the training-set size at which each curve in CURVE reaches --target."""
    from estimators.laws import list_laws
    from estimators.requirement import Correction, estimate_requirement

    if law != "auto" and law not in list_laws():
        raise ValueError(f"--law: unknown law {law!r}; choose from auto, {', '.join(list_laws())}")
    if not 0 < level < 1:
        raise ValueError(f"--level must be in (0, 1), got {level}")
    corr = Correction(tau=tau)
    results = [estimate_requirement(c, target, law=law, n_boot=n_boot, level=level, correction=corr, seed=seed)
               for c in _read(curve, direction, scale)]
    emit([r.to_dict() for r in results], as_json, _render_estimates)


def _render_estimates(results: list[dict]) -> None:
    for r in results:
        lo, hi = r["interval"]
        req = "unreachable" if r["required_n"] is None else f"{r['required_n']:,.0f}"
        console.print(f"[bold]{r['curve']}[/]: target {r['target']:g} -> n = {req} "
                      f"({r['level']:.0%} interval {_n(lo)} - {_n(hi)}), law {r['law']}, now {r['current_n']:,.0f}")
        if r["reason"]:
            console.print(f"  note: {r['reason']}")
        rows = [(p["law"], _n(p["required_n"]), p["rmse"], r["selection_error"].get(p["law"]), p["reason"] or "")
                for p in r["per_law"]]
        console.print(table(None, ["law", "required n", "fit rmse", "holdout err", "reason"], rows))


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
         direction: DirectionOpt = "higher", scale: ScaleOpt = "percent",
         seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Plan how much data to collect in each round (LOC) for each curve in CURVE."""
    from estimators.laws import list_laws
    from estimators.loc import plan_collection

    if (penalty is None) == (risk is None):
        raise ValueError("give exactly one of --penalty and --risk")
    if law not in list_laws():
        raise ValueError(f"--law: unknown law {law!r}; choose from {', '.join(list_laws())}")
    plans = [plan_collection(c, target, cost, penalty, rounds, risk=risk, max_total=max_total, law=law,
                             n_boot=n_boot, seed=seed) for c in _read(curve, direction, scale)]
    emit([p.to_dict() for p in plans], as_json, _render_plans)


def _render_plans(plans: list[dict]) -> None:
    for p in plans:
        console.print(f"[bold]{p['curve']}[/]: target {p['target']:g}, now {p['n0']:,.0f}, expected cost "
                      f"{p['expected_cost']:,.4g}, risk of failure {p['risk']:.1%}")
        if p["note"]:
            console.print(f"  note: {p['note']}")
        rows = [(i + 1, a, t) for i, (a, t) in enumerate(zip(p["amounts"], p["totals"]))]
        console.print(table(None, ["round", "collect", "total"], rows))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
    app.command("plan")(plan)
