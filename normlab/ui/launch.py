"""``python dashboard.py``: start the run engine, then serve the dashboard.

``streamlit run dashboard.py`` runs no code of ours until a browser opens a page, so its
engine starts with the first page and loads PyTorch (~2 s alone, ~4 s beside the server
and the browser drawing Home) while the page is read: a quick click on Launch waits for
it. Started here, before the server, it is warm by the time Home is drawn. Streamlit then
runs in this process (``streamlit run dashboard.py`` with the options given), so the pages
know the engine started here and start no second one while it loads.
"""
from __future__ import annotations

import sys


def main(script: str, args: list[str]) -> int:
    """Start the engine for the store (``NORMLAB_STORE`` or the default), then ``streamlit
    run script *args`` in this process; its exit code. An engine that cannot start is
    said and the dashboard starts anyway: its pages say why no run progresses."""
    from normlab.runs.engine import ensure_engine

    try:
        ensure_engine()
    except Exception as exc:  # a store that cannot be used: the pages explain it
        print(f"normlab: the run engine did not start ({exc}); starting the dashboard "
              "anyway", file=sys.stderr)
    from normlab.ui.live import prewarm_quick_start

    prewarm_quick_start()  # the quick start's first charts, built while the server starts
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", script, *args]
    try:
        cli.main()
    except SystemExit as done:  # click ends with SystemExit
        return done.code if isinstance(done.code, int) else 0
    return 0
