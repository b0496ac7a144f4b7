"""Page plumbing shared by the planner's pages: the workspace, the error guard, and the curve picker.

Every page body runs inside :func:`run_page`: a user error (bad upload, missing workspace state, an estimator that
refuses the input) becomes a red message in the page; any other exception is a bug and shows a short message
without a traceback — unless ``ASSAY_DEBUG=1`` is set (the tests set it), in which case it propagates so that the
test (or the developer) sees it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import streamlit as st

from actors.core.errors import UserError
from estimators.errors import EstimatorInputError

WORKSPACE_ENV = "ASSAY_WORKSPACE"
# Assay's own user-error types, as in the CLI (apps/cli/main.py); anything else is a bug
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, EstimatorInputError)


def workspace_uri() -> str:
    """The workspace this app serves: ``$ASSAY_WORKSPACE`` (set by ``assay app``), else ``--workspace`` after ``--``
    on the ``streamlit run`` command line, else the CLI's default."""
    uri = os.environ.get(WORKSPACE_ENV)
    if uri:
        return uri
    import sys

    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a in ("--workspace", "-w") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--workspace="):
            return a.split("=", 1)[1]
    from actors.core.workspace import DEFAULT_WORKSPACE

    return str(DEFAULT_WORKSPACE)


def workspace_label(uri: str | None = None) -> str:
    """The workspace as a reader knows it: a local path inside the folder the app runs in is shown relative to it
    (``./assay-workspace``, as ``assay app`` is usually started), anything else as it is."""
    uri = workspace_uri() if uri is None else uri
    if "://" in uri or not os.path.isabs(uri):
        return uri
    rel = os.path.relpath(uri, os.getcwd())
    return uri if rel == ".." or rel.startswith(".." + os.sep) else ("." if rel == "." else f"./{rel}")


def workspace():
    """A :class:`~actors.core.workspace.Workspace` on :func:`workspace_uri` (cheap; no I/O)."""
    from actors.core.workspace import Workspace

    return Workspace(workspace_uri())


def run_page(body: Callable[[], None]) -> None:
    """Run a page body; user errors become ``st.error`` messages, bugs a short message (see the module docstring)."""
    try:
        body()
    except USER_ERRORS as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001  (the app never shows a traceback to a user)
        if os.environ.get("ASSAY_DEBUG"):
            raise
        st.error(f"Something went wrong on this page ({type(e).__name__}). The workspace was not changed. "
                 "Start the app with ASSAY_DEBUG=1 to see the details.")


def missing(what: str, command: str) -> None:
    """Say what the workspace lacks and which command produces it."""
    st.info(f"{what}\n\nProduce it with:\n\n```\n{command}\n```")


def fmt_n(v) -> str:
    """A sample count for display: thousands separators; ``∞`` for None/inf."""
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "∞"
    return f"{v:,.0f}"


def fmt_amount(v) -> str:
    """A cost or other amount for display: whole numbers with thousands separators from 1,000 up (never
    ``6.481e+04``), four significant digits below; ``∞`` for None/inf."""
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "∞"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.4g}"
