"""Layer dynamics: how the distribution of each layer's activations moves during training,
method by method (the BatchNorm paper's Figure 1 view, and the full histograms)."""
import streamlit as st

from normlab.views import layerview
from normlab.measure.schema import ACT_SITES
from normlab.runs.store import FINISHED
from normlab.ui import picker
from normlab.ui.common import get_store
from normlab.ui.report import download_button, report_id
from normlab.ui import menu

menu.page_setup(menu.LAYERS)

st.title("Layer dynamics")
st.markdown("How does the distribution of each layer's activations move during training, "
            "and does normalization keep it still? Rows are methods, columns are layers; "
            "panels share their scales. Link here with `?comparison=<id>` or `?runs=<id>,<id>`.")

store = get_store()
if store.runs().empty:
    st.info(picker.EMPTY_STORE)
    st.stop()
runs, names = picker.pick_runs(store)
if runs.empty:
    st.info("Pick a comparison, or one or more runs, to see their layers.")
    st.stop()

left, mid, right = st.columns([2.2, 1.3, 2.5], vertical_alignment="bottom")
default_site, site_note = layerview.default_site(runs)
site = left.segmented_control("Activation site", ACT_SITES, default=default_site, key="site",
                              required=True, bind="query-params", help=layerview.SITE_HELP)
zoomed = mid.toggle("Bulk only", True, key="layers_zoom", help=layerview.BULK_HELP)
per_unit = mid.toggle("Per unit", False, key="layers_units", help=layerview.UNIT_HELP)
if site_note:
    st.caption(site_note)
pct = picker.site_rows(store, runs, site, "percentiles", names=names)
if pct.empty:
    st.warning(f"No {site} measurements yet for these runs (queued, or failed before the "
               "first step). Pick finished runs, or wait for these to start.")
    st.stop()
all_layers = layerview.natural_order(pct["layer"].astype(str).unique())
layers = right.multiselect("Layers", all_layers, default=layerview.default_layers(all_layers),
                           key=f"layers_layers_{'-'.join(all_layers)}")
if not layers:
    st.info("Pick at least one layer.")
    st.stop()
live = not runs["status"].isin(FINISHED).all()
refresh = 3 if live else None  # unfinished runs: the charts poll the store
activation, drawn, note = layerview.hist_activation(runs, site)
if note:
    st.warning(note)
hist_runs, every = runs[runs["id"].isin(drawn)], layerview.thin_every(runs)
hist = picker.site_rows(store, hist_runs, site, "histogram", layers=layers, every=every,
                        names=names)
full = layerview.full_range(hist, site, activation)
value_range = layerview.bulk_range(hist, site, activation) if zoomed else full


@st.fragment(run_every=refresh)
def over_time() -> None:
    kind = "units" if per_unit else "percentiles"
    rows = picker.site_rows(store, runs, site, kind, names=names) if live or per_unit else pct
    st.subheader("Over training" + (" — single units" if per_unit else ""))
    st.caption(layerview.UNIT_CAPTION if per_unit else layerview.PCT_CAPTION)
    chart, heat = layerview.percentile_view(rows, site, layers, units=per_unit), None
    rows = picker.site_rows(store, hist_runs, site, "histogram", layers=layers, every=every,
                            names=names) if live else hist
    if rows.empty:
        st.info(f"No {site} histograms recorded for these runs.")
    else:
        st.caption(layerview.heatmap_caption(rows, site, value_range, full))
        heat = layerview.heatmap_view(rows, site, activation, value_range)
    # one spec: the two grids share their steps (zoom either, both follow)
    st.vega_lite_chart(layerview.over_time_spec(chart, heat), width="content")
    with st.container(horizontal=True):  # PNG and SVG of each grid
        for what, grid, stem in (("Percentiles", chart, "percentiles"),
                                 ("Histograms", heat, "heatmap")):
            if grid is not None:
                picker.chart_downloads(grid, f"normlab-{stem}-{site}", key=f"dl_{stem}",
                                       what=what)


@st.fragment(run_every=refresh)
def at_step() -> None:
    st.subheader("Histograms at one step")
    lo, hi, gap = layerview.step_range(pct)
    a, b = st.columns([4, 1])
    step = a.slider("Step", lo, hi, hi, gap, key=f"layers_step_{lo}_{hi}") if hi > lo else lo
    log = b.toggle("Log fraction", key="layers_log",
                   help="Fraction axis on a log scale. Each run is drawn at its measured step "
                        "nearest to this one.")
    rows = picker.site_rows(store, hist_runs, site, "histogram", layers=layers,
                            steps=layerview.step_window(runs, step), names=names)
    if rows.empty:
        return st.info(f"No {site} histograms near step {step}.")
    chart = layerview.step_view(rows, site, step, activation, log, value_range)
    st.altair_chart(chart, width="content")
    picker.chart_downloads(chart, f"normlab-histograms-{site}-step{step}", key="dl_step")


over_time()
at_step()
download_button(report_id(runs), page="layers", site=site, layers=layers, key="layers_report")
