"""The guided tour in the dashboard: one screen per step, Back / Next with the arrow keys.

The step shown is in the URL (``/tour?step=whitening``), so a link opens that step;
:func:`position` reads it, :func:`nav` draws Back / Next (Streamlit's own button
``shortcut``: the ← and → keys press them) and moves the URL. :func:`launch_at_start`
queues the runs the tour needs when it is opened at its first step; :func:`screen` draws
a step — title, claim, the progress of its runs with the time left, the chart from its
lab and the readout — polled while its runs train. Presenter mode throughout: no form,
charts enlarged (:func:`normlab.views.tour.enlarge`), the claim in large type.

The computing is in :mod:`normlab.views.tour`; this module draws.
"""
from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from normlab.ui import menu
from normlab.ui.common import POLL_SECONDS, get_store
from normlab.views import tour
from normlab.views.compareview import progress_summary

STEP = "step"  # the URL's query parameter
POLL = max(POLL_SECONDS, 3.0)  # s between redraws while a step's runs train (charts are big)


def position(steps=tour.STEPS) -> int:
    """The step the URL names (the first if none; a warning and the first if unknown)."""
    key = st.query_params.get(STEP)
    if not key:
        return 0
    i = tour.index_of(key, steps)
    if i is None:
        st.warning(f"The tour has no step {key!r}; it starts here. Its steps: "
                   f"{', '.join(s.key for s in steps)}.", icon=":material/link_off:")
        return 0
    return i


def _go(key: str) -> None:
    st.query_params[STEP] = key


def nav(i: int, steps=tour.STEPS) -> None:
    """Back, the step's title, Next (the ← and → keys press Back and Next), then where the
    step is in the tour."""
    back = steps[i - 1].key if i > 0 else None
    ahead = steps[i + 1].key if i + 1 < len(steps) else None
    left, middle, right = st.columns([1, 10, 1], vertical_alignment="center")
    left.button("Back", icon=":material/arrow_back:", key="tour_back", shortcut="Left",
                disabled=back is None, on_click=_go, args=(back,), width="stretch")
    middle.title(steps[i].title)
    right.button("Next", icon=":material/arrow_forward:", icon_position="right",
                 key="tour_next", shortcut="Right", type="primary", width="stretch",
                 disabled=ahead is None, on_click=_go, args=(ahead,))
    st.caption(f"Step {i + 1} of {len(steps)}"
               + (f" · next: {steps[i + 1].title} (→)" if ahead else " · the end"))


def presenter() -> None:
    """Presenter mode: the sidebar starts collapsed, so the charts have the width."""
    st.set_page_config(initial_sidebar_state="collapsed")


def launch_at_start(i: int, steps=tour.STEPS) -> None:
    """At the first step, queue every preset the tour needs that is not stored yet."""
    if i != 0:
        return
    launched = tour.launch_missing(get_store(), steps)
    if launched:
        st.toast(f"Queued the runs of {len(launched)} step(s) in the background: "
                 f"{', '.join(k for k, _ in launched)}. They are ready when you get there.",
                 icon=":material/schedule:")


def _lab_page(step: tour.TourStep) -> menu.Page | None:
    for page in menu.LABS:
        if Path(page.path).stem.split("_", 1)[-1] == step.lab.key:
            return page
    return None


def screen(step: tour.TourStep) -> None:
    """The step: claim, then (polled while its runs train) progress, chart, readout."""
    st.markdown(f'<p style="font-size:1.4rem;line-height:1.45">{step.claim}</p>',
                unsafe_allow_html=True)
    cid = tour.stored_comparison(get_store(), step)
    if step.needs is not None and cid is None:
        st.info("This step's runs are not stored yet: the tour queues them at its first "
                "step, or now.", icon=":material/schedule:")
        if st.button("Queue the tour's runs now", icon=":material/play_arrow:"):
            tour.launch_missing(get_store())
            st.rerun()
    running = not tour.finished(get_store(), cid)

    @st.fragment(run_every=POLL if running else None)
    def _live() -> None:
        store = get_store()
        if cid is not None and not tour.finished(store, cid):
            st.progress(progress_summary(store.runs(comparison=cid))["fraction"],
                        text=f"Training this step's runs: {tour.time_left(store, cid)}. "
                             "What is there so far:")
        with st.spinner("Measuring…"):
            figure, readout = step.build(store, cid)
        if figure is None:  # the claim, what was measured, then the evidence
            st.info(readout, icon=":material/hourglass_top:")
        else:
            st.success(readout, icon=":material/straighten:")
        draw(figure, step.caption)
        if running and tour.finished(store, cid):
            st.rerun()

    _live()
    page = _lab_page(step)
    if page is not None:
        st.page_link(page.path, label=f"Open the lab: {page.title}", icon=page.icon)


def draw(figure, caption: str = "") -> None:
    """A step's figure, large: an Altair chart enlarged, a table in full (no scrolling),
    or a tuple of these one below another."""
    if figure is None:
        return
    if caption:
        st.caption(caption)
    if isinstance(figure, tuple):
        for part in figure:
            draw(part)
    elif isinstance(figure, pd.DataFrame):
        st.table(figure)
    elif isinstance(figure, alt.TopLevelMixin):
        st.altair_chart(tour.presented(figure), width="content")
