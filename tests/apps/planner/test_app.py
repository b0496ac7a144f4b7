"""The router (st.navigation over every page), the page guard, and `assay app`."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from apps.planner.app import PAGES
from tests.apps.planner.helpers import PLANNER, ok


def test_every_page_opens_from_the_router_on_an_empty_workspace(ws_dir):
    at = ok(AppTest.from_file(str(PLANNER / "app.py"), default_timeout=120).run())
    assert at.title[0].value == "Data requirements"
    assert str(ws_dir) in at.sidebar.caption[0].value
    for path, title, _ in PAGES[1:]:
        at.switch_page(path)
        ok(at.run())
        assert at.title[0].value == title and not at.error


GUARD = """
import streamlit as st
from apps.planner.common import run_page
from actors.core.errors import UserError

def body():
    st.write("before")
    if st.session_state.get("kind") == "user":
        raise UserError("curve.csv: row 3: field 'n' is -1 (must be > 0)")
    1 / 0

run_page(body)
"""


def test_the_sidebar_names_a_workspace_in_the_app_folder_as_the_user_did(ws_dir, monkeypatch):
    """#25 item 8: the README's screenshot showed a temporary absolute path as the workspace."""
    from apps.planner.common import workspace_label

    monkeypatch.chdir(ws_dir.parent)
    at = ok(AppTest.from_file(str(PLANNER / "app.py"), default_timeout=120).run())
    assert at.sidebar.caption[0].value == "Workspace: `./ws`"
    assert workspace_label("/elsewhere/ws") == "/elsewhere/ws" and workspace_label("s3://b/ws") == "s3://b/ws"


def test_page_guard_shows_messages_never_a_traceback(monkeypatch):
    monkeypatch.delenv("ASSAY_DEBUG", raising=False)
    at = AppTest.from_string(GUARD)
    at.session_state["kind"] = "user"
    at.run()
    assert not at.exception and at.error[0].value == "curve.csv: row 3: field 'n' is -1 (must be > 0)"
    at.session_state["kind"] = "bug"
    at.run()
    assert not at.exception and "Something went wrong on this page (ZeroDivisionError)" in at.error[0].value
    assert "Traceback" not in at.error[0].value


def test_page_guard_lets_bugs_through_under_assay_debug(monkeypatch):
    monkeypatch.setenv("ASSAY_DEBUG", "1")
    at = AppTest.from_string(GUARD).run()
    assert at.exception and "ZeroDivisionError" in at.exception[0].message or "division" in at.exception[0].value


def test_assay_app_binds_localhost_unless_told(monkeypatch, tmp_path):
    from apps.cli import app as app_mod
    from apps.cli.main import main

    calls = []
    monkeypatch.setattr(app_mod, "serve", lambda cmd, env, **kw: calls.append((cmd, env)) or 0)
    assert main(["app", "-w", str(tmp_path), "--port", "8600"]) == 0
    cmd, env = calls[-1]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none" and cmd[1:4] == ["-m", "streamlit", "run"]
    assert app_mod.APP.is_file()
    assert env["ASSAY_WORKSPACE"] == str(tmp_path)
    assert main(["app", "-w", str(tmp_path), "--host", "0.0.0.0"]) == 0
    cmd, _ = calls[-1]
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


@pytest.mark.parametrize("args,msg", [(["--port", "0"], "--port must be in 1-65535"),
                                      (["--port", "70000"], "--port must be in 1-65535")])
def test_assay_app_bad_arguments_exit_2(tmp_path, capsys, args, msg):
    from apps.cli.main import main

    assert main(["app", "-w", str(tmp_path)] + args) == 2
    assert msg in capsys.readouterr().err


def test_assay_app_workspace_that_is_a_file_exits_2(tmp_path, capsys):
    from apps.cli.main import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["app", "-w", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_curve_picked_on_one_page_is_offered_on_the_other(ws_dir):
    from tests.apps.planner.helpers import metric, number, upload_curve

    at = ok(AppTest.from_file(str(PLANNER / "app.py"), default_timeout=120).run())
    ok(upload_curve(at))
    at.switch_page("views/plan.py")
    ok(at.run())
    assert at.radio(key="plan_source").options == ["Upload a file", "Curve from the other page"]
    at.radio(key="plan_source").set_value("Curve from the other page")
    ok(at.run())
    number(at, "Target").set_value(70.0)
    ok(at.run())
    assert metric(at, "LOC: total after the last round").replace(",", "").isdigit()
