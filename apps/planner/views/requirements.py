"""Page: data requirements — how many samples reach the target, per law and recommended (``assay estimate``)."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from apps.planner import charts, data
from apps.planner.common import fmt_n, run_page
from apps.planner.widgets import default_target, pick_curve

PER_LAW_BOOT = 100  # resamples per law for the per-law intervals (the recommended estimate uses the page's)
PRIOR_ERROR = "prior's selection error"
PRIOR_ERROR_HELP = ("how far each law's extrapolation missed on the prior's past curves (what ranks the laws for "
                    "'auto'); the same for every curve, not a measure of this curve's fit.")


def _x_max(res: dict, n0: float) -> float:
    """Where the chart ends: past the interval's upper end (or the estimate), at most 1e9."""
    hi = res["interval"][1]
    req = res["required_n"]
    end = hi if hi is not None else (req * 2 if req is not None else n0 * 20)
    return float(min(max(end * 1.2, n0 * 2), 1e9))


def render() -> None:
    st.title("Data requirements")
    st.caption("How many training samples reach the target? Every law is fitted to the learning curve; the "
               "recommended estimate carries a bootstrap interval and the correction factor τ "
               "(same computation as `assay estimate`).")
    pts = pick_curve("req")
    if pts is None:
        return
    top = 100.0 if pts.scale == "percent" else 1.0
    c1, c2, c3 = st.columns(3)
    target = c1.number_input("Target", min_value=0.0, max_value=top, value=default_target(pts),
                             step=0.5 if pts.scale == "percent" else 0.005, format="%.4g", key=f"req_target_{pts.name}")
    level = c2.slider("Interval coverage", 0.5, 0.95, 0.8, 0.05, key="req_level")
    n_boot = int(c3.number_input("Bootstrap resamples", 50, 1000, 200, 50, key="req_nboot"))
    res = data.requirement(pts, float(target), level=float(level), n_boot=n_boot)
    n0 = res["current_n"]

    req = res["required_n"]
    lo, hi = res["interval"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Required n (recommended)", fmt_n(req), help=f"status: {res['status']}")
    m2.metric(f"{res['level']:.0%} interval", f"{fmt_n(lo)} – {fmt_n(hi)}")
    m3.metric("Additional samples", fmt_n(res["additional_n"]), help=f"now {fmt_n(n0)}")
    st.markdown(f"Law **{res['law']}**, correction factor **τ = {res['tau']:.3g}** (applied to the additional "
                f"data); status **{res['status']}**. Default used: {res['default']}.")
    if res["reason"]:
        st.warning(res["reason"])

    x_max = _x_max(res, n0)
    lines = data.fitted_lines(pts, x_max)
    try:
        band = data.bootstrap_band(pts, res["law"], x_max, level=float(level))
    except ValueError:  # the chosen law cannot be refitted: the chart shows no band
        band = pd.DataFrame(columns=["n", "lo", "hi"])
    points = pd.DataFrame({"n": pts.n, "value": pts.value})
    st.altair_chart(charts.curve_chart(points, lines, band, float(target), req if req is not None else math.inf,
                                       metric=data.metric_label(pts.metric, pts.scale), top=top), width="stretch")
    st.caption("Black: measured points. Lines: each law's fit. Shaded: the bootstrap band of the chosen law. "
               "Dashed: the target; solid vertical: the recommended size (after τ).")

    st.subheader("Required n per law")
    intervals = st.toggle("Bootstrap interval for every law (as `assay estimate --law LAW`; slower)", value=False,
                          key="req_per_law", help=f"{PER_LAW_BOOT} resamples per law")
    per_law = {}
    if intervals:
        per_law = {p["law"]: data.law_requirement(pts, float(target), p["law"], level=float(level),
                                                  n_boot=min(n_boot, PER_LAW_BOOT))
                   for p in res["per_law"] if not p["reason"] or "cannot fit" not in p["reason"]}
    rows = []
    for p in res["per_law"]:
        row = {"law": p["law"], "fit (before τ)": fmt_n(p["required_n"])}
        r = per_law.get(p["law"])
        if r is not None:
            row.update({"τ": round(r["tau"], 3), "required n": fmt_n(r["required_n"]),
                        f"{res['level']:.0%} interval": f"{fmt_n(r['interval'][0])} – {fmt_n(r['interval'][1])}",
                        "status": r["status"]})
        row.update({"fit rmse": None if p["rmse"] is None or not math.isfinite(p["rmse"]) else round(p["rmse"], 4),
                    PRIOR_ERROR: res["selection_error"].get(p["law"]), "note": p["reason"] or ""})
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={PRIOR_ERROR: st.column_config.
                 NumberColumn(help=PRIOR_ERROR_HELP, format="%.3f")})
    st.caption(f"*{PRIOR_ERROR}*: {PRIOR_ERROR_HELP} *fit rmse* is this curve's own fit.")

run_page(render)
