"""Page: collection plan — how much to collect in each round (LOC, as ``assay plan``) beside the naive estimate."""

from __future__ import annotations

import json
import math

import pandas as pd
import streamlit as st

from actors.core.errors import UserError
from estimators.loc import DEFAULT_CAP_FACTOR

from apps.planner import charts, data
from apps.planner.common import fmt_amount, fmt_n, run_page
from apps.planner.widgets import default_target, pick_curve

DEFAULT_SOURCES = pd.DataFrame([{"source": "labeled", "cost per sample": 1.0, "value": 1.0, "available": None}])


def _sources(table: pd.DataFrame) -> tuple[tuple[str, float, float, float], ...]:
    """Validated ``(name, cost, value, available)`` rows from the sources editor (a user error names the row)."""
    out = []
    for i, r in enumerate(table.to_dict("records"), start=1):
        name = str(r.get("source") or f"source {i}").strip()
        try:
            cost = float(r.get("cost per sample"))
            value = float(r.get("value") if r.get("value") is not None and r.get("value") == r.get("value") else 1.0)
            avail = r.get("available")
            avail = math.inf if avail is None or avail != avail else float(avail)
        except (TypeError, ValueError):
            raise UserError(f"sources row {i} ({name!r}): cost, value and available must be numbers") from None
        if not (cost > 0 and math.isfinite(cost)):
            raise UserError(f"sources row {i} ({name!r}): 'cost per sample' must be > 0, got {cost:g}")
        if not value > 0:
            raise UserError(f"sources row {i} ({name!r}): 'value' must be > 0, got {value:g}")
        if not avail > 0:
            raise UserError(f"sources row {i} ({name!r}): 'available' must be > 0 (empty: unlimited), got {avail:g}")
        out.append((name, cost, value, avail))
    if not out:
        raise UserError("add at least one source with a cost per sample")
    if len({n for n, *_ in out}) != len(out):
        raise UserError("sources: every source needs a distinct name")
    return tuple(out)


def render() -> None:
    st.title("Collection plan")
    st.caption("How much data to collect in each round so that the target is met at the lowest expected cost: "
               "Learn-Optimize-Collect (same computation as `assay plan`), beside the naive plan that collects the "
               "uncorrected point estimate at once.")
    pts = pick_curve("plan")
    if pts is None:
        return
    top = 100.0 if pts.scale == "percent" else 1.0
    n0 = pts.n[-1]
    c1, c2, c3 = st.columns(3)
    target = c1.number_input("Target", min_value=0.0, max_value=top, value=default_target(pts),
                             step=0.5 if pts.scale == "percent" else 0.005, format="%.4g",
                             key=f"plan_target_{pts.name}")
    rounds = int(c2.number_input("Rounds", 1, 10, 3, 1, key="plan_rounds"))
    max_total = c3.number_input("Cap on the total (samples)", min_value=1.0, value=float(DEFAULT_CAP_FACTOR * n0),
                                step=float(n0), format="%.0f", key=f"plan_cap_{pts.name}",
                                help=f"default {DEFAULT_CAP_FACTOR:g}x the current size, as `assay plan` without "
                                     "--max-total")
    c4, c5 = st.columns(2)
    mode = c4.radio("Missing the target costs", ["a penalty", "an acceptable risk"], horizontal=True,
                    key="plan_mode")
    if mode == "a penalty":
        penalty, risk = float(c5.number_input("Penalty (cost of missing the target)", min_value=0.0,
                                              value=float(10 * n0), step=float(n0), format="%.0f",
                                              key="plan_penalty")), None
    else:
        penalty, risk = None, float(c5.number_input("Acceptable risk of missing", 0.001, 0.5, 0.05, 0.01,
                                                    format="%.3f", key="plan_risk"))
    st.markdown("**Sources** (cost per sample; value = effective samples per sample; available empty = unlimited)")
    table = st.data_editor(DEFAULT_SOURCES, num_rows="dynamic", key="plan_sources", hide_index=True,
                           width="stretch")
    sources = _sources(table)
    if max_total < n0:
        raise UserError(f"the cap on the total ({max_total:,.0f}) is below the current size ({n0:,.0f})")
    out = data.collection_plan(pts, float(target), sources, penalty, risk, rounds, float(max_total))
    loc, naive = out["loc"], out["naive"]
    if naive is None:
        st.warning(f"Nothing to plan: {loc['note']}")
        return

    m1, m2, m3 = st.columns(3)
    m1.metric("LOC: total after the last round", fmt_n(loc["totals"][-1]))
    m2.metric("LOC: risk of missing", f"{loc['risk']:.1%}")
    m3.metric("LOC: expected cost", fmt_amount(loc["expected_cost"]))
    n1, n2, n3 = st.columns(3)
    n1.metric("Naive: collect to", fmt_n(naive["total"]), help=f"{naive['law']} estimate, τ = 1")
    n2.metric("Naive: risk of missing", f"{naive['risk']:.1%}")
    n3.metric("Naive: expected cost", fmt_amount(naive["expected_cost"]))
    status = loc.get("status", "plan")
    if loc["note"] or status != "plan":
        st.warning(f"Plan status **{status}**" + (f": {loc['note']}" if loc["note"] else ""))
    if naive["capped"]:
        st.caption("The naive estimate is beyond the cap (or unreachable); its plan stops at the cap.")
    st.caption(f"Risks are 1 − F(total) under the requirement distribution F that LOC learns from the curve. "
               f"Default used: {out['default']}.")

    rows, chart_rows = [], [{"plan": "LOC", "round": 0, "total": n0, "risk": 1.0},
                            {"plan": "naive", "round": 0, "total": n0, "risk": 1.0}]
    for i, (a, t, r) in enumerate(zip(loc["amounts"], loc["totals"], loc["risk_after"]), start=1):
        row = {"round": i, "collect": round(a), "cumulative total": round(t), "risk after round": round(r, 4)}
        for name, v in (loc["per_source"][i - 1].items() if loc["per_source"] else ()):
            row[f"from {name}"] = round(v)
        rows.append(row)
        chart_rows.append({"plan": "LOC", "round": i, "total": t, "risk": r})
    chart_rows.append({"plan": "naive", "round": 1, "total": naive["total"], "risk": naive["risk"]})
    st.subheader("LOC schedule")
    plan_df = pd.DataFrame(rows)
    st.dataframe(plan_df, hide_index=True, width="stretch")
    st.altair_chart(charts.plan_charts(pd.DataFrame(chart_rows)))

    payload = {"curve": pts.name, "target": float(target), "rounds": rounds, "max_total": float(max_total),
               "penalty": penalty, "risk": risk,
               "sources": [{"name": n, "cost": c, "value": v, "available": None if math.isinf(a) else a}
                           for n, c, v, a in sources],
               "loc": loc, "naive": naive, "default": out["default"]}
    d1, d2 = st.columns(2)
    d1.download_button("Download plan (JSON)", json.dumps(_finite(payload), indent=1, allow_nan=False),
                       file_name="collection_plan.json", mime="application/json", key="plan_json")
    d2.download_button("Download schedule (CSV)", plan_df.to_csv(index=False), file_name="collection_plan.csv",
                       mime="text/csv", key="plan_csv")


def _finite(o):
    """The payload with inf/NaN as None (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


run_page(render)
