"""Chart builders for model-level training curves, and the pieces every NormLab chart shares.

One pure function per chart kind: a tidy frame in (the rows of :mod:`normlab.measure.schema` plus
``method``, ``seed`` and ``label`` from :func:`normlab.views.frames.with_methods`), an Altair chart
out; no Streamlit. Builders prepare their own data (seed aggregation, optional EMA
smoothing, :func:`normlab.views.frames.downsample` to ``max_points`` per series), so a page can
pass large frames. Per-layer charts (layer metrics, percentile bands, histograms) are in
:mod:`normlab.views.layercharts`.

Shared conventions (Altair gallery style: a ``base`` with explicit encoding types, marks
layered on it):

* colour = ``method`` through :func:`normlab.views.palette.color_scale` (same colour everywhere);
  ``label`` separates runs of the same method (line dash when a method has several labels);
* clicking a legend entry highlights that method (``selection_point(fields=['method'],
  bind='legend')`` driving opacity; shift-click adds more);
* hovering shows a tooltip for the nearest point (a ``nearest`` selection on a point layer);
* small multiples share their x and y scales, so shapes compare honestly;
* ``log=True`` for quantities spanning decades (loss, gradient norms): non-positive values
  cannot be drawn on a log axis and are dropped.

:func:`to_image` renders any chart to PNG or SVG with vl-convert, for download buttons.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import vl_convert as vlc

from normlab.views.frames import aggregate_seeds, downsample, natural_key, natural_order, smooth
from normlab.views.palette import color_scale, method_order

WIDTH, HEIGHT = 600, 320  # one overlay panel, px
PANEL_WIDTH, PANEL_HEIGHT = 210, 140  # one small multiple, px
WIDE_WIDTH, WIDE_HEIGHT = 300, 190  # one panel of a per-layer overlay (few panels), px
MAX_POINTS = 600  # rows per drawn series (see frames.downsample)
FADED = 0.12  # opacity of methods not picked in the legend

METRIC_TITLES = {
    "loss": "loss", "acc": "accuracy", "grad_norm": "gradient norm",
    "weight_norm": "weight norm", "update_ratio": "update ratio ‖Δw‖/‖w‖",
    "mean": "mean", "var": "variance", "saturated": "saturated fraction",
    "dead": "dead fraction",
}
BANDS = (None, "minmax", "std")


def axis_title(metric: str, site: str) -> str:
    """A readable axis title, e.g. 'gradient norm (param)'."""
    return f"{METRIC_TITLES.get(metric, metric)} ({site})"


# ----------------------------------------------------------------------- shared pieces
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


def column_field(df: pd.DataFrame) -> alt.Column:
    """The method column facet, or label when a method has several labels."""
    if multi_label(df):
        return alt.Column("label:N", sort=labels_in(df), title=None)
    return alt.Column("method:N", sort=methods_in(df), title=None)


def legend_pick() -> alt.Parameter:
    """Click a legend entry to highlight that method (shift-click for more)."""
    return alt.selection_point(name="pick_method", fields=["method"], bind="legend")


def hover_pick() -> alt.Parameter:
    """The data point nearest the pointer (drives the tooltip and the hover marker)."""
    return alt.selection_point(name="hover", nearest=True, on="pointerover",
                               clear="pointerout", empty=False)


def faded(pick: alt.Parameter, on: float = 1.0, off: float = FADED):
    """Opacity: ``on`` for picked methods (all when nothing is picked), else ``off``."""
    return alt.when(pick).then(alt.value(on)).otherwise(alt.value(off))


def method_color(df: pd.DataFrame) -> alt.Color:
    """Colour by method with the shared palette, restricted to the methods present."""
    methods = methods_in(df)
    return alt.Color("method:N", scale=color_scale(methods), sort=methods,
                     legend=alt.Legend(title="method", symbolType="stroke", symbolOpacity=1,
                                       symbolStrokeWidth=3))


def y_scale(log: bool) -> alt.Scale:
    return alt.Scale(type="log") if log else alt.Scale(zero=False)


def log_safe(df: pd.DataFrame, cols: tuple[str, ...] = ("value",),
             floor_cols: tuple[str, ...] = ("lo",)) -> pd.DataFrame:
    """Rows whose ``cols`` are > 0; ``floor_cols`` clipped up to the smallest positive value."""
    keep = np.logical_and.reduce([df[c].to_numpy() > 0 for c in cols if c in df.columns])
    out = df[keep]
    for c in floor_cols:
        if c in out.columns and len(out):
            floor = float(out[list(cols)].min().min())
            out = out.assign(**{c: out[c].clip(lower=floor)})
    return out


def style(chart: alt.TopLevelMixin, title: str | None) -> alt.TopLevelMixin:
    """Dashboard font sizes (readable on a projector) and the title; call last."""
    if title:
        chart = chart.properties(title=title)
    return (chart.configure_axis(labelFontSize=12, titleFontSize=13, grid=True)
            .configure_legend(labelFontSize=12, titleFontSize=13, symbolStrokeWidth=3,
                              labelLimit=260)
            .configure_header(labelFontSize=13, titleFontSize=13)
            .configure_title(fontSize=16, anchor="start")
            .configure_view(stroke="#bbbbbb"))


def series_frame(df: pd.DataFrame, metric: str, site: str, *, band: str | None,
                 smoothing: float, max_points: int, log: bool) -> pd.DataFrame:
    """The rows of (metric, site) smoothed per run, seed-aggregated and downsampled."""
    if band not in BANDS:
        raise ValueError(f"band ({band!r}) must be one of {BANDS}")
    cols = [c for c in ("run", "method", "label", "seed", "layer", "step", "value") if c in df]
    rows = with_label(df.loc[(df["metric"] == metric) & (df["site"] == site), cols])
    if smoothing:
        rows = smooth(rows, smoothing)
    agg = aggregate_seeds(rows, band=band, by=["method", "label", "layer", "step"])
    agg = downsample(agg, max_points, by=["method", "label", "layer"])
    return log_safe(agg) if log else agg


def curve_layers(df: pd.DataFrame, *, y_title: str, log: bool, band: str | None,
                 extra_tooltip: tuple[alt.Tooltip, ...] = ()) -> alt.LayerChart:
    """Mean line (+ seed band) per method/label over steps, with legend pick and hover."""
    pick, hover = legend_pick(), hover_pick()
    tooltip = [alt.Tooltip("step:Q", title="step"), alt.Tooltip("method:N", title="method"),
               alt.Tooltip("label:N", title="label"), *extra_tooltip,
               alt.Tooltip("value:Q", title="mean" if band else "value", format=".4g"),
               alt.Tooltip("n_seeds:Q", title="seeds")]
    if band:
        tooltip[-1:-1] = [alt.Tooltip("lo:Q", format=".4g"), alt.Tooltip("hi:Q", format=".4g")]
    y = alt.Y("value:Q", title=y_title, scale=y_scale(log))
    base = alt.Chart().encode(x=alt.X("step:Q", title="step"), color=method_color(df),
                              detail="label:N")
    line = base.mark_line(strokeWidth=2, clip=True).encode(y=y, opacity=faded(pick))
    if multi_label(df):
        line = line.encode(strokeDash=alt.StrokeDash("label:N", sort=labels_in(df)))
    layers = []
    if band:
        # the spread across seeds (min..max or mean ± std), drawn under the lines
        layers.append(base.mark_area(clip=True).encode(
            y=alt.Y("lo:Q", title=y_title, scale=y_scale(log)), y2="hi:Q",
            opacity=faded(pick, 0.22, 0.03)))
    # the mean over seeds (the run itself when there is one seed)
    layers.append(line.add_params(pick))
    # hover targets: the nearest point shows a dot and the tooltip
    layers.append(base.mark_point(filled=True, size=60).encode(
        y=y, opacity=alt.when(hover).then(alt.value(1)).otherwise(alt.value(0)),
        tooltip=tooltip).add_params(hover))
    return alt.layer(*layers, data=df)


# ----------------------------------------------------------------------------- builders
def metric_chart(df: pd.DataFrame, metric: str, site: str, *, layout: str = "overlay",
                 log: bool = False, band: str | None = None, title: str | None = None,
                 columns: int | None = None, smoothing: float = 0.0,
                 max_points: int = MAX_POINTS) -> alt.TopLevelMixin:
    """A model-level curve over steps: train/val ``loss``, ``acc``, train ``grad_norm``.

    ``layout='overlay'``: one panel, colour = method. ``layout='side'``: small multiples, one
    per method, wrapped into ``columns`` (default up to 4) with shared axes. Several seeds
    give the mean line plus, with ``band='minmax'`` or ``'std'``, a band across seeds.
    ``smoothing`` is a TensorBoard EMA weight in [0, 1) applied per run before aggregation.
    """
    if layout not in ("overlay", "side"):
        raise ValueError(f"layout ({layout!r}) must be 'overlay' or 'side'")
    data = series_frame(df, metric, site, band=band, smoothing=smoothing,
                        max_points=max_points, log=log)
    if data["layer"].nunique() > 1:
        raise ValueError(f"{metric!r} at {site!r} has several layers "
                         f"({', '.join(natural_order(data['layer'].unique()))}): use layer_chart")
    data = data.drop(columns="layer")
    chart = curve_layers(data, y_title=axis_title(metric, site), log=log, band=band)
    if layout == "overlay":
        chart = chart.properties(width=WIDTH, height=HEIGHT)
    else:
        methods = methods_in(data)
        chart = (chart.properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
                 .facet(facet=alt.Facet("method:N", sort=methods, title=None),
                        columns=columns or min(len(methods), 4) or 1)
                 .resolve_scale(x="shared", y="shared"))
    return style(chart, title)


def to_image(chart: alt.TopLevelMixin, fmt: str = "png", *, scale: float = 2.0) -> bytes:
    """The chart rendered by vl-convert: PNG bytes, or SVG text encoded as UTF-8."""
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    raise ValueError(f"fmt ({fmt!r}) must be 'png' or 'svg'")
