"""Page: active learning — learning curves per run and their round tables (``runs/<run_id>/curve.parquet``). A run
is labelled by its strategy, seed, date and id (:func:`apps.planner.data.run_label`): runs of one strategy differ."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from actors.core.errors import UserError

from apps.planner import charts, data
from apps.planner.common import missing, run_page, workspace


def render() -> None:
    st.title("Active learning")
    st.caption("Learning curves of the active-learning runs in this workspace: labeled images vs the metric, one "
               "line per run, and each run's rounds.")
    ws = workspace()
    runs = data.curve_runs(ws)
    if not runs:
        missing(f"No active-learning run in `{ws.uri}/runs/`: none has a `curve.parquet` "
                "(columns round, n_labeled, metric, value).",
                f"assay learn --workspace {ws.uri} …")
        return
    frames, problems = [], []
    for r in runs:
        try:
            frames.append(data.run_curve(ws, r))
        except (ValueError, UserError) as e:  # one unreadable run must not hide the others
            problems.append(str(e))
    for p in problems:
        st.warning(f"Skipped: {p}")
    if not frames:
        return
    df = pd.concat(frames, ignore_index=True)
    metrics = list(dict.fromkeys(df["metric"]))
    metric = st.selectbox("Metric", metrics, key="al_metric") if len(metrics) > 1 else metrics[0]
    labels = dict(zip(df["run_id"], df["run"]))
    ids = sorted(labels)
    chosen = st.multiselect("Runs", ids, default=ids, key="al_runs", format_func=labels.get)
    sub = df[(df["metric"] == metric) & df["run_id"].isin(chosen)].sort_values(["run_id", "n_labeled"])
    if sub.empty:
        st.info("Pick at least one run.")
        return
    label = data.metric_label(metric, "percent" if metric.endswith("_pct") else data.guess_scale(sub["value"]))
    st.altair_chart(charts.curves_chart(sub, metric=label), width="stretch")
    summary = (sub.groupby(["run", "strategy"], sort=True)
               .agg(rounds=("round", "nunique"), last_n=("n_labeled", "max"), best=("value", "max"),
                    last=("value", "last")).reset_index()
               .rename(columns={"last_n": "labeled images", "best": f"best {label}", "last": f"last {label}"}))
    st.subheader("Runs")
    st.dataframe(summary, hide_index=True, width="stretch")
    st.subheader("Rounds")
    run = st.selectbox("Run", chosen, key="al_round_run", format_func=labels.get)
    st.dataframe(sub[sub["run_id"] == run][["round", "n_labeled", "value"] +
                                           (["seed"] if "seed" in sub.columns else [])]
                 .rename(columns={"n_labeled": "labeled images", "value": label}),
                 hide_index=True, width="stretch")
    st.caption("Plan the next rounds on the *Data requirements* and *Collection plan* pages "
               "(pick the run there).")


run_page(render)
