"""The planner's pages ("views"), one script each, run by ``st.navigation`` in :mod:`apps.planner.app`.

The folder is not called ``pages/`` on purpose: Streamlit takes a ``pages/`` folder beside the main script for an
old-style (v1) pages directory, and the first visitor of a page URL would get that page without the router."""
