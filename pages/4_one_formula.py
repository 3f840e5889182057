"""Lab 1, one formula: h = f(g·(x − μ)/σ + b) stage by stage — the four distributions,
the μ and σ each method used, the learned g and b, and the share of f's input that g and
b move out of its near-linear region."""
import streamlit as st

from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.views.compareview import finished
from normlab.views.frames import natural_order
from normlab.views.labs import formula

menu.page_setup(menu.ONE_FORMULA)
lab.header(formula.LAB)


def view(runs) -> None:
    store = get_store()
    summary = formula.load(store, cid, runs)["summary"]
    linear = formula.linear_frame(summary, runs)
    if linear.empty:
        if finished(runs):
            st.warning("These runs recorded no stages (they were made without "
                       "`stages=True`): press the preset button above.")
        else:
            st.info("Waiting for the first measurements…")
        return
    layers = natural_order(linear["layer"].unique())
    steps = sorted(int(s) for s in linear["step"].unique())
    left, right = st.columns([1, 3])
    layer = left.segmented_control("Layer", layers, default=layers[-1], key="formula_layer",
                                   required=True)
    key = f"formula_step_{cid}_{steps[-1]}"  # a new slider when steps arrive: it follows
    pick = st.session_state.get("_formula_pick")  # the latest unless a step was picked

    def picked() -> None:
        value = st.session_state[key]
        st.session_state["_formula_pick"] = None if value == steps[-1] else value

    step = right.select_slider("Step", steps, value=pick if pick in steps else steps[-1],
                               key=key, on_change=picked)
    data = formula.load(store, cid, runs, layer, step)
    config = runs["config"].iloc[0] or {}
    activation = config.get("activation")
    if config.get("norm_position") == "after":
        st.warning("These runs put the norm after the activation: f(y) below is the "
                   "activation's output in front of the norm, not f applied to y.")
    st.subheader(f"x → x̂ → y → f(y) in {layer} at step {step}")
    stages = formula.stage_frame(data["stages"], runs, layer, step, activation)
    if not stages.empty:
        st.altair_chart(formula.stage_chart(stages), width="content")
    st.table(formula.source_table(data["stages"], runs, layer, step).set_index("method"))
    st.caption("μ and σ as the probe measured them in training mode; `none` has no x̂ (—). "
               "In `weight` and `cosine` the normalization is inside the layer, so their x "
               "panel already shows y.")

    st.subheader("Does the output have mean b and variance g²?")
    features = formula.feature_frame(data["features"], runs, layer, step)
    if features.empty:
        st.info("No per-feature snapshot yet (taken every eval_interval steps).")
    else:
        st.altair_chart(formula.feature_chart(features), width="content")
        lab.readout(formula.feature_readout(features, layer))

    st.subheader("g and b over training")
    affine = formula.affine_frame(summary, runs)
    if not affine[affine["layer"] == layer].empty:
        st.altair_chart(formula.affine_chart(affine, layer), width="content")

    st.subheader("Do g and b move f's input out of its near-linear region?")
    st.altair_chart(formula.linear_chart(linear, layer), width="content")
    lab.readout(formula.linear_readout(linear, layer))


cid = lab.presets(formula.LAB)
if cid:
    lab.live(formula.LAB, cid, view)
st.caption("Near-linear region of f: |v| < 1 for sigmoid and tanh, v > 0 (the identity "
           "piece) for relu and gelu. Per feature, the statement holds when |mean(y) − b| "
           "≤ 0.001 and |var(y)/g² − 1| ≤ 1%.")
