"""Chart builders for model-level training curves, and the conventions every NormLab chart
follows (the pieces implementing them are in :mod:`normlab.views.chartparts`, re-exported
here; the live charts' browser-side options in :mod:`normlab.views.clientcurves`).

One pure function per chart kind: a tidy frame in (the rows of :mod:`normlab.measure.schema` plus
``method``, ``seed`` and ``label`` from :func:`normlab.views.frames.with_methods`), an Altair chart
out; no Streamlit. Builders prepare their own data (seed aggregation, optional EMA
smoothing, :func:`normlab.views.frames.downsample` to ``max_points`` per series), so a page can
pass large frames. Per-layer charts (layer metrics, percentile bands, histograms) are in
:mod:`normlab.views.layercharts`.

Shared conventions (Altair gallery style: a ``base`` with explicit encoding types, marks
layered on it):

* colour = what differs between the drawn runs: ``method`` through
  :func:`normlab.views.palette.color_scale` (same colour everywhere) when several methods
  are drawn, else ``label`` (e.g. "batch · lr 0.01", see :func:`normlab.views.frames.
  with_methods`) through :func:`normlab.views.palette.label_scale`; with several methods,
  labels of one method are told apart by line dash;
* clicking a legend entry highlights that entry (``selection_point(bind='legend')`` driving
  opacity; shift-click adds more);
* hovering a curve chart shows a rule at the nearest step and a tooltip with every run's
  value there (:func:`hover_rows`; a ``nearest`` selection on a rule layer); other charts
  show the nearest point's values;
* drag or wheel zooms and pans the step axis (an interval selection bound to the x scale),
  a double-click resets it;
* with ``smoothing``, the smoothed curve is drawn over the raw one, faint (as TensorBoard);
  the spec is the same without (the raw column then empty), so only the rows change;
* small multiples share their x and y scales, so shapes compare honestly;
* single panels take their container's width (``width='container'``, legend on the right,
  inside it); small multiples get a fixed panel size that the page fits to its column
  (:func:`normlab.views.compareview.fit`) and their legend below them;
* ``log=True`` for quantities spanning decades (loss, gradient norms): non-positive values
  cannot be drawn on a log axis and are dropped; ticks are labelled at 1, 2 and 5 per decade;
* ``client=True`` (the Compare page's live charts): the rows go unsmoothed and unmasked
  (every activation site's, for a chart built for ``viewparams.ANY_SITE``), and the
  browser applies the smoothing, the log scale and the site from Vega-Lite params
  (:mod:`normlab.views.viewparams`); ``log`` then says whether the chart follows the log
  option.

:func:`to_image` renders any chart to PNG or SVG with vl-convert, for download buttons.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import vl_convert as vlc

from normlab.views.frames import aggregate_seeds, downsample, natural_order, smooth
from normlab.measure.schema import ACT_SITES
from normlab.views.viewparams import ANY_SITE
from normlab.views.clientcurves import client_frame, client_layers, hoisted, view_params
from normlab.views.chartparts import (  # noqa: F401  (the shared pieces, re-exported)
    FADED, LEGEND_COLUMNS, RAW_OPACITY, colour_field, dash, faded, hover_layer, hover_pick,
    hover_step, labels_in, legend, legend_pick, log_axis, log_safe, method_color, methods_in,
    multi_label, run_field, run_row, style, with_label, y_enc, y_scale, zoom_steps)

WIDTH, HEIGHT = 600, 320  # one overlay panel, px
PANEL_WIDTH, PANEL_HEIGHT = 210, 140  # one small multiple, px
WIDE_WIDTH, WIDE_HEIGHT = 300, 190  # one panel of a per-layer overlay (few panels), px
MAX_POINTS = 600  # rows per drawn series (see frames.downsample)

METRIC_TITLES = {
    "loss": "loss", "acc": "accuracy", "grad_norm": "gradient norm",
    "weight_norm": "weight norm", "update_ratio": "update ratio ‖Δw‖/‖w‖",
    "mean": "mean", "var": "variance", "saturated": "saturated fraction",
    "dead": "dead fraction",
}
BANDS = (None, "minmax", "std")
SERIES_COLUMNS = ("run", "method", "label", "seed", "layer", "step", "value")


def axis_title(metric: str, site: str) -> str:
    """A readable axis title, e.g. 'gradient norm (param)'."""
    return f"{METRIC_TITLES.get(metric, metric)} ({site})"


def series_frame(df: pd.DataFrame, metric: str, site: str, *, band: str | None,
                 smoothing: float, max_points: int, log: bool,
                 client: bool = False) -> pd.DataFrame:
    """The rows of (metric, site) smoothed per run, seed-aggregated and downsampled.

    With ``smoothing``, ``value`` is the smoothed mean and ``raw`` the mean of the raw
    values (what the faint curve behind the smoothed one draws); without, ``raw`` is
    empty (NaN): the column, and so the chart's spec, is the same either way, and the
    browser swaps the rows of a drawn chart when only the smoothing changes.

    ``client``: the rows of a chart that smooths and masks for a log scale in the browser
    (:mod:`normlab.views.viewparams`): ``value``, ``lo``, ``hi`` neither smoothed nor
    masked, ``k`` the row's index among its series' finite values before thinning, and
    ``tip_value`` / ``tip_lo`` / ``tip_hi`` what the hover tooltip says (smoothed per run
    as above when ``smoothing``; ``log`` is ignored). With ``site`` :data:`~normlab.views.
    viewparams.ANY_SITE`, the rows of every activation site, each with its ``site``."""
    if band not in BANDS:
        raise ValueError(f"band ({band!r}) must be one of {BANDS}")
    every_site = client and site == ANY_SITE  # the browser keeps one (each row says which)
    where = df["site"].isin(ACT_SITES) if every_site else df["site"] == site
    by_site = ("site",) if every_site else ()
    rows = with_label(df.loc[(df["metric"] == metric) & where,
                             [c for c in SERIES_COLUMNS + by_site if c in df]])
    keys = ["method", "label", "layer", *by_site, "step"]
    if client:
        return client_frame(rows, keys, band, smoothing, max_points)
    agg = aggregate_seeds(smooth(rows, smoothing) if smoothing else rows, band=band, by=keys)
    if smoothing:
        raw = aggregate_seeds(rows, band=None, by=keys)
        agg = agg.assign(raw=raw["value"].to_numpy()) if len(raw) == len(agg) else agg.merge(
            raw[keys + ["value"]].rename(columns={"value": "raw"}), on=keys, how="left")
    else:
        agg = agg.assign(raw=np.nan)
    agg = downsample(agg, max_points, by=["method", "label", "layer"])
    if log:
        agg = agg.assign(raw=agg["raw"].where(agg["raw"] > 0))
    return log_safe(agg) if log else agg


HOVER_STEPS = 150  # hover rules per panel at most (one per step, the steps thinned evenly)


def _fmt(values: np.ndarray) -> np.ndarray:
    """Numbers as short text ('0.2345', '1.2e-05'); '–' where missing."""
    return np.array([f"{v:.4g}" if v == v else "–" for v in values.tolist()], dtype=object)


def _tip_text(rows: pd.DataFrame, band: str | None) -> np.ndarray:
    """Per row, the words a hover tooltip shows for one run: the (smoothed) value, the
    raw one behind it, the seed band."""
    return _tip_words({c: rows[c].to_numpy(dtype=float) for c in ("value", "raw", "lo", "hi")
                       if c in rows}, band)


def _tip_words(columns: dict[str, np.ndarray], band: str | None) -> np.ndarray:
    """:func:`_tip_text` of rows given as float arrays by column."""
    text = _fmt(columns["value"])
    raw = columns.get("raw")
    if raw is not None and (raw == raw).any():
        text = text + " (raw " + _fmt(raw) + ")"
    if band and "lo" in columns:
        text = text + ", seeds " + _fmt(columns["lo"]) + " to " + _fmt(columns["hi"])
    return text


def hover_rows(df: pd.DataFrame, panels: tuple[str, ...], band: str | None,
               steps: int = HOVER_STEPS) -> tuple[pd.DataFrame, list[str]]:
    """The rows a chart's hover rules are drawn from, and the labels their tooltips list.

    One row per panel (``panels``: the columns the chart is faceted by) and step, the
    steps of the panel thinned evenly to at most ``steps``. When a panel shows several
    runs (labels), the row has a text column ``tip_i`` per label (:func:`labels_in`
    order): that run's value at the recorded step nearest to the row's step, '–' outside
    the run's steps; else (one run per panel) its ``label`` and one column ``tip_0``.
    The rows carry ``hover=True`` (the curves' rows do not)."""
    keys = [k for k in panels if k in df.columns]
    per_label = not keys or bool(len(df)) and bool(
        df.groupby(keys, observed=True)["label"].nunique().max() > 1)
    labels = labels_in(df) if per_label and len(df) else []
    out = []
    groups = df.groupby(keys, sort=False, observed=True) if keys else [((), df)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        part_steps = part["step"].to_numpy()
        all_steps = np.unique(part_steps)
        if len(all_steps) > steps:
            all_steps = np.unique(all_steps[np.linspace(0, len(all_steps) - 1, steps).round()
                                            .astype(int)])
        row: dict[str, object] = {"step": all_steps}
        for k, v in zip(keys, key):
            row[k] = v
        if per_label:
            # per label, its rows in step order (positions into the part's arrays)
            values = {c: part[c].to_numpy(dtype=float) for c in ("value", "raw", "lo", "hi")
                      if c in part}
            at_label = part.groupby("label", sort=False, observed=True).indices
            for i, lab in enumerate(labels):
                col = np.full(len(all_steps), "–", dtype=object)
                where = at_label.get(lab)
                if where is not None and len(where):
                    where = where[np.argsort(part_steps[where], kind="stable")]
                    s = part_steps[where]
                    at = np.clip(np.searchsorted(s, all_steps), 0, len(s) - 1)
                    before = np.clip(at - 1, 0, len(s) - 1)
                    near = np.where(np.abs(s[before] - all_steps) <= np.abs(s[at] - all_steps),
                                    before, at)
                    inside = (all_steps >= s[0]) & (all_steps <= s[-1])
                    picked = where[near[inside]]
                    col[inside] = _tip_words({c: v[picked] for c, v in values.items()}, band)
                row[f"tip_{i}"] = col
            out.append(pd.DataFrame(row))
        else:  # the panel's one run
            frame = pd.DataFrame(row)
            frame["label"] = part["label"].iloc[0]
            rows = part.sort_values("step").drop_duplicates("step")
            frame["tip_0"] = _tip_text(rows.set_index("step").loc[all_steps].reset_index(), band)
            out.append(frame)
    frame = pd.concat(out, ignore_index=True) if out else pd.DataFrame({"step": []})
    return frame.assign(hover=True), labels


def curve_data(df: pd.DataFrame, panels: tuple[str, ...], band: str | None
               ) -> tuple[pd.DataFrame, list[str]]:
    """The one dataset of :func:`curve_layers`'s chart: the curves' rows (each with its
    ``curve``) and the hover rows (:func:`hover_rows`); and the labels the tooltips list."""
    if "site" in df.columns:  # every site's rows (the browser keeps one): tips per site
        panels = (*panels, "site")
    if "tip_value" in df.columns:  # client=True rows: the tooltips say the server's values
        said = df.drop(columns=["value", "lo", "hi", "raw"], errors="ignore").rename(
            columns={"tip_value": "value", "tip_lo": "lo", "tip_hi": "hi"})
        if not df["value"].equals(df["tip_value"]):
            said["raw"] = df["value"]
        df = df.drop(columns=[c for c in ("tip_value", "tip_lo", "tip_hi") if c in df])
        tips, labels = hover_rows(said, panels, band)
    else:
        tips, labels = hover_rows(df, panels, band)
    return pd.concat([df.assign(curve=df["label"]), tips], ignore_index=True), labels


def curve_layers(df: pd.DataFrame, *, y_title: str, log: bool, band: str | None,
                 panels: tuple[str, ...] = (), below: bool = False,
                 client: bool = False) -> alt.LayerChart:
    """Mean line (+ seed band, + faint raw curve when ``df`` has ``raw``) per method/label
    over steps, with legend pick, hover and step zoom; ``below``: legend under the chart.

    ``client``: ``df`` is :func:`series_frame`'s ``client=True`` rows, and the browser
    smooths them and (when ``log``: the chart follows the log-scale option) puts them on a
    log or linear scale, as the params of :mod:`normlab.views.viewparams` say.

    ``panels``: the columns the caller facets the chart by. Hovering shows one vertical
    rule at the nearest step and a tooltip with every run of the panel at that step
    (:func:`hover_rows`), rather than a point per datum: a chart of 9 runs then has ~100
    hover marks, not ~900, which is what the browser spends its time on when a chart is
    drawn anew (tooltips and opacity conditions are evaluated per mark)."""
    rows, labels = curve_data(df, panels, band)
    if client:
        return client_layers(df, rows, labels, y_title=y_title, loggable=log, band=band,
                             panels=panels, below=below)
    field = colour_field(df)
    pick, hover = legend_pick(field), hover_step()
    y = y_enc("value:Q", y_title, log)
    # the hover rows have no value: they draw nothing on the curves' layers (left there
    #   unfiltered: a filter per layer costs each layer its own copy of the data per panel,
    #   which doubled the time to draw a tab of per-layer grids). A curve is grouped by
    #   ``curve`` (its label; none on the hover rows), not by ``label``: a panel's hover
    #   rows carry its run's label, and in that group their empty values would break the
    #   curve's path at every step (side by side drew no curve at all)
    base = alt.Chart().encode(x=alt.X("step:Q", title="step"), color=method_color(df, below),
                              detail="curve:N")
    line = base.mark_line(strokeWidth=2, clip=True).encode(y=y, opacity=faded(pick))
    if (strokes := dash(df)) is not None:
        line = line.encode(strokeDash=strokes)
    layers = []
    if band:
        # the spread across seeds (min..max or mean ± std), drawn under the lines
        layers.append(base.mark_area(clip=True).encode(
            y=y_enc("lo:Q", y_title, log), y2="hi:Q", opacity=faded(pick, 0.22, 0.03)))
    if "raw" in df.columns:
        # the raw curve, faint, behind the smoothed one (as TensorBoard draws it)
        #   (its rows only: unsmoothed, ``raw`` is empty and the layer draws nothing, at
        #   the cost of one filter per row instead of encoding every row as a point)
        layers.append(base.mark_line(strokeWidth=1, clip=True).encode(
            y=y_enc("raw:Q", y_title, log), opacity=faded(pick, RAW_OPACITY, 0.04))
            .transform_filter("datum.raw != null"))
    # the mean over seeds (the run itself when there is one seed); drag/wheel zooms steps
    layers.append(line.add_params(pick, zoom_steps()))
    layers.append(hover_layer(df, panels, labels, hover))
    return alt.layer(*layers, data=rows)


# ----------------------------------------------------------------------------- builders
def metric_chart(df: pd.DataFrame, metric: str, site: str, *, layout: str = "overlay",
                 log: bool = False, band: str | None = None, title: str | None = None,
                 columns: int | None = None, smoothing: float = 0.0,
                 max_points: int = MAX_POINTS, rows_only: bool = False,
                 client: bool = False):
    """A model-level curve over steps: train/val ``loss``, ``acc``, train ``grad_norm``.

    ``layout='overlay'``: one panel as wide as its container, colour = method (or label,
    see :func:`colour_field`). ``layout='side'``: small multiples, one per method (label),
    wrapped into ``columns`` (default up to 4) with shared axes. Several seeds give the mean
    line plus, with ``band='minmax'`` or ``'std'``, a band across seeds. ``smoothing`` is a
    TensorBoard EMA weight in [0, 1) applied per run before aggregation; the raw curve is
    drawn faint behind. ``rows_only``: the chart's dataset (:func:`curve_data`), no chart.
    """
    if layout not in ("overlay", "side"):
        raise ValueError(f"layout ({layout!r}) must be 'overlay' or 'side'")
    data = series_frame(df, metric, site, band=band, smoothing=smoothing,
                        max_points=max_points, log=log, client=client)
    if data["layer"].nunique() > 1:
        raise ValueError(f"{metric!r} at {site!r} has several layers "
                         f"({', '.join(natural_order(data['layer'].unique()))}): use layer_chart")
    data = data.drop(columns="layer")
    field = colour_field(data)
    if rows_only:
        return curve_data(data, () if layout == "overlay" else (field,), band)[0]
    chart = curve_layers(data, y_title=axis_title(metric, site), log=log, band=band,
                         client=client,
                         below=layout == "side", panels=() if layout == "overlay" else (field,))
    if layout == "overlay":
        chart = chart.properties(width="container", height=HEIGHT)
    else:
        panels = labels_in(data) if field == "label" else methods_in(data)
        chart = (chart.properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
                 .facet(facet=alt.Facet(f"{field}:N", sort=panels, title=None),
                        columns=columns or min(len(panels), 4) or 1)
                 .resolve_scale(x="shared", y="shared"))
    chart = style(chart, title)
    if client:  # the browser's smoothing, log scale and site (normlab.views.clientcurves)
        chart = view_params(hoisted(chart))
    return chart


def to_image(chart: alt.TopLevelMixin, fmt: str = "png", *, scale: float = 2.0) -> bytes:
    """The chart rendered by vl-convert: PNG bytes, or SVG text encoded as UTF-8."""
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    raise ValueError(f"fmt ({fmt!r}) must be 'png' or 'svg'")
