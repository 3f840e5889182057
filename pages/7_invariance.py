"""Lab 4, re-scaling invariance: which re-scalings each method ignores (Ba et al. 2016,
Table 1, measured live), the gradient's 1/λ that follows, and weight growth in training."""
import streamlit as st

from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.views.labs import invariance as inv

menu.page_setup(menu.INVARIANCE)
lab.header(inv.LAB)


@st.cache_data(show_spinner="Measuring every method's block…")
def measured():
    return inv.invariance_table(), inv.gradient_scaling()


table, gradients = measured()
st.subheader("Which re-scalings does the output ignore?")
st.caption(f"One block `layer → norm` per method, built by NormLab's own modules, in "
           f"training mode; each cell: Y/N (output change ‖h′−h‖/‖h‖ below {inv.TOL:g}) · "
           "the measured change · the published cell where Ba et al. give one (⚠: they "
           "disagree). Re-scaling factor 2.5; re-centering by a random vector.")
st.table(inv.table_display(table))  # a static table wraps its cells: no sideways scroll
lab.readout(inv.table_readout(table))

st.subheader("So the gradient shrinks as the weights grow")
st.caption("The block's weight scaled by λ, and ‖∂L/∂W‖ for a fixed linear read-out "
           "L = ⟨R, h⟩: an output that ignores the scale gives a gradient ∝ 1/λ.")
st.altair_chart(inv.gradient_chart(gradients), width="stretch")
lab.readout(inv.gradient_readout(gradients))

st.subheader("Over training: weights grow, the effective step falls")


def view(runs) -> None:
    metrics = get_store().metrics(list(runs["id"]), metrics=list(inv.WEIGHT_METRICS),
                                  sites=["param"])
    frame = inv.weight_frame(metrics, runs)
    if frame.empty:
        st.info("Waiting for the first measurements…")
        return
    layers = sorted(frame["layer"].unique(), key=lambda n: (n == "out", n))
    layer = st.segmented_control("Layer", layers, default=layers[min(1, len(layers) - 1)],
                                 key="inv_layer", required=True)
    st.altair_chart(inv.weight_chart(frame, layer), width="content")
    lab.readout(inv.weight_readout(frame, layer))


cid = lab.presets(inv.LAB)
if cid:
    lab.live(inv.LAB, cid, view)
