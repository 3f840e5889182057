"""Lab 5, learning rate and initialization: final accuracy against the learning rate and
the init scale, one line per method, and how wide each method's good range is."""
import streamlit as st

from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.ui.sweep import final_frame, sweep_view
from normlab.views.labs import sensitivity

menu.page_setup(menu.LR_INIT)
lab.header(sensitivity.LR_LAB)


def view(runs) -> None:
    grid = get_store().comparison(cid).get("grid")
    shown = sweep_view(runs, cid, grid)
    if shown is not None:
        acc = final_frame(runs, shown.field, "val", "acc", shown.how)
        lab.readout(sensitivity.tolerance_readout(acc, shown.field))


cid = lab.presets(sensitivity.LR_LAB)
if cid:
    lab.live(sensitivity.LR_LAB, cid, view)
st.caption("The readout uses validation accuracy whatever the chart shows: the widest run of "
           "consecutive grid values whose mean over seeds reaches 90% of the best accuracy "
           "of any method, with no seed diverged there.")
