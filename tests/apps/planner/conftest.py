"""AppTest fixtures for the planner: a workspace in ``$ASSAY_WORKSPACE`` and ``ASSAY_DEBUG=1`` so that an
unexpected exception in a page fails the test instead of becoming a friendly message."""

from __future__ import annotations

import pytest


@pytest.fixture
def ws_dir(tmp_path, monkeypatch):
    """An empty workspace directory the app serves."""
    d = tmp_path / "ws"
    d.mkdir()
    monkeypatch.setenv("ASSAY_WORKSPACE", str(d))
    monkeypatch.setenv("ASSAY_DEBUG", "1")
    monkeypatch.setenv("ASSAY_PLANNER_NO_CANVAS", "1")
    return d
