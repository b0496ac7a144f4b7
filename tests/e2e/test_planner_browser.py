"""The planning app in a real browser: `assay app` on a free port, driven by Playwright in Debian's Chromium.

Starts the app as a user does (``assay app --workspace ./assay-workspace`` in a project folder), uploads a learning
curve on the data-requirements page, waits for the required-n value and the chart, and saves a screenshot
(``planner.png`` in the test's tmp dir). ``ASSAY_UPDATE_SCREENSHOT=1`` also copies it to ``docs/planner.png`` (the
README's picture):

    ASSAY_UPDATE_SCREENSHOT=1 python -m pytest -q tests/e2e/test_planner_browser.py

CI installs Chromium with apt-get (``.ci/run``); Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CURVE = b"n,value\n250,41.0\n500,48.6\n1000,55.1\n2000,60.2\n4000,64.4\n8000,67.3\n"
TARGET = 72.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"assay app exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("assay app did not become healthy within 90 s")


@pytest.fixture
def app_server(tmp_path):
    """`assay app --workspace ./assay-workspace` started in a project folder, as a user starts it (the README's
    screenshot shows that workspace, not a temporary test path)."""
    home = tmp_path / "project"
    ws = home / "assay-workspace"
    ws.mkdir(parents=True)
    port = _free_port()
    exe = Path(sys.executable).with_name("assay")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "apps.cli.main"]
    proc = subprocess.Popen(cmd + ["app", "--workspace", "./assay-workspace", "--port", str(port)], cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, ws
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_upload_a_curve_and_see_the_required_n_and_the_chart(app_server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not on PATH (CI installs it: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    import pandas as pd

    from apps.planner import data

    (pts,) = data.curves_from_table(pd.read_csv(__import__("io").BytesIO(CURVE)), "uploaded.csv", "higher",
                                    "percent")
    want = data.requirement(pts, TARGET)["required_n"]

    url, ws = app_server
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    shot = tmp_path / "planner.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            # a page URL on a fresh server goes through the router (its navigation titles), not a page script alone
            page.goto(url + "/active", wait_until="domcontentloaded")
            page.get_by_text("assay learn --workspace").first.wait_for(timeout=60_000)
            nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
            assert "Data requirements" in nav and "Collection plan" in nav and "app" not in nav.split()
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Data requirements").first.wait_for(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(
                files=[{"name": "curve.csv", "mimeType": "text/csv", "buffer": CURVE}])
            metric = page.locator('[data-testid="stMetric"]').filter(has_text="Required n (recommended)")
            metric.wait_for(timeout=90_000)
            target = page.get_by_label("Target")
            target.fill(f"{TARGET:g}")
            target.press("Enter")
            value = metric.locator('[data-testid="stMetricValue"]')
            page.wait_for_function(
                "([el, want]) => el.textContent.trim() === want",
                arg=[value.element_handle(), f"{want:,.0f}"], timeout=90_000)
            chart = page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg')
            chart.first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the chart finish drawing
            text = page.locator("body").inner_text()
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
            shown = value.inner_text().strip()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert re.fullmatch(r"[\d,]+", shown) and shown == f"{want:,.0f}"  # the library's number, on the page
    assert "Traceback" not in text
    assert "Workspace: ./assay-workspace" in sidebar  # a clean path on the README's picture (#25 item 8)
    assert str(tmp_path) not in text and "pytest" not in text
    assert "Required n per law" in text and "power" in text
    assert shot.stat().st_size > 20_000
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before  # planning writes nothing
    if os.environ.get("ASSAY_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "planner.png")
