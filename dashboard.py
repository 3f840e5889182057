"""NormLab dashboard — the entry file: ``python dashboard.py`` (or ``streamlit run
dashboard.py``; Streamlit's options follow either, e.g. ``--server.port 8600``).

Run with Python, it starts the run engine before the server (:mod:`normlab.ui.launch`),
so the engine is warm by the time Home is drawn; run by Streamlit, the first page starts
it. The pages are the files of ``pages/`` (Streamlit's multipage convention routes them,
deep links included); each draws the same menu (:mod:`normlab.ui.menu`). This file only
sets up the app and sends the root URL to Home.
"""
import sys

from streamlit import runtime

if __name__ == "__main__" and not runtime.exists():  # python dashboard.py [options]
    from normlab.ui.launch import main

    sys.exit(main(__file__, sys.argv[1:]))

import streamlit as st  # noqa: E402  (served by Streamlit from here on)

from normlab.ui.menu import HOME, page_setup  # noqa: E402

page_setup(HOME)  # starts the run engine unless started, so workers are warm before a click
st.switch_page(HOME.path)
