"""``assay estimate`` and ``assay plan``: data requirements and LOC collection schedules from a learning-curve file.

Both learn from past learning curves what makes an estimate usable — which law extrapolates best and by how much it
under-estimates (τ). By default that comes from the prior shipped with Assay (learned on LCDB 0.1.0, see
:mod:`estimators.prior`); ``--past FILE`` or ``--past workspace`` (every ``runs/*/curve.parquet`` of the workspace)
replaces it with your own curves. The output says which one was used.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from actors.core.errors import UserError
from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, SeedOpt, WorkspaceOpt
from apps.cli.output import console, emit, styled, table, whole_samples

CurveArg = Annotated[str, typer.Argument(help="Learning-curve file (.csv/.parquet/.json: n, value[, seed, curve]).")]
TargetOpt = Annotated[float, typer.Option("--target", help="Target metric value, in the file's units.")]
DirectionOpt = Annotated[str, typer.Option("--direction", help="'higher' (score) or 'lower' (error) is better.")]
ScaleOpt = Annotated[str, typer.Option("--scale", help="Values are 'percent' (0-100) or 'fraction' (0-1).")]
PastOpt = Annotated[Optional[str], typer.Option(
    "--past", help="Your own past learning curves instead of the shipped LCDB prior: a file (same format, same "
                   "metric) or 'workspace' (every runs/*/curve.parquet in --workspace). They rank the laws for "
                   "'--law auto' and give each law its τ.")]
PastFractionOpt = Annotated[float, typer.Option("--past-fraction", help="Prefix of each past curve fitted (share of "
                                                                        "its largest size).")]
PastMarginOpt = Annotated[float, typer.Option("--past-margin", help="Past target = final value minus this (score "
                                                                    "points, percent).")]
WORKSPACE = "workspace"


def _read(path: str, direction: str, scale: str):
    from pathlib import Path

    from estimators.curves import read_curves

    if "://" not in path and not Path(path).exists():
        raise UserError(f"{path}: no such curve file")
    return read_curves(path, direction=direction, scale=scale)


def _workspace_curves(workspace: str, direction: str, scale: str):
    """The learning curves of every run in the workspace (``runs/<run>/curve.parquet``), one curve per run and
    metric; runs with fewer than 3 sizes are left out."""
    from actors.core.workspace import Workspace
    from estimators.curves import CurveError, curves_from_frame

    ws = Workspace(workspace)
    curves = []
    for run in ws.listdir("runs"):
        rel = f"runs/{run}/curve.parquet"
        if not ws.exists(rel):
            continue
        df = ws.read_table(rel).to_pandas()
        missing = [c for c in ("n_labeled", "value") if c not in df.columns]
        if missing:
            raise UserError(f"{ws.path(rel)}: missing column(s) {missing}; a run curve has round, n_labeled, "
                            "metric, value")
        df = df.rename(columns={"n_labeled": "n"})
        df["curve"] = run + ("/" + df["metric"].astype(str) if "metric" in df.columns else "")
        try:
            curves += curves_from_frame(df[["n", "value", "curve"]], source=ws.path(rel), direction=direction,
                                        scale=scale)
        except CurveError:
            continue
    if not curves:
        raise UserError(f"--past workspace: no run in {ws.path('runs')} has a usable curve.parquet (>= 3 sizes)")
    return curves, f"workspace {workspace} (runs/*/curve.parquet)"


def _learned(past: str | None, workspace: str, direction: str, scale: str, fraction: float, margin: float):
    """``(selection, source line)``: the shipped prior without ``--past``, else laws ranked on the past curves."""
    from estimators.requirement import learn_selection, make_task

    if past is None:
        from estimators.prior import load_prior

        prior = load_prior()
        return prior.selection, (f"default: the shipped {prior.describe()}; --past FILE or --past workspace uses "
                                 "your own curves instead")
    curves, where = (_workspace_curves(workspace, direction, scale) if past == WORKSPACE
                     else (_read(past, direction, scale), past))
    tasks = [t for c in curves if (t := make_task(c, fraction=fraction, margin=margin))]
    if not tasks:
        raise UserError(f"--past: no curve in {where} has >= 3 points within {fraction:.0%} of its largest size "
                        f"and a target {margin:g} points below its final value")
    return learn_selection(tasks), f"--past: laws ranked and τ learned on {len(tasks)} past curve(s) from {where}"


def estimate(curve: CurveArg, target: TargetOpt,
             law: Annotated[str, typer.Option("--law", help="auto (the best-ranked law on the prior or --past "
                                                            "curves), holdout (chosen on held-back points), or a "
                                                            "law: power, arctan, log, root, m4.")] = "auto",
             level: Annotated[float, typer.Option("--level", help="Interval coverage (0-1).")] = 0.8,
             n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 200,
             tau: Annotated[Optional[float], typer.Option("--tau", help="Correction factor on the additional data "
                                                                       "(default: the law's τ from the prior or "
                                                                       "--past).")] = None,
             past: PastOpt = None, past_fraction: PastFractionOpt = 0.1, past_margin: PastMarginOpt = 1.0,
             workspace: WorkspaceOpt = DEFAULT_WORKSPACE, direction: DirectionOpt = "higher",
             scale: ScaleOpt = "percent", seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Estimate the training-set size at which each curve in CURVE reaches --target."""
    from estimators.laws import list_laws
    from estimators.requirement import Correction, estimate_requirement

    if law not in ("auto", "holdout") and law not in list_laws():
        raise UserError(f"--law: unknown law {law!r}; choose from auto, holdout, {', '.join(list_laws())}")
    if not 0 < level < 1:
        raise UserError(f"--level must be in (0, 1), got {level}")
    curves = _read(curve, direction, scale)
    selection, source = _learned(past, workspace, direction, scale, past_fraction, past_margin)
    corr = None if tau is None else Correction(tau=tau)
    results = [estimate_requirement(c, target, law=law, n_boot=n_boot, level=level, correction=corr, seed=seed,
                                    selection=selection, prior=source) for c in curves]
    emit([r.to_dict() for r in results], as_json, _render_estimates)


def _answer(r: dict) -> str:
    """The answer in words: the size and interval, and which kind of answer it is."""
    lo, hi = r["interval"]
    lvl = f"{r['level']:.0%} interval"
    if r["status"] == "unreachable":
        return f"unreachable (the {lvl} excludes the target)"
    if r["status"] == "worse":
        return "no estimate (the curve gets worse with more data)"
    if r["status"] == "reached":
        return f"already reached (first at n = {_n(r['required_n'])})"
    if r["status"] == "open":
        return f"n = {_n(r['required_n'])} ({lvl} {_n(lo)} - open: no upper bound)"
    return f"n = {_n(r['required_n'])} ({lvl} {_n(lo)} - {_n(hi)})"


def _render_estimates(results: list[dict]) -> None:
    if results and results[0].get("prior"):
        console.print(styled(("using", "bold"), f" {results[0]['prior']}"))
    for r in results:
        console.print(styled((str(r["curve"]), "bold"), f": target {r['target']:g} -> {_answer(r)}, law {r['law']}"
                             f" (τ {r['tau']:.2f}), now {r['current_n']:,.0f}"))
        if r["reason"]:
            console.print(f"  note: {r['reason']}")
        rows = [(p["law"], _n(p["required_n"]), p["rmse"], _err(r["selection_error"], p["law"]), p["reason"] or "")
                for p in r["per_law"]]
        console.print(table(None, ["law", "required n", "fit rmse", "prior's selection err", "reason"], rows))


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
         calibrate: Annotated[str, typer.Option("--calibrate", help="How the prior or --past calibrates the "
                                                                    "requirement distribution: 'past' (draws x past "
                                                                    "error ratios) or 'tau' (draws shifted by "
                                                                    "τ).")] = "past",
         workspace: WorkspaceOpt = DEFAULT_WORKSPACE, direction: DirectionOpt = "higher",
         scale: ScaleOpt = "percent", seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Plan how much data to collect in each round (LOC) for each curve in CURVE."""
    from estimators.laws import list_laws
    from estimators.loc import plan_collection

    if (penalty is None) == (risk is None):
        raise UserError("give exactly one of --penalty and --risk")
    if law not in list_laws():
        raise UserError(f"--law: unknown law {law!r}; choose from {', '.join(list_laws())}")
    curves = _read(curve, direction, scale)
    selection, source = _learned(past, workspace, direction, scale, past_fraction, past_margin)
    corr = selection.corrections.get(law)
    plans = [plan_collection(c, target, cost, penalty, rounds, risk=risk, max_total=max_total, law=law,
                             n_boot=n_boot, seed=seed, correction=corr, calibrate=calibrate) for c in curves]
    for p in plans:
        p.prior = source
    emit([p.to_dict() for p in plans], as_json, _render_plans)


def _render_plans(plans: list[dict]) -> None:
    if plans and plans[0].get("prior"):
        console.print(styled(("using", "bold"), f" {plans[0]['prior']}"))
    for p in plans:
        kind = {"open": " (open-ended: the requirement may exceed the plan)",
                "unreachable": " (unreachable: the bootstrap interval excludes the target)",
                "worse": " (nothing planned: the curve gets worse with more data)"}.get(p["status"], "")
        console.print(styled((str(p["curve"]), "bold"), f": target {p['target']:g}, now {p['n0']:,.0f}, "
                             f"expected cost {p['expected_cost']:,.4g}, risk of failure {p['risk']:.1%}{kind}"))
        if p["note"]:
            console.print(f"  note: {p['note']}")
        rows = [(i + 1, a, t) for i, (a, t) in enumerate(whole_samples(p["amounts"], p["totals"], p["n0"]))]
        console.print(table(None, ["round", "collect", "total"], rows))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
    app.command("plan")(plan)
