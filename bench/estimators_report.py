"""Markdown tables and target checks for ``bench/estimators.py`` (kept apart so the runner stays readable)."""

from __future__ import annotations

import math

DEFAULT_MEDIAN_MAX = 0.85
DEFAULT_UNREACHABLE_MAX = 0.05
LOC_POLICIES = ("loc", "loc+past")


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def _num(v, fmt=".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "inf" if isinstance(v, float) and math.isinf(v) else format(v, fmt)


def verdicts(rep) -> list[dict]:
    """The issue's targets, checked on this run's numbers: one dict per check with ``met`` and the figures."""
    out = []
    e = rep["estimation"].get("0.1")
    if e:
        d = e["stats"]["default CLI"]
        out.append({"check": "default CLI at 10%: median |log(n̂/n*)| <= 0.85 and <= 5% unreachable",
                    "median_abs_log": d["median_abs_log"], "unreachable_share": d["unreachable_share"],
                    "met": d["median_abs_log"] <= DEFAULT_MEDIAN_MAX
                    and d["unreachable_share"] <= DEFAULT_UNREACHABLE_MAX})
    sim = rep["simulation"]["by_cap"]["truth"]
    for T in ("3", "5"):
        ref, cap = sim[T]["power+tau"], sim[T]["cap"]
        for k in LOC_POLICIES:
            v = sim[T][k]
            out.append({"check": f"T={T} {k}: fails less than power+tau, lower median cost than collect-to-cap",
                        "failure_rate": v["failure_rate"], "power_tau_failure_rate": ref["failure_rate"],
                        "cost_all_median": v["cost_all_median"], "cap_cost_all_median": cap["cost_all_median"],
                        "cost_ratio_median": v["cost_ratio_median"], "cap_cost_ratio_median": cap["cost_ratio_median"],
                        "met": v["failure_rate"] < ref["failure_rate"]
                        and v["cost_all_median"] < cap["cost_all_median"]})
    return out


def _estimation(rep) -> list[str]:
    out = []
    for frac, e in rep["estimation"].items():
        out.append(f"\n## Estimation on held-out datasets, fit on points up to {float(frac):.0%} of the largest size "
                   f"({e['curves']} curves, median {e['points_median']:.0f} points)\n")
        out.append("| estimator | curves | median abs log(n̂/n*) | median n̂/n* | under-estimates | unreachable | "
                   "answer kinds |")
        out.append("|---|---|---|---|---|---|---|")
        for k, s in e["stats"].items():
            kinds = ", ".join(f"{a} {_pct(b)}" for a, b in s.get("status_share", {}).items())
            out.append(f"| {k} | {s['curves']} | {_num(s['median_abs_log'])} | {_num(s['ratio_median'])} | "
                       f"{_pct(s['under_share'])} | {_pct(s['unreachable_share'])} | {kinds} |")
        d = e["stats"]["default CLI"]
        out.append(f"\nDefault CLI: law used {', '.join(f'{k} {v:.0%}' for k, v in e['default_law_share'].items())}; "
                   f"median |log| on its open-ended answers {_num(d.get('open_median_abs_log'))}; "
                   f"{e['default_ms_median']:.0f} ms per estimate (median, bootstrap included). 'unreachable' for "
                   f"the default and --past is the status (interval excludes the target); for the other rows it is "
                   f"an infinite point estimate. Every curve here reaches its target.")
    return out


def _simulation(rep) -> list[str]:
    s = rep["simulation"]
    out = []
    titles = {"truth": "cap = the truth curve's largest size (told to the policies)",
              "team": f"cap = {s['team_cap_x']:g}× the current size (the CLI default); the truth is measurable only "
                      f"up to its largest size"}
    for cap, by_t in s["by_cap"].items():
        out.append(f"\n## Simulated collection, {titles[cap]} ({s['curves']} curves, start at 10%, cost 1/sample, "
                   f"LOC risk ε = {s['loc_risk']}, failure penalty {s['penalty_x']:g}× the cap reference's cost)\n")
        out.append("| T | policy | failure rate | ended at cap | asked beyond the truth | median cost ratio "
                   "(successes) | median cost ratio (all, penalty) | mean cost ratio (all) | mean rounds |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for T, d in by_t.items():
            for k, v in d.items():
                out.append(f"| {T} | {k} | {_pct(v['failure_rate'])} | {_pct(v['at_cap_share'])} | "
                           f"{_pct(v['beyond_share'])} | {_num(v['cost_ratio_median'])} | "
                           f"{_num(v['cost_all_median'])} | {_num(v['cost_all_mean'])} | {v['rounds_mean']:.2f} |")
    return out


def render_markdown(rep, argv) -> str:
    """The whole report as markdown (the command, the tables, the targets)."""
    cmds = rep.get("commands") or [rep.get("command", "python bench/estimators.py " + " ".join(argv))]
    cmd = "` and `".join(cmds)
    out = ["# Data-requirement estimators, the shipped prior and LOC on LCDB\n",
           f"Command: `{cmd}` (wall {rep['wall_s']:.0f} s). Source: {rep['source']}; {rep['data']['curves']} curves "
           f"on {rep['data']['datasets']} datasets, {rep['data']['usable_10pct']} usable at 10%; "
           f"{rep['args']['folds']} folds by dataset.\n"]
    fp = rep["fold_priors"]
    out.append("Fold priors (learned on the other folds): " + "; ".join(
        f"fold {f}: {' > '.join(v['ranking'])} ({v['n_curves']} curves, power τ {v['tau']['power']:.2f})"
        for f, v in fp.items()) + ".")
    out += _estimation(rep)
    t20 = ", ".join(f"{k} {v['mean']:.1f} (max {v['max']:.0f})" for k, v in rep["fit_ms_20_points"].items())
    out.append(f"\nms per fit on 20-point curves (serial): {t20}.")
    out += _simulation(rep)
    out.append("\n## Targets\n")
    for v in rep["targets"]:
        figs = ", ".join(f"{k} {_num(x) if not k.endswith('rate') and not k.endswith('share') else _pct(x)}"
                         for k, x in v.items() if k not in ("check", "met"))
        out.append(f"- {v['check']}: **{'met' if v['met'] else 'not met'}** ({figs})")
    out.append("\ncost ratio = collected / oracle − 1 (oracle = exactly n* − n0). 'all, penalty' counts every "
               "measurable run and adds the penalty to failed ones. cap = collect up to the cap in round 1. "
               "loc = the paper's bootstrap + KDE; loc+past = draws × the fold prior's past error ratios. Runs that "
               f"ask beyond the truth's largest size are not successes and are left out of the failure rate.\n\n"
               f"{rep['paper_note']}\n")
    return "\n".join(out)
