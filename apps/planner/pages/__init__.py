"""The planner's pages, one script each (run by ``st.navigation`` in :mod:`apps.planner.app`)."""
