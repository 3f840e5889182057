"""Home: what NormLab is, the framework every method fits, the methods, and a quick start."""
import streamlit as st

from normlab.views import home, urlstate, compareview as views
from normlab.ui.common import get_store, set_comparison
from normlab.ui import menu
from normlab.ui.live import prewarm_quick_start
from normlab.ui.preload import preload_compare

menu.page_setup(menu.HOME)
with st.sidebar:  # in view (a script far down the page runs when scrolled to)
    preload_compare()  # the Compare page's browser code, loaded while this page is read

st.title("NormLab")
st.markdown(
    "NormLab trains small PyTorch networks that differ only in their **normalization "
    "layer** and shows their training dynamics side by side, live, while they train. "
    "Every method is one choice in the same formula below: where the shift μ and the "
    "scale σ come from, and over which axes they are computed. "
    "Launch a comparison on **Compare** and watch loss, gradients and activations "
    "evolve; every run is stored, so any comparison can be reopened from its link.")

quick = views.QUICK_START
methods = urlstate.default_methods(quick.model)
with st.container(border=True):
    st.markdown(
        f"**Quick start** — a {quick.depth}×{quick.width} {quick.activation} MLP on the 8×8 "
        f"digits, plain SGD (lr {quick.lr:g}, batch {quick.batch_size}), {quick.steps} steps "
        f"once per method ({len(methods)} runs, a few seconds each). Without normalization "
        "this net barely learns: watch which methods fix that, and how.")
    if st.button("Compare all methods on digits", type="primary",
                 icon=":material/rocket_launch:"):
        try:
            cid, problems = views.launch(get_store(), quick, methods, views.QUICK_SEEDS)
        except Exception as exc:  # the store or the engine: say so, never a traceback
            cid, problems = None, {"engine": str(exc)}
        if cid:
            set_comparison(cid)
            st.switch_page(menu.COMPARE.path, query_params=urlstate.encode(
                quick, methods, views.QUICK_SEEDS, cid))
        st.error("Could not start the quick start: " + "; ".join(problems.values()))

st.subheader("One framework")
st.latex(views.FRAMEWORK_LATEX)
st.markdown(
    "$x$ is a layer's pre-activation, $\\mu$ and $\\sigma$ a shift and a scale computed "
    "from the data (or from the weights), $g$ and $b$ a learnable gain and bias, $f$ the "
    "activation. The methods differ in where $\\mu$ and $\\sigma$ come from:")
st.table(views.methods_table().set_index("method"))
st.caption("Reduction axes: an MLP layer's input is (B, C), a CNN's (B, C, H, W) or (B, C, L). "
           "Weight-space methods (WeightNorm, CosineNorm) normalize the weights instead.")

# last on the page, so the button and the table are drawn first; and drawn before the
# click on purpose too: a session's first chart loads the browser's Vega code, so the
# quick start's first curve does not wait for it
st.subheader("Why the quick start needs it")
spec, figures = home.formula_chart()
st.vega_lite_chart(spec, width="content")
st.markdown(
    "Without normalization each layer of the quick start's sigmoid "
    "net narrows how much a unit's value differs from one example to the next: by hidden "
    f"layer 3 a unit's pre-activations $x$ have a standard deviation of "
    f"{figures['sd_raw']:.3f} over the batch (left), so $f$ gives every example nearly the "
    f"same output and the layers above can barely tell inputs apart. Subtracting the "
    "batch's $\\mu$ and dividing by its $\\sigma$ spreads the same values over the "
    "sigmoid's range (right; $g = 1$, $b = 0$ as a norm layer starts).")
st.caption(f"The quick start's {home.DEPTH}×{home.WIDTH} net at torch's default "
           f"initialisation on {home.EXAMPLES} standard-normal inputs standing in for the "
           "digits, computed in numpy (the real net's spreads on the digits match).")

# the quick start's first charts, built in the background while this page is read (once
#   per server; `python dashboard.py` did it before the server started)
prewarm_quick_start()
