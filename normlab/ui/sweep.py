"""The sweep view in the dashboard: a final metric against a swept config field.

Drawn by the Compare page (its *Sweep* tab, for any comparison that varies a numeric
field) and by the sweep labs. The computing is :mod:`normlab.views.sweep`; this module
only adds the controls (field, metric, what "final" means, band) and the cached read of
the final values.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from normlab.ui.common import get_store
from normlab.views import compareview as views
from normlab.views import sweep

METRICS = {  # label -> (site, metric)
    "validation accuracy": ("val", "acc"),
    "validation loss": ("val", "loss"),
    "validation accuracy, training mode": ("val_train_mode", "acc"),
    "validation loss, training mode": ("val_train_mode", "loss"),
    "training accuracy (batch)": ("train", "acc"),
    "training loss (batch)": ("train", "loss"),
}


@dataclass(frozen=True)
class Shown:
    """What a sweep view drew: the per-run frame and its choices (for a lab's readout)."""

    frame: pd.DataFrame
    field: str
    site: str
    metric: str
    how: str


def fields_of(runs: pd.DataFrame, grid: dict | None = None) -> list[str]:
    """The swept numeric fields of ``runs`` (empty: not a sweep)."""
    return sweep.swept_fields(list(runs["config"]), grid)


@st.cache_data(max_entries=64, show_spinner=False)
def _rows(path: str, sig: tuple, site: str, metric: str) -> pd.DataFrame:
    """The tidy rows of one series of these runs (``sig`` changes when a run does)."""
    return get_store().metrics([s[0] for s in sig], metrics=[metric], sites=[site])


def final_frame(runs: pd.DataFrame, field: str, site: str, metric: str, how: str = "last",
                k: int = 3) -> pd.DataFrame:
    """:func:`normlab.views.sweep.sweep_frame` of ``runs`` for one metric (cached read)."""
    rows = _rows(str(get_store().path), views.signature(runs), site, metric)
    return sweep.sweep_frame(runs, sweep.final_values(rows, how, k, metric), field)


def sweep_view(runs: pd.DataFrame, key: str, grid: dict | None = None,
               metric: str = "validation accuracy", fields: list[str] | None = None
               ) -> Shown | None:
    """Controls and chart of the sweep over ``runs``; what was drawn, or None if these
    runs vary no numeric field. ``key`` keeps the widgets of different views apart."""
    fields = fields or fields_of(runs, grid)
    if not fields:
        st.info("These runs vary no numeric setting (learning rate, batch size, ...), so "
                "there is nothing to sweep over. Launch a grid, e.g. "
                "`python -m normlab run --lr logspace:0.001:10:9`.")
        return None
    options = [m for m in METRICS if METRICS[m][0] != "val_train_mode"
               or any(c.get("eval_train_mode") for c in runs["config"])]
    cols = st.columns([2, 3, 2, 1, 2], vertical_alignment="bottom")
    field = cols[0].selectbox("Swept field", fields, key=f"sw_field_{key}",
                              help="the numeric setting on the x axis")
    label = cols[1].selectbox("Metric", options, key=f"sw_metric_{key}",
                              index=options.index(metric) if metric in options else 0)
    how = cols[2].selectbox("Final value", sweep.HOWS, key=f"sw_how_{key}",
                            format_func=sweep.HOW_TITLES.get,
                            help="last evaluation, best over the run, or the mean of the "
                                 "last k evaluations (less noisy)")
    k = int(cols[3].number_input("k", 1, 50, 3, key=f"sw_k_{key}",
                                 disabled=how != "mean_last"))
    band = cols[4].selectbox("Seed band", ("minmax", "std", "none"), key=f"sw_band_{key}")
    site, metric_name = METRICS[label]
    frame = final_frame(runs, field, site, metric_name, how, k)
    if frame["value"].notna().sum() == 0 and not frame["diverged"].any():
        st.info("No run has reached its first evaluation yet; the sweep fills in as they "
                "finish.")
        return Shown(frame, field, site, metric_name, how)
    chart = sweep.sweep_chart(frame, field, y_title=sweep.metric_title(metric_name, site, how, k),
                              band=None if band == "none" else band,
                              log_y=metric_name == "loss")
    st.altair_chart(chart, width="content")
    with st.expander("Sweep table (mean ± std over seeds; ÷N: N diverged, …: still running)"):
        st.dataframe(sweep.sweep_table(frame, field))
    return Shown(frame, field, site, metric_name, how)
