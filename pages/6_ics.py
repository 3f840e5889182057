"""Lab 3, internal covariate shift: how far each layer's input moves (with its sampling
noise), Santurkar et al.'s gradient-based ICS, and the loss landscape along the gradient."""
import streamlit as st

from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.views.labs import ics

menu.page_setup(menu.ICS)
lab.header(ics.LAB)


def view(runs) -> None:
    metrics = get_store().metrics(list(runs["id"]), sites=[ics.SITE])
    frame = ics.ics_frame(metrics, runs)
    waiting = ics.waiting_message(runs, frame)
    if waiting:
        st.info(waiting)
        return
    k = ", ".join(str(v) for v in sorted(set(frame["every"])))
    st.subheader("Drift: how far each layer's input moves")
    st.caption(f"Per unit, the 1-Wasserstein distance between the input's distributions "
               f"{k} steps apart on the same {ics.PROBE_EXAMPLES} training examples, "
               "averaged over units, in units of the input's initial spread σ₀. Shaded: "
               "±2 sampling errors. Faint line (and tick, below): how far two *different* "
               "samples of that step are apart with no drift at all — comparing one batch "
               "with another would read that much as drift.")
    st.altair_chart(ics.drift_chart(frame, width=230), width="content")
    st.altair_chart(ics.depth_chart(ics.depth_frame(frame)), width="content")
    lab.readout(ics.drift_readout(frame))

    st.subheader("Santurkar et al.'s ICS: does a layer's gradient change when the layers "
                 "below update?")
    st.caption("G: layer i's gradient on the step's batch; G′: the same after the layers "
               "below take this step's update (Santurkar et al. 2018, Definition 2.1).")
    st.altair_chart(ics.lines_chart(frame, "ics_diff", "‖G − G′‖", log=True, width=210),
                    width="content")
    st.altair_chart(ics.lines_chart(frame, "ics_cos", "cos(G, G′)", width=210),
                    width="content")
    lab.readout(ics.ics_readout(frame))

    st.subheader("Landscape along the gradient (Santurkar et al., Fig. 4)")
    st.caption("At each measured step, the range (max − min) over step sizes 0.5–4 × lr of "
               "the loss and of the gradient change ‖∇L(w − ηg) − ∇L(w)‖, on the step's "
               "batch; smaller = smoother.")
    smooth = ics.smooth_frame(frame)
    st.altair_chart(ics.lines_chart(smooth, "range", "range along the gradient", log=True,
                                    panel="quantity", width=300), width="content")
    lab.readout(ics.smooth_readout(smooth))


cid = lab.presets(ics.LAB)
if cid:
    lab.live(ics.LAB, cid, view)
st.caption("Measured every `ics_interval` steps on a copy of the model (training is "
           "unchanged; the cost is in BENCHMARKS.md). Definitions: README, *What is "
           "measured*.")
