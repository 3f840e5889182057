"""Lab 2, how far from whitening: correlation matrices, covariance spectra and the
spread of per-feature statistics of each norm's input and output, over training."""
import streamlit as st

from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES, MATRIX_SITES
from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.views.labs import whitening as wh

menu.page_setup(menu.WHITENING)
lab.header(wh.LAB)


def view(runs) -> None:
    ids = list(runs["id"])
    curves = wh.curve_frame(get_store().metrics(ids, metrics=list(CURVE_METRICS),
                                                sites=list(CURVE_SITES)), runs)
    if curves.empty:
        st.info(wh.waiting_message(runs))
        return
    layers = sorted(curves["layer"].unique())
    layer = st.segmented_control("Layer", layers, default=layers[len(layers) // 2],
                                 key="wh_layer", required=True)
    snaps = wh.snapshot_steps_of(get_store().metrics(ids, metrics=["eig00"],
                                                     sites=["matrix_out"]))
    st.subheader("Correlation matrices: the norm's input and output")
    if snaps:
        step = st.select_slider("Snapshot step", snaps, value=snaps[-1],  # a new snapshot:
                                key=f"wh_step_{len(snaps)}_{snaps[-1]}")  # the newest shown
        shot = get_store().metrics(ids, layers=[layer], sites=list(MATRIX_SITES),
                                   steps=(step, step))
        st.caption("The first features of the layer, in the layer's order (whiten's groups "
                   "are consecutive); one colour scale for every panel; lowest seed.")
        st.altair_chart(wh.heatmap_chart(wh.matrix_frame(shot, runs, layer, step)),
                        width="content")
        st.subheader("Eigenvalues of the output's covariance (whitened: flat at 1)")
        st.altair_chart(wh.spectrum_chart(wh.spectrum_frame(shot, runs, layer, step)),
                        width="content")
    else:
        st.info("No snapshot stored yet (the first comes at step 0; runs need "
                "`corr_snapshots` > 0).")
    st.subheader("Over training: correlation and the spread across features")
    st.caption(f"Solid: output x̂ (before g, b); dashed: input x. Log axes from {wh.FLOOR:g} "
               "(smaller values are drawn there; the tooltip has the value).")
    st.altair_chart(wh.curve_chart(curves, layer), width="content")
    lab.readout(wh.readout(curves))


cid = lab.presets(wh.LAB)
if cid:
    lab.live(wh.LAB, cid, view)
