"""Altair charts of the planner (pure functions of DataFrames, so they are testable without a browser)."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd


def curve_chart(points: pd.DataFrame, lines: pd.DataFrame, band: pd.DataFrame, target: float,
                required: float | None, metric: str = "value") -> alt.LayerChart:
    """Measured points, each law's fitted curve, the bootstrap band of the chosen law, the target (horizontal rule)
    and the recommended size (vertical rule). ``points``: n, value; ``lines``: law, n, value; ``band``: n, lo, hi."""
    x = alt.X("n:Q", scale=alt.Scale(type="log"), title="training-set size n")
    layers = []
    if len(band):
        layers.append(alt.Chart(band).mark_area(opacity=0.2, color="#4c78a8").encode(
            x=x, y=alt.Y("lo:Q", title=metric, scale=alt.Scale(zero=False)), y2="hi:Q"))
    if len(lines):
        layers.append(alt.Chart(lines).mark_line().encode(
            x=x, y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            color=alt.Color("law:N", title="law", scale=alt.Scale(scheme="category10"))))
    layers.append(alt.Chart(points).mark_circle(size=70, color="black").encode(
        x=x, y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)), tooltip=["n", "value"]))
    layers.append(alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[6, 4], color="#e45756")
                  .encode(y="target:Q"))
    if required is not None and math.isfinite(required):
        layers.append(alt.Chart(pd.DataFrame({"n": [required]})).mark_rule(color="#e45756").encode(x="n:Q"))
    return alt.layer(*layers).properties(height=380)


def plan_charts(rows: pd.DataFrame) -> alt.HConcatChart:
    """Cumulative data per round and the risk of missing the target after each round, one line per plan.
    ``rows``: plan, round, total, risk."""
    base = alt.Chart(rows).encode(x=alt.X("round:O", title="round"), color=alt.Color("plan:N", title="plan"))
    total = base.mark_line(point=True).encode(y=alt.Y("total:Q", title="cumulative samples"),
                                              tooltip=["plan", "round", "total"]).properties(height=300, width=320)
    risk = base.mark_line(point=True).encode(y=alt.Y("risk:Q", title="risk of missing the target",
                                                     axis=alt.Axis(format="%")),
                                             tooltip=["plan", "round", "risk"]).properties(height=300, width=320)
    return alt.hconcat(total, risk)


def curves_chart(df: pd.DataFrame, color: str = "strategy") -> alt.Chart:
    """Learning curves of several runs: n_labeled vs value, one line per ``color`` value."""
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("n_labeled:Q", title="labeled images"), y=alt.Y("value:Q", title="value"),
        color=alt.Color(f"{color}:N"), tooltip=["run_id", "strategy", "round", "n_labeled", "value"],
    ).properties(height=340)


def latency_chart(df: pd.DataFrame, quality: str) -> alt.LayerChart:
    """Compression variants: latency (ms) vs quality, labelled by name."""
    base = alt.Chart(df).encode(x=alt.X("latency_ms:Q", title="latency (ms)"),
                                y=alt.Y("quality:Q", title=quality, scale=alt.Scale(zero=False)))
    return alt.layer(base.mark_point(size=80, filled=True).encode(tooltip=["name", "latency_ms", "quality"]),
                     base.mark_text(dx=8, align="left").encode(text="name:N")).properties(height=340)
