"""The planner's router: ``streamlit run apps/planner/app.py`` (started by ``assay app --workspace WS``).

Multipage navigation with ``st.navigation``; each page is a script in ``apps/planner/views/``. The workspace comes
from ``$ASSAY_WORKSPACE`` (see :func:`apps.planner.common.workspace_uri`).
"""

from __future__ import annotations

import streamlit as st

from apps.planner.common import workspace_label

PAGES = (
    ("views/requirements.py", "Data requirements", ":material/trending_up:"),
    ("views/plan.py", "Collection plan", ":material/event_note:"),
    ("views/selection.py", "Targeted selection", ":material/image_search:"),
    ("views/active.py", "Active learning", ":material/model_training:"),
    ("views/compression.py", "Compression", ":material/compress:"),
)

st.set_page_config(page_title="Assay planner", page_icon=":material/insights:", layout="wide")
nav = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                     for i, (path, title, icon) in enumerate(PAGES)])
st.sidebar.caption(f"Workspace: `{workspace_label()}`")
nav.run()
