"""The one navigation every page draws, and the set-up every page starts with.

Streamlit's classic multipage layout routes the files of ``pages/`` itself (a deep link
such as ``/compare?comparison=c…`` reaches its page even as a fresh server's first
request); its own file-name menu is hidden (``client.showSidebarNavigation = false`` in
``.streamlit/config.toml``) and replaced by this one, with readable titles, icons and a
"Labs" section. A page's URL is its file name without the number prefix.
"""
from __future__ import annotations

from typing import NamedTuple

import streamlit as st


class Page(NamedTuple):
    path: str  # relative to dashboard.py, as st.page_link and st.switch_page take it
    title: str
    icon: str


HOME = Page("pages/0_home.py", "Home", ":material/home:")
COMPARE = Page("pages/1_compare.py", "Compare", ":material/monitoring:")
LAYERS = Page("pages/2_layers.py", "Layer dynamics", ":material/stacked_line_chart:")
RUNS = Page("pages/3_runs.py", "Runs", ":material/folder_open:")
MAIN = (HOME, COMPARE, LAYERS, RUNS)
ONE_FORMULA = Page("pages/4_one_formula.py", "One formula", ":material/function:")
WHITENING = Page("pages/5_whitening.py", "How far from whitening?", ":material/grid_on:")
ICS = Page("pages/6_ics.py", "Internal covariate shift", ":material/moving:")
INVARIANCE = Page("pages/7_invariance.py", "Re-scaling invariance", ":material/open_in_full:")
LR_INIT = Page("pages/8_lr_init.py", "Learning rate and initialization", ":material/tune:")
BATCH_SIZE = Page("pages/9_batch_size.py", "Batch size", ":material/stacks:")
TOUR = Page("pages/10_tour.py", "Guided tour", ":material/co_present:")
# one page per claim of the literature, in the argument's order
LABS: tuple[Page, ...] = (ONE_FORMULA, WHITENING, ICS, INVARIANCE, LR_INIT, BATCH_SIZE)


def page_setup(page: Page) -> None:
    """Title and layout of the browser tab, the engine, and the menu: every page's first call."""
    from normlab.ui.common import engine_ready

    st.set_page_config(page_title=f"{page.title} · NormLab", page_icon=page.icon,
                       layout="wide")
    engine_ready()  # cheap when it runs; an engine that exited when idle is back, warm
    menu()


def menu() -> None:
    """The sidebar menu: the main pages, then the labs under their heading."""
    with st.sidebar:
        for page in MAIN:
            st.page_link(page.path, label=page.title, icon=page.icon)
        if LABS:
            st.caption("Labs")
            for page in LABS:
                st.page_link(page.path, label=page.title, icon=page.icon)
            # after the labs: the tour walks them in the same order, so it reads as their
            #   summary, and the labs keep their numbered order
            st.page_link(TOUR.path, label=TOUR.title, icon=TOUR.icon)
        st.divider()
