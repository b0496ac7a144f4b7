"""``python -m apps.planner.serve [streamlit run options]``: the Streamlit server behind ``assay app``.

The router (``app.py``) uses ``st.navigation`` with its page scripts in ``pages/``. Streamlit would otherwise treat
that folder as an old-style (v1) pages directory until ``app.py`` first runs, so the first visitor of a page URL
(e.g. ``/plan``) would get the page script alone, without the router's navigation. This entry point switches that
off before the server starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def main(argv: list[str] | None = None) -> None:
    """Run ``streamlit run apps/planner/app.py`` with ``argv`` as its options, in this process."""
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except (ImportError, AttributeError):  # another Streamlit layout: it then only affects a page's first visit
        pass
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
