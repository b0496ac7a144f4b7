"""Widgets shared by the data-requirements and collection-plan pages: the learning-curve picker."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from apps.planner import data
from apps.planner.common import workspace, workspace_label

LAST_CURVE = "planner_last_curve"
SOURCES = ("Workspace run", "Upload a file", "Curve from the other page")


def pick_curve(prefix: str) -> data.CurvePoints | None:
    """Let the user pick a learning curve: a run's ``curve.parquet``, an uploaded CSV/Parquet (columns ``n``,
    ``value`` [, ``seed``, ``curve``]), or the curve last used on another page. Returns None until one is chosen;
    bad input raises a user error (shown by the page guard)."""
    ws = workspace()
    runs = data.curve_runs(ws)
    options = [s for s in SOURCES if (s != SOURCES[0] or runs) and (s != SOURCES[2] or LAST_CURVE in st.session_state)]
    src = st.radio("Learning curve from", options, horizontal=True, key=f"{prefix}_source")
    if src == SOURCES[2]:
        pts = st.session_state[LAST_CURVE]
        st.caption(f"Curve {pts.name!r}: {len(pts.n)} points, {pts.direction} is better, {pts.scale}.")
        return pts
    if not runs:
        st.caption(f"No run in `{workspace_label(ws.uri)}/runs/` has a `curve.parquet` yet (`assay learn` writes one); "
                   "upload a file.")
    if src == SOURCES[0]:
        labels = data.run_labels(ws, runs)
        run = st.selectbox("Run", runs, key=f"{prefix}_run", format_func=labels.get)
        df = data.run_curve(ws, run)
        metrics = list(dict.fromkeys(df["metric"]))
        metric = st.selectbox("Metric", metrics, key=f"{prefix}_metric") if len(metrics) > 1 else metrics[0]
        sub = df[df["metric"] == metric]
        table = pd.DataFrame({"n": sub["n_labeled"], "value": sub["value"]})
        if "seed" in sub.columns:
            table["seed"] = sub["seed"]
        source = f"runs/{run}/{data.CURVE_FILE}"
        name = f"{run}:{metric}"
    else:
        up = st.file_uploader("Learning curve (.csv or .parquet; columns n, value, optional seed, curve)",
                              type=["csv", "parquet", "pq"], key=f"{prefix}_upload")
        if up is None:
            st.caption("Upload a file to continue.")
            return None
        metric = st.text_input("Metric", "mAP@.5", key=f"{prefix}_metric_name",
                               help="What the uploaded values are (it titles the chart's axis)")
        kind = data.upload_kind(up.name)
        table = data.read_upload(up.getvalue(), kind)
        source, name = f"uploaded.{kind}", None
    c1, c2 = st.columns(2)
    direction = c1.selectbox("Better is", ["higher", "lower"], key=f"{prefix}_direction",
                             help="'higher' for a score (mAP, accuracy), 'lower' for an error or a loss")
    guess = data.guess_scale(table["value"]) if "value" in table.columns else "percent"
    scale = c2.selectbox("Scale", ["percent", "fraction"], index=["percent", "fraction"].index(guess),
                         key=f"{prefix}_scale_{guess}", help="percent: 0-100; fraction: 0-1")
    curves = [data.CurvePoints(c.n, c.value, c.spread, c.n_seeds, name or c.name, c.direction, c.scale, metric)
              for c in data.curves_from_table(table, source, direction, scale)]
    if len(curves) > 1:
        names = [c.name for c in curves]
        pick = st.selectbox("Curve", names, key=f"{prefix}_curve")
        pts = curves[names.index(pick)]
    else:
        pts = curves[0]
    st.session_state[LAST_CURVE] = pts
    return pts


def default_target(pts: data.CurvePoints) -> float:
    """A starting target: halfway again past the last measured gain, inside the scale (the user changes it)."""
    top = 100.0 if pts.scale == "percent" else 1.0
    v = list(pts.value)
    last, first = v[-1], v[0]
    gain = abs(last - first) * 0.25 or top * 0.02
    t = last + gain if pts.direction == "higher" else last - gain
    t = min(max(t, 0.0), top)
    return float(round(t, 2 if pts.scale == "percent" else 4))
