"""NormLab dashboard: the entry point is only a router (``streamlit run dashboard.py``).

The pages live in ``app_pages/``, not ``pages/``: with a ``pages/`` folder next to the
entry file, Streamlit runs its legacy folder-based navigation for a server's first request,
so a shared deep link (``/compare?comparison=…``) opened first would bypass this router.
"""
import streamlit as st

from app_pages.common import engine_ready

st.set_page_config(page_title="NormLab", page_icon=":material/functions:", layout="wide")
engine_ready()  # start the run engine, so workers are warm before the first click

pages = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True,
            url_path="home"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/monitoring:",
            url_path="compare"),
    st.Page("app_pages/layers.py", title="Layer dynamics", icon=":material/stacked_line_chart:",
            url_path="layers"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
]
st.navigation(pages).run()
