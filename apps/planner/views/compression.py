"""Page: compression — latency vs quality of the compressed variants and the per-layer plan
(``runs/<run_id>/report.json``). Every speed-up is shown beside its mAP change, and a variant that loses more than
:data:`actors.compression.verdict.MAX_MAP_DROP` of the original's mAP gets the warning ``assay compress`` prints."""

from __future__ import annotations

import streamlit as st

from actors.compression.verdict import drop_warning
from actors.core.errors import UserError

from apps.planner import charts, data
from apps.planner.common import missing, run_page, workspace


def _verdicts(variants, rep: dict) -> None:
    """Per compressed variant: its latency with the speed-up, its mAP with the change, and the drop warning."""
    base = variants[variants["name"] == "original"]
    if not len(base) or len(variants) < 2:
        return
    ref = base.iloc[0]
    original = rep.get("models", {}).get("original", {})
    n_images = original.get("accuracy", {}).get("n_images") if isinstance(original.get("accuracy"), dict) else None
    for r in variants[variants["name"] != "original"].itertuples():
        c1, c2 = st.columns(2)
        c1.metric(f"{r.name}: latency", f"{r.latency_ms:.1f} ms", f"{ref.latency_ms / r.latency_ms:.2f}x faster",
                  delta_color="off")
        c2.metric(f"{r.name}: {r.quality_field}", f"{r.quality:.1f}", f"{r.quality - ref.quality:+.1f} points",
                  delta_color="normal")
        if str(r.quality_field).endswith("(%)"):
            line = drop_warning(r.name, ref.quality / 100, r.quality / 100, config=rep.get("config"),
                                n_images=n_images)
            if line:
                st.warning(line)


def render() -> None:
    st.title("Compression")
    st.caption("The compression reports in this workspace: latency against quality for each compressed variant, "
               "and the per-layer plan.")
    ws = workspace()
    reports, problems = {}, []
    for rel in data.report_files(ws):
        try:
            rep = data.read_report(ws, rel)
            view = data.compression_view(rep)
        except (ValueError, UserError) as e:  # one unreadable report must not hide the others
            problems.append(str(e))
            continue
        if view is not None:
            reports[rel] = view, rep
    for p in problems:
        st.warning(f"Skipped: {p}")
    if not reports:
        missing(f"No compression report under `{ws.uri}/runs/`: no `runs/<run_id>/report.json` (or "
                "`runs/<run_id>/<folder>/report.json`) with the variants' latency and mAP.",
                f"assay compress --workspace {ws.uri} --run RUN_ID --out {ws.uri}/runs/RUN_ID/compressed")
        return
    run = st.selectbox("Report", list(reports), key="comp_run")
    (variants, layers), rep = reports[run]
    _verdicts(variants, rep)
    if variants.empty:
        st.warning(f"{run} lists no variant with both a latency and a quality value.")
    else:
        quality = variants["quality_field"].iloc[0]
        st.altair_chart(charts.latency_chart(variants, quality), width="stretch")
        table = variants.drop(columns=["quality_field"]).rename(columns={"quality": quality})
        if "file_bytes" in table.columns:
            table["file_bytes"] = table["file_bytes"] / 1e6
            table = table.rename(columns={"file_bytes": "file MB"})
        st.dataframe(table, hide_index=True, width="stretch")
        if "file MB" in table.columns:
            counts = rep.get("file_bytes") if isinstance(rep.get("file_bytes"), str) else (
                "the size of the file named in the *file* column" if "file" in table.columns else "as the report "
                "counts it")
            st.caption(f"file MB: {counts}.")
    st.subheader("Per-layer plan")
    if layers.empty:
        st.info(f"{run} has no per-layer plan (plan.layers).")
    else:
        st.dataframe(layers, hide_index=True, width="stretch")


run_page(render)
