"""Page: compression — latency vs quality of the compressed variants and the per-layer plan
(``runs/<run_id>/report.json``)."""

from __future__ import annotations

import streamlit as st

from actors.core.errors import UserError

from apps.planner import charts, data
from apps.planner.common import missing, run_page, workspace


def render() -> None:
    st.title("Compression")
    st.caption("The compression reports in this workspace: latency against quality for each compressed variant, "
               "and the per-layer plan.")
    ws = workspace()
    reports, problems = {}, []
    for rel in data.report_files(ws):
        try:
            view = data.compression_view(data.read_report(ws, rel))
        except (ValueError, UserError) as e:  # one unreadable report must not hide the others
            problems.append(str(e))
            continue
        if view is not None:
            reports[rel] = view
    for p in problems:
        st.warning(f"Skipped: {p}")
    if not reports:
        missing(f"No compression report under `{ws.uri}/runs/`: no `runs/<run_id>/report.json` (or "
                "`runs/<run_id>/<folder>/report.json`) with the variants' latency and mAP.",
                f"assay compress --workspace {ws.uri} --run RUN_ID --out {ws.uri}/runs/RUN_ID/compressed")
        return
    run = st.selectbox("Report", list(reports), key="comp_run")
    variants, layers = reports[run]
    base = variants[variants["name"] == "original"]
    if len(base) and len(variants) > 1:
        ref = base.iloc[0]
        for r in variants[variants["name"] != "original"].itertuples():
            st.metric(f"{r.name}: latency", f"{r.latency_ms:.1f} ms", f"{ref.latency_ms / r.latency_ms:.2f}x faster",
                      delta_color="off")
    if variants.empty:
        st.warning(f"{run} lists no variant with both a latency and a quality value.")
    else:
        quality = variants["quality_field"].iloc[0]
        st.altair_chart(charts.latency_chart(variants, quality), width="stretch")
        st.dataframe(variants.drop(columns=["quality_field"]).rename(columns={"quality": quality}),
                     hide_index=True, width="stretch")
    st.subheader("Per-layer plan")
    if layers.empty:
        st.info(f"{run} has no per-layer plan (plan.layers).")
    else:
        st.dataframe(layers, hide_index=True, width="stretch")


run_page(render)
