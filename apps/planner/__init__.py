"""The planning app: a thin Streamlit front end over the functions the ``assay`` CLI uses.

``assay app --workspace WS`` starts it (``apps/planner/app.py``, one module per page under ``apps/planner/views/``).
Pages read the workspace through :mod:`apps.planner.data` and compute every number with :mod:`estimators` and
:mod:`actors`; :mod:`apps.planner.common` holds the shared page plumbing (workspace, error guard, curve picker).
"""
