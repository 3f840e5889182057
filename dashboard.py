"""NormLab dashboard — the entry file: ``streamlit run dashboard.py``.

The pages are the files of ``pages/`` (Streamlit's multipage convention routes them, deep
links included); each draws the same menu (:mod:`normlab.ui.menu`). This file only sets
up the app and sends the root URL to Home.
"""
import streamlit as st

from normlab.ui.menu import HOME, page_setup

page_setup(HOME)  # starts the run engine, so workers are warm before the first click
st.switch_page(HOME.path)
