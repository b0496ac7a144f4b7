"""Helpers shared by the planner's AppTest tests."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

PLANNER = Path(__file__).resolve().parents[3] / "apps" / "planner"
CURVE_CSV = b"n,value\n250,41.0\n500,48.6\n1000,55.1\n2000,60.2\n4000,64.4\n8000,67.3\n"


def page(name: str) -> AppTest:
    """An AppTest of one page script (``apps/planner/views/<name>.py``), run once."""
    at = AppTest.from_file(str(PLANNER / "views" / f"{name}.py"), default_timeout=120)
    return at.run()


def ok(at: AppTest) -> AppTest:
    """Assert the run raised nothing (ASSAY_DEBUG=1 lets page bugs through) and return it."""
    assert not at.exception, [e.message for e in at.exception]
    return at


def files(root: Path) -> list[str]:
    """Every path under a workspace, to check that a page left it unchanged."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def number(at: AppTest, label: str):
    return next(n for n in at.number_input if n.label == label)


def charts(at: AppTest) -> list[dict]:
    """The Vega-Lite specs on the page."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def upload_curve(at: AppTest, data: bytes = CURVE_CSV, name: str = "curve.csv", mime: str = "text/csv") -> AppTest:
    at.file_uploader[0].set_value((name, data, mime))
    return at.run()
