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
    for r in data.report_runs(ws):
        try:
            view = data.compression_view(data.run_report(ws, r))
        except (ValueError, UserError) as e:  # one unreadable run must not hide the others
            problems.append(str(e))
            continue
        if view is not None:
            reports[r] = view
    for p in problems:
        st.warning(f"Skipped: {p}")
    if not reports:
        missing(f"No compression report in `{ws.uri}/runs/`: no `runs/<run_id>/report.json` with "
                '`"kind": "compression"` and its variants (name, latency_ms, map).',
                f"assay compress --workspace {ws.uri} …")
        return
    run = st.selectbox("Report", list(reports), key="comp_run")
    variants, layers = reports[run]
    if variants.empty:
        st.warning(f"runs/{run}/report.json lists no variant with both a latency and a quality value.")
    else:
        quality = variants["quality_field"].iloc[0]
        st.altair_chart(charts.latency_chart(variants, quality), width="stretch")
        st.dataframe(variants.drop(columns=["quality_field"]).rename(columns={"quality": quality}),
                     hide_index=True, width="stretch")
    st.subheader("Per-layer plan")
    if layers.empty:
        st.info(f"runs/{run}/report.json has no per-layer plan (a list under 'layers').")
    else:
        st.dataframe(layers, hide_index=True, width="stretch")


run_page(render)
