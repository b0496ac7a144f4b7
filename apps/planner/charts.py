"""Altair charts of the planner (pure functions of DataFrames, so they are testable without a browser)."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd


def y_domain(values, target: float, top: float) -> list[float]:
    """The y range of a learning-curve chart: the measured values and the target with a margin, inside the
    metric's range [0, ``top``] (a fitted law extrapolated far past the data never stretches the axis)."""
    lo, hi = min(min(values), target), max(max(values), target)
    pad = max(0.1 * (hi - lo), 0.02 * top)
    return [max(0.0, lo - pad), min(top, hi + pad)]


def curve_chart(points: pd.DataFrame, lines: pd.DataFrame, band: pd.DataFrame, target: float,
                required: float | None, metric: str = "value", top: float = 100.0) -> alt.LayerChart:
    """Measured points, each law's fitted curve, the bootstrap band of the chosen law, the target (horizontal rule)
    and the recommended size (vertical rule). ``points``: n, value; ``lines``: law, n, value; ``band``: n, lo, hi.
    ``metric`` titles the y axis (e.g. ``"mAP@.5 (%)"``), which is clipped to :func:`y_domain` within [0, ``top``]."""
    x = alt.X("n:Q", scale=alt.Scale(type="log"), title="training-set size n")
    scale = alt.Scale(domain=y_domain(points["value"], target, top), zero=False)
    layers = []
    if len(band):
        layers.append(alt.Chart(band).mark_area(opacity=0.2, color="#4c78a8", clip=True).encode(
            x=x, y=alt.Y("lo:Q", title=metric, scale=scale), y2="hi:Q"))
    if len(lines):
        layers.append(alt.Chart(lines).mark_line(clip=True).encode(
            x=x, y=alt.Y("value:Q", title=metric, scale=scale),
            color=alt.Color("law:N", title="law", scale=alt.Scale(scheme="category10"))))
    layers.append(alt.Chart(points).mark_circle(size=70, color="black").encode(
        x=x, y=alt.Y("value:Q", title=metric, scale=scale), tooltip=["n", "value"]))
    layers.append(alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[6, 4], color="#e45756")
                  .encode(y=alt.Y("target:Q", title=metric, scale=scale)))
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


def curves_chart(df: pd.DataFrame, color: str = "run", metric: str = "value") -> alt.Chart:
    """Learning curves of several runs: n_labeled vs value (titled ``metric``), one line per ``color`` value (by
    default the run's label: strategy, seed and date, so runs of one strategy are told apart)."""
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("n_labeled:Q", title="labeled images"), y=alt.Y("value:Q", title=metric),
        color=alt.Color(f"{color}:N", title=color), tooltip=["run", "strategy", "round", "n_labeled", "value"],
    ).properties(height=340)


def latency_chart(df: pd.DataFrame, quality: str) -> alt.LayerChart:
    """Compression variants: latency (ms) vs quality, labelled by name."""
    base = alt.Chart(df).encode(x=alt.X("latency_ms:Q", title="latency (ms)"),
                                y=alt.Y("quality:Q", title=quality, scale=alt.Scale(zero=False)))
    return alt.layer(base.mark_point(size=80, filled=True).encode(tooltip=["name", "latency_ms", "quality"]),
                     base.mark_text(dx=8, align="left").encode(text="name:N")).properties(height=340)
