"""Compare: normalization methods trained side by side on one setup, watched live.

The form (sidebar) is validated as you type; Launch queues one run per method and seed,
the engine's workers train them, and the charts below poll the store meanwhile. The setup
and what is shown live in the URL: copy the link to share or replay it.
"""
import streamlit as st

from normlab.ui.common import (apply_url, comparison_picker, get_store, show_newest,
                              show_url_problems, shown_runs, sync_url)
from normlab.ui.form import (config_form, current_view, form_values, launch_button,
                            presenter_toggle, setup_status, view_controls)
from normlab.ui.live import live_runs
from normlab.ui.report import download_button
from normlab.ui import menu

menu.page_setup(menu.COMPARE)

apply_url()  # a shared link (or the Home quick start) sets the form and what is shown
show_newest()  # nothing shown yet: the newest comparison, with its setup in the form
title, toggle = st.columns([5, 1], vertical_alignment="bottom")
with toggle:
    present = presenter_toggle()
title.title("Compare normalization methods")
# what presenter mode leaves out sits in one container drawn in both modes: every element
#   below keeps its place in the page, so toggling it redraws only what changed (shifted,
#   every chart was drawn anew, and the old page stayed beside the new one meanwhile)
head = st.container(key="nl-head")
if not present:
    head.markdown("Same data, same initialisation seed — only the normalization differs. "
                  "Set up a comparison in the sidebar and press **Launch**: every method's "
                  "training dynamics appear below while it trains.")
with head:
    show_url_problems()

with st.sidebar:
    if present:
        st.caption("Presenter mode: the form is hidden. Switch *Presenter* off to edit it.")
        config, methods, seeds, _ = form_values()
    else:
        st.header("Setup")
        setup_status(*form_values()[:3])  # the shown comparison's setup, or a new one
        config, methods, seeds, errors = config_form()
        launch_button(config, methods, seeds, errors)

if present:
    shown = shown_runs()
else:
    pick, open_layers = head.columns([3, 1], vertical_alignment="bottom")
    with pick:
        shown = comparison_picker("Showing")
    if shown and open_layers.button("Layer dynamics", icon=":material/stacked_line_chart:",
                                    width="stretch", help="histograms and percentiles of "
                                    "these runs' layers"):
        query = ({"runs": ",".join(shown[1])} if shown[0].startswith("runs-")
                 else {"comparison": shown[0]})
        st.switch_page(menu.LAYERS.path, query_params=query)

view = current_view(present)
if shown is None:
    st.info("Nothing to show yet. Set up a comparison in the sidebar and press **Launch** — "
            "or go to **Home** and press *Compare all methods on digits*.",
            icon=":material/arrow_back:")
else:
    n_seeds = int(get_store().runs(ids=shown[1])["seed"].nunique())
    # drawn inside the live fragment: a view toggle reruns the charts only, not the page
    live_runs(*shown, view, controls=lambda: view_controls(n_seeds, present),
              on_view=lambda v: sync_url(config, methods, seeds, v))
    download_button(",".join(shown[1]) if shown[0].startswith("runs-") else shown[0], view=view)
sync_url(config, methods, seeds, view)
