"""The pieces every NormLab curve chart shares: labels, colours, legend pick, hover, zoom,
log axes, the dashboard's styling.

Used by the builders of :mod:`normlab.views.charts` (which re-exports them),
:mod:`normlab.views.layercharts` and :mod:`normlab.views.clientcurves`; see
:mod:`normlab.views.charts` for the conventions they implement.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from normlab.views.frames import natural_key
from normlab.views.palette import color_scale, label_scale, method_order

FADED = 0.12  # opacity of methods not picked in the legend
RAW_OPACITY = 0.25  # the raw curve behind a smoothed one
LEGEND_COLUMNS = 5  # at most this many legend entries per row under small multiples


def with_label(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``label`` column (default: the method)."""
    return df if "label" in df.columns else df.assign(label=df["method"])


def multi_label(df: pd.DataFrame) -> bool:
    """Whether some method has several labels (then labels are told apart by dash/facet)."""
    return bool(len(df)) and bool(df.groupby("method")["label"].nunique().max() > 1)


def methods_in(df: pd.DataFrame) -> list[str]:
    """The methods of ``df`` in canonical order."""
    return method_order(df["method"].unique())


def labels_in(df: pd.DataFrame) -> list[str]:
    """The labels of ``df`` ordered by method (canonical), then label."""
    pairs = df[["method", "label"]].drop_duplicates()
    rank = {m: i for i, m in enumerate(methods_in(df))}
    return [lab for _, lab in sorted(zip(pairs["method"].map(rank), pairs["label"].astype(str)),
                                     key=lambda t: (t[0], natural_key(t[1])))]


def run_field(df: pd.DataFrame) -> tuple[str, list[str]]:
    """The field naming one curve's runs in a grid (``method``, or ``label`` when labels
    tell runs of one method apart) and its values in order."""
    if multi_label(df):
        return "label", labels_in(df)
    return "method", methods_in(df)


def run_row(df: pd.DataFrame) -> alt.Row:
    """Grid rows = methods (labels): a grid's width then grows with the layers shown, not
    with the methods compared, and fits a laptop screen."""
    field, order = run_field(df)
    return alt.Row(f"{field}:N", sort=order, title=None,
                   header=alt.Header(labelAngle=0, labelAlign="left", labelLimit=130))


def colour_field(df: pd.DataFrame) -> str:
    """What colour encodes: ``method`` when the frame has several methods (or one label),
    ``label`` when one method is drawn with several labels (e.g. runs at several lr)."""
    if len(df) and df["method"].nunique() == 1 and df["label"].nunique() > 1:
        return "label"
    return "method"


def legend_pick(field: str = "method") -> alt.Parameter:
    """Click a legend entry to highlight it (shift-click for more)."""
    return alt.selection_point(name="pick_method", fields=[field], bind="legend")


def hover_pick() -> alt.Parameter:
    """The data point nearest the pointer (drives the tooltip and the hover marker)."""
    return alt.selection_point(name="hover", nearest=True, on="pointerover",
                               clear="pointerout", empty=False)


def hover_step() -> alt.Parameter:
    """The step nearest the pointer (drives a curve chart's hover rule and its tooltip)."""
    return alt.selection_point(name="hover", nearest=True, on="pointerover",
                               clear="pointerout", empty=False, fields=["step"])


def zoom_steps() -> alt.Parameter:
    """Drag / wheel to zoom and pan the step axis; double-click resets (Vega-Lite's
    interval selection bound to the x scale clears on ``dblclick``)."""
    return alt.selection_interval(name="zoom", bind="scales", encodings=["x"])


def faded(pick: alt.Parameter, on: float = 1.0, off: float = FADED):
    """Opacity: ``on`` for picked methods (all when nothing is picked), else ``off``."""
    return alt.when(pick).then(alt.value(on)).otherwise(alt.value(off))


def legend(title: str, names: list[str], below: bool) -> alt.Legend:
    """The colour legend: on the right of a single panel; below small multiples, in rows
    short enough to stay within a ~800 px column (at most LEGEND_COLUMNS entries)."""
    if below:
        longest = max([len(str(n)) for n in names] + [4])
        per_row = max(1, min(len(names), LEGEND_COLUMNS, 760 // (7 * longest + 40)))
        where = dict(orient="bottom", direction="horizontal", columns=per_row)
    else:
        where = dict(orient="right")
    return alt.Legend(title=title, symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=3,
                      labelLimit=220, **where)


def method_color(df: pd.DataFrame, below: bool = False) -> alt.Color:
    """Colour by :func:`colour_field`: the method with the shared palette (restricted to the
    methods present), or the label with :func:`normlab.views.palette.label_scale`.

    The scale's domain orders the legend; no ``sort`` as well: Vega-Lite would compute a
    sort index for every datum (a chain of string comparisons, interpreted per point in
    the browser) to order what the domain already orders."""
    if colour_field(df) == "label":
        labels = labels_in(df)
        return alt.Color("label:N", scale=label_scale(labels),
                         legend=legend(str(df["method"].iloc[0]), labels, below))
    methods = methods_in(df)
    return alt.Color("method:N", scale=color_scale(methods),
                     legend=legend("method", methods, below))


def dash(df: pd.DataFrame):
    """Line dash by label when colour is the method and some method has several labels."""
    if colour_field(df) == "method" and multi_label(df):
        return alt.StrokeDash("label:N", sort=labels_in(df), title="runs",
                              legend=alt.Legend(orient="bottom", direction="horizontal",
                                                columns=2, labelLimit=300))
    return None


def log_axis() -> alt.Axis:
    """Log-axis labels at 1, 2 and 5 per decade only (the other ticks stay unlabelled)."""
    return alt.Axis(labelExpr="indexof(['1', '2', '5'], slice(format(datum.value, '.0e'), 0, 1))"
                              " >= 0 ? format(datum.value, '~g') : ''")


def y_scale(log: bool) -> alt.Scale:
    return alt.Scale(type="log") if log else alt.Scale(zero=False)


def y_enc(field: str, title: str, log: bool) -> alt.Y:
    return alt.Y(field, title=title, scale=y_scale(log), axis=log_axis() if log else alt.Axis())


def log_safe(df: pd.DataFrame, cols: tuple[str, ...] = ("value",),
             floor_cols: tuple[str, ...] = ("lo",)) -> pd.DataFrame:
    """Rows whose ``cols`` are > 0 or missing (a run named before it has values: nothing
    drawn, still in the legend); ``floor_cols`` clipped up to the smallest positive value."""
    keep = np.logical_and.reduce([(v > 0) | np.isnan(v) for v in
                                  (df[c].to_numpy(dtype=float) for c in cols if c in df.columns)])
    out = df[keep]
    for c in floor_cols:
        if c in out.columns and len(out):
            floor = float(out[list(cols)].min().min())
            out = out.assign(**{c: out[c].clip(lower=floor)})
    return out


def style(chart: alt.TopLevelMixin, title: str | None) -> alt.TopLevelMixin:
    """Dashboard font sizes (readable on a projector) and the title; call last.

    Lines, areas and rules carry no ARIA description: Vega-Lite would format one per
    datum (``"step: 5; loss: 2.31; method: …"``), which the browser's CSP-safe Vega
    interpreter evaluates for every point whenever a chart's data is swapped in, while a
    path announces only its first point's anyway. The axes, legends and titles keep
    theirs."""
    if title:
        chart = chart.properties(title=title)
    return (chart.configure_line(aria=False).configure_area(aria=False)
            .configure_rule(aria=False)
            .configure_axis(labelFontSize=12, titleFontSize=13, grid=True)
            .configure_legend(labelFontSize=12, titleFontSize=13, symbolStrokeWidth=3,
                              labelLimit=260)
            .configure_header(labelFontSize=13, titleFontSize=13)
            .configure_title(fontSize=16, anchor="start")
            .configure_view(stroke="#bbbbbb"))


def hover_layer(df: pd.DataFrame, panels: tuple[str, ...], labels: list[str],
                 hover: alt.Parameter) -> alt.Chart:
    """A rule at the step nearest the pointer, its tooltip listing the panel's runs there."""
    tooltip = [alt.Tooltip("step:Q", title="step")]
    if "layer" in panels and "layer" in df.columns:
        tooltip.append(alt.Tooltip("layer:N", title="layer"))
    tooltip += ([alt.Tooltip(f"tip_{i}:N", title=str(lab)) for i, lab in enumerate(labels)]
                if labels else [alt.Tooltip("label:N", title="runs"),
                                alt.Tooltip("tip_0:N", title="value")])
    return alt.Chart().mark_rule(color="#888888", strokeWidth=1).encode(
        x=alt.X("step:Q", title="step"),
        opacity=alt.when(hover).then(alt.value(0.8)).otherwise(alt.value(0)),
        tooltip=tooltip).transform_filter("datum.hover").add_params(hover)
