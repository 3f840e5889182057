"""Curve charts whose smoothing, log scale and activation site the browser applies.

The Compare page's live charts (``client=True`` in :func:`normlab.views.charts.
metric_chart` and :func:`normlab.views.layercharts.layer_chart`): their rows go to the
browser unsmoothed, unmasked and, for the charts that follow the *Activation site*
option, of every site; Vega-Lite transforms and params (:mod:`normlab.views.viewparams`)
then draw what the view options say, so a change of them redraws the drawn charts in the
browser without the server. The same layers as :func:`normlab.views.charts.curve_layers`
(mean line, seed band, faint raw curve, hover rule, legend pick, step zoom).
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from normlab.views import viewparams as vp
from normlab.views.chartparts import (RAW_OPACITY, colour_field, dash, faded, hover_layer,
                                      hover_step, legend_pick, method_color, zoom_steps)
from normlab.views.frames import aggregate_seeds, downsample, smooth


def client_frame(rows: pd.DataFrame, keys: list[str], band: str | None, smoothing: float,
                 max_points: int) -> pd.DataFrame:
    """:func:`normlab.views.charts.series_frame`'s rows with ``client=True``."""
    agg = aggregate_seeds(rows, band=band, by=keys)  # sorted by series, then step
    finite = np.isfinite(agg["value"].to_numpy(dtype=float))
    series = agg.groupby(keys[:-1], sort=False, observed=True, dropna=False).ngroup()
    agg["k"] = pd.Series(finite.astype(np.int64)).groupby(series.to_numpy()).cumsum() - 1
    tips = aggregate_seeds(smooth(rows, smoothing), band=band, by=keys) if smoothing else agg
    for c in ("value", "lo", "hi"):
        if c in agg:
            agg[f"tip_{c}"] = tips[c].to_numpy() if len(tips) == len(agg) else np.nan
    # the smallest positive and the largest value: a log scale's floor for the band's low
    #   edge, and whether its axis is ticked at 1-2-5 (viewparams.transforms, y_axis)
    values = agg["value"].to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    agg["floor"] = float(positive.min()) if len(positive) else np.nan
    agg["top"] = float(positive.max()) if len(positive) else np.nan
    return downsample(agg, max_points, by=keys[:-1])


def client_layers(df: pd.DataFrame, rows: pd.DataFrame, labels: list[str], *, y_title: str,
                  loggable: bool, band: str | None, panels: tuple[str, ...],
                  below: bool) -> alt.LayerChart:
    """:func:`normlab.views.charts.curve_layers` with ``client=True``: the same layers
    over the fields the browser computes (``sv`` the value drawn, ``slo``/``shi`` the
    band: :func:`normlab.views.viewparams.transforms`; the raw curve draws ``value``)."""
    pick, hover = legend_pick(colour_field(df)), hover_step()

    def y(field: str) -> alt.Y:
        return alt.Y(f"{field}:Q", title=y_title, scale=alt.Scale(**vp.y_scale(loggable)),
                     axis=alt.Axis(**vp.y_axis(loggable)))

    base = alt.Chart().encode(x=alt.X("step:Q", title="step"), color=method_color(df, below),
                              detail="curve:N")
    line = base.mark_line(strokeWidth=2, clip=True).encode(y=y("sv"), opacity=faded(pick))
    if (strokes := dash(df)) is not None:
        line = line.encode(strokeDash=strokes)
    layers = []
    if band:  # the spread across seeds, its edges smoothed alike
        layers.append(base.mark_area(clip=True).encode(
            y=y("slo"), y2="shi:Q", opacity=faded(pick, 0.22, 0.03)))
    # the raw curve, faint, behind the smoothed one (TensorBoard's), while smoothing
    layers.append(base.mark_line(strokeWidth=1, clip=True).encode(
        y=y("value"), opacity=faded(pick, RAW_OPACITY, 0.04))
        .transform_filter(f"{vp.SMOOTH} > 0 && isValid(datum.value)"
                          + (f" && (!{vp.LOG} || datum.value > 0)" if loggable else "")))
    layers.append(line.add_params(pick, zoom_steps()))
    layers.append(hover_layer(df, panels, labels, hover))
    fields = {"value": "sv", **({"lo": "slo", "hi": "shi"} if band else {})}
    groupby = ["curve"] + [c for c in ("layer",) if c in df.columns]
    steps = vp.transforms(fields, groupby, loggable, floor=("slo",),
                          any_site="site" in df.columns)
    # the options' params are added last (view_params): each later copy of a chart by
    #   Altair (a facet, every configure_* of style) re-combines its params
    return alt.layer(*layers, data=rows, transform=steps)


def hoisted(chart):
    """A facet of a ``client=True`` chart with its inner transforms applied before the
    facet: the browser then runs them once for the chart, not once per panel (each panel
    of a facet gets its own copy of its inner spec's dataflow). They group by curve and
    layer, so the result is the same."""
    if isinstance(chart, alt.FacetChart) and chart.spec.transform is not alt.Undefined:
        steps, chart.spec.transform = chart.spec.transform, alt.Undefined
        chart.transform = steps
    return chart


def view_params(chart):
    """A ``client=True`` chart (built, faceted and styled) with the params its transforms
    read (:func:`normlab.views.viewparams.params`), added in one call."""
    return chart.add_params(*[
        alt.param(**{k: v for k, v in p.items() if k != "bind"},
                  **({"bind": alt.BindDirect(element=p["bind"]["element"])}
                     if "bind" in p else {}))
        for p in vp.params()])
