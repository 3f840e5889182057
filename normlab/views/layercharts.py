"""Chart builders for per-layer dynamics: layer metrics, percentile bands, histograms.

Same conventions as :mod:`normlab.views.charts` (tidy frame in, Altair chart out, colour =
method from the shared palette, legend-click highlight, hover tooltips, shared
scales across small multiples, drag/wheel zoom on the step axis). Grids have one row per
method in canonical order (per label, when a method has several) and one column per layer in
natural order (hidden2 before hidden10), so their width grows with the layers shown, not
with the methods compared; legends sit below grids.

* :func:`layer_chart` — a per-layer scalar over steps (``grad_norm`` / ``weight_norm`` /
  ``update_ratio`` at ``param``; ``mean`` / ``var`` at an activation site; ``saturated`` /
  ``dead`` at ``post_act``).
* :func:`percentile_chart` — the 15/50/85th percentiles of a site's activations over steps,
  the view of the BatchNorm paper's Figure 1 (Ioffe & Szegedy 2015).
* :func:`hist_heatmap` — the activation histogram over time, fraction on a log colour scale.
* :func:`hist_at_step` — every method's histogram at one step, overlaid per layer.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from normlab.views.charts import (MAX_POINTS, PANEL_HEIGHT, PANEL_WIDTH, WIDE_HEIGHT,
                                  WIDE_WIDTH, axis_title, colour_field, curve_data,
                                  curve_layers, dash, faded, hover_pick, legend_pick,
                                  method_color, run_field, run_row, series_frame, style,
                                  with_label, zoom_steps)
from normlab.views.clientcurves import hoisted, view_params
from normlab.views.frames import (downsample, hist_step_frame, hist_time_frame, natural_order,
                            percentile_frame, unit_frame)

FLOOR = 1e-4  # smallest fraction a log scale shows; smaller positive fractions are clamped


def _layer_column(df: pd.DataFrame) -> alt.Column:
    return alt.Column("layer:N", sort=natural_order(df["layer"].unique()), title=None)


def _hover_marker(hover: alt.Parameter):
    return alt.when(hover).then(alt.value(1)).otherwise(alt.value(0))


def layer_chart(df: pd.DataFrame, metric: str, site: str, *, layout: str = "overlay",
                log: bool = False, band: str | None = None, title: str | None = None,
                columns: int | None = None, smoothing: float = 0.0,
                max_points: int = MAX_POINTS, y_title: str | None = None,
                rows_only: bool = False, client: bool = False):
    """A per-layer metric over steps (``y_title``: default the metric and site in words).

    ``layout='side'``: rows = methods, columns = layers. ``layout='overlay'``: one panel per
    layer (wrapped into ``columns``, default up to 3), colour = method. Seeds, ``band``,
    ``smoothing``, ``log`` and ``rows_only`` as in :func:`normlab.views.charts.metric_chart`.
    """
    if layout not in ("overlay", "side"):
        raise ValueError(f"layout ({layout!r}) must be 'overlay' or 'side'")
    data = series_frame(df, metric, site, band=band, smoothing=smoothing,
                        max_points=max_points, log=log, client=client)
    layers = natural_order(data["layer"].unique())
    panels = (run_field(data)[0], "layer") if layout == "side" else ("layer",)
    if rows_only:
        return curve_data(data, panels, band)[0]
    chart = curve_layers(data, y_title=y_title or axis_title(metric, site), log=log,
                         client=client,
                         band=band, panels=panels, below=True)
    if layout == "side":
        chart = chart.properties(width=PANEL_WIDTH, height=PANEL_HEIGHT).facet(
            row=run_row(data), column=_layer_column(data))
    else:
        chart = chart.properties(width=WIDE_WIDTH, height=WIDE_HEIGHT).facet(
            facet=alt.Facet("layer:N", sort=layers, title=None),
            columns=columns or min(len(layers), 3) or 1)
    chart = style(chart.resolve_scale(x="shared", y="shared"), title)
    if client:  # the browser's smoothing, log scale and site (normlab.views.clientcurves)
        chart = view_params(hoisted(chart))
    return chart


def percentile_chart(df: pd.DataFrame, site: str, *, title: str | None = None,
                     max_points: int = MAX_POINTS, units: bool = False) -> alt.FacetChart:
    """p15..p85 band and p50 line of ``site`` over steps, with the median's 95% sampling
    interval as a darker band; rows = methods, columns = layers. A :func:`normlab.views.
    frames.unit_frame` can be drawn the same way (``units=True``: one row per unit)."""
    data = (unit_frame if units else percentile_frame)(with_label(df), site)
    data = downsample(data, max_points, by=["method", "label", "layer"], value="p50")
    pick, hover = legend_pick(colour_field(data)), hover_pick()
    y_title = f"value ({site})"
    base = alt.Chart().encode(x=alt.X("step:Q", title="step"), color=method_color(data, True),
                              detail="label:N")
    # the middle 70% of the activations: 15th to 85th percentile
    band = base.mark_area().encode(y=alt.Y("p15:Q", title=y_title), y2="p85:Q",
                                   opacity=faded(pick, 0.3, 0.05))
    # the median's 95% sampling interval (zero width where every value was used)
    noise = base.mark_area().encode(y=alt.Y("p50_lo:Q", title=y_title), y2="p50_hi:Q",
                                    opacity=faded(pick, 0.6, 0.1))
    # the median
    median = base.mark_line(strokeWidth=2).encode(
        y=alt.Y("p50:Q", title=y_title), opacity=faded(pick)).add_params(pick, zoom_steps())
    # hover targets on the median carrying the three percentiles
    points = base.mark_point(filled=True, size=50).encode(
        y=alt.Y("p50:Q", title=y_title), opacity=_hover_marker(hover),
        tooltip=[alt.Tooltip("step:Q"), alt.Tooltip("method:N"),
                 alt.Tooltip("label:N", title="runs"), alt.Tooltip("layer:N"),
                 alt.Tooltip("p15:Q", title="15th percentile", format=".4g"),
                 alt.Tooltip("p50:Q", title="median", format=".4g"),
                 alt.Tooltip("p85:Q", title="85th percentile", format=".4g"),
                 alt.Tooltip("p50_lo:Q", title="p50 95% from", format=".4g"),
                 alt.Tooltip("p50_hi:Q", title="p50 95% to", format=".4g")],
    ).add_params(hover)
    if "p50_lo" not in data.columns:
        data = data.assign(p50_lo=np.nan, p50_hi=np.nan)
    chart = (alt.layer(band, noise, median, points, data=data)
             .properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
             .facet(row=run_row(data), column=_layer_column(data))
             .resolve_scale(x="shared", y="shared"))
    return style(chart, title or f"{site}: 15th, 50th (line) and 85th percentiles")


def hist_heatmap(df: pd.DataFrame, site: str, *, activation: str | None = None,
                 max_steps: int = 80, floor: float = FLOOR,
                 title: str | None = None) -> alt.FacetChart:
    """The histogram of ``site`` over time: x = step, y = value bin, colour = fraction.

    Rows = methods, columns = layers. Fractions are averaged over seeds and over the steps
    merged into one of at most ``max_steps`` columns; the colour scale is logarithmic from
    ``floor`` to 1 (smaller positive fractions clamp to ``floor``, empty bins stay blank).
    Each run's bins are its recorded range (fitted at its first step); values outside it
    are not drawn (see :func:`normlab.views.frames.overflow_frame`); runs stored before
    that used a fixed range whose end bins also hold the values outside.
    """
    data = hist_time_frame(with_label(df), site, activation=activation, max_steps=max_steps)
    lo, hi = (float(data["lo"].min()), float(data["hi"].max())) if len(data) else (0.0, 1.0)
    data = data[data["fraction"] > 0].drop(columns="bin")
    # one cell per (step interval, value bin): the share of activations in that bin
    cells = alt.Chart().mark_rect().encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(grid=False)), x2="step_end:Q",
        y=alt.Y("lo:Q", title=f"value ({site})", scale=alt.Scale(domain=[lo, hi], nice=False),
                axis=alt.Axis(grid=False)),
        y2="hi:Q",
        color=alt.Color("fraction:Q", title="fraction",
                        scale=alt.Scale(type="log", domain=[floor, 1.0], clamp=True,
                                        scheme="viridis", reverse=True),
                        legend=alt.Legend(format=".0e", orient="bottom", direction="horizontal",
                                          gradientLength=240)),
        tooltip=[alt.Tooltip("step:Q", title="from step"),
                 alt.Tooltip("step_end:Q", title="to step"), alt.Tooltip("method:N"),
                 alt.Tooltip("label:N", title="runs"), alt.Tooltip("layer:N"),
                 alt.Tooltip("lo:Q", title="bin from", format=".3g"),
                 alt.Tooltip("hi:Q", title="bin to", format=".3g"),
                 alt.Tooltip("fraction:Q", format=".3g")],
    )
    chart = (alt.layer(cells.add_params(zoom_steps()), data=data)
             .properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
             .facet(row=run_row(data), column=_layer_column(data))
             .resolve_scale(x="shared", y="shared", color="shared"))
    return style(chart, title or f"{site} histogram over time")


def hist_at_step(df: pd.DataFrame, site: str, step: int, *, activation: str | None = None,
                 log: bool = False, floor: float = FLOOR, columns: int | None = None,
                 title: str | None = None) -> alt.FacetChart:
    """Every method's histogram of ``site`` at ``step`` (nearest measured), one panel per layer.

    Step-style outlines, colour = method; ``log=True`` puts the fraction on a log axis
    clipped at ``floor``. The step actually used per method is in the tooltip.
    """
    data = hist_step_frame(with_label(df), site, step, activation=activation)
    keys = ["method", "label", "layer"]
    # The closing edge of the last bin, so the step outline spans the whole range.
    last = data.sort_values("bin").groupby(keys, sort=False).tail(1)
    data = pd.concat([data.assign(x=data["lo"], closing=False),
                      last.assign(x=last["hi"], closing=True)], ignore_index=True)
    data = data.assign(mid=(data["lo"] + data["hi"]) / 2).drop(columns="bin")
    if log:
        data = data.assign(fraction=np.maximum(data["fraction"], floor))
    layers = natural_order(data["layer"].unique())
    pick, hover = legend_pick(colour_field(data)), hover_pick()
    y = alt.Y("fraction:Q", title="fraction of values",
              scale=alt.Scale(type="log", domainMin=floor) if log else alt.Scale())
    base = alt.Chart().encode(color=method_color(data, True), detail="label:N")
    # the histogram outline of each method
    outline = base.mark_line(interpolate="step-after", strokeWidth=2).encode(
        x=alt.X("x:Q", title=f"value ({site})"), y=y, opacity=faded(pick))
    if (strokes := dash(data)) is not None:
        outline = outline.encode(strokeDash=strokes)
    # hover targets at bin centres, carrying the bin's range and fraction
    points = base.mark_point(filled=True, size=50).encode(
        x=alt.X("mid:Q", title=f"value ({site})"), y=y, opacity=_hover_marker(hover),
        tooltip=[alt.Tooltip("method:N"), alt.Tooltip("label:N", title="runs"),
                 alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("lo:Q", title="bin from", format=".3g"),
                 alt.Tooltip("hi:Q", title="bin to", format=".3g"),
                 alt.Tooltip("fraction:Q", format=".3g")],
    ).transform_filter("!datum.closing").add_params(hover)
    chart = (alt.layer(outline.add_params(pick), points, data=data)
             .properties(width=WIDE_WIDTH, height=WIDE_HEIGHT)
             .facet(facet=alt.Facet("layer:N", sort=layers, title=None),
                    columns=columns or min(len(layers), 3) or 1)
             .resolve_scale(x="shared", y="shared"))
    return style(chart, title or f"{site} histogram at step {step}")
