"""What the dashboard pages show, computed without Streamlit: tables, frames, chart choices.

Pages stay thin: they draw widgets and call these functions. Everything here works from a
Python shell or a test.

* :func:`methods_table` — the norm registry (:data:`normlab.methods.registry.NORMS`) as the Home
  page's table; :data:`FRAMEWORK_LATEX` the formula every method is a choice in.
* :data:`QUICK_START` / :func:`launch` — the one-click comparison, and submitting a form
  (method × seed on one config, named by :func:`comparison_name`, through
  :func:`normlab.runs.comparisons.submit`); :func:`form_errors` gives one message per form field
  (config.errors and compare.check, norm problems reported on ``methods``).
* :func:`progress_table` / :func:`progress_summary` — per run and overall: status,
  step/total, steps/s, ETA, last validation accuracy; with the live view's pacing, in
  :mod:`normlab.views.runprogress` (re-exported here).
* :func:`comparison_frame` — tidy metrics of some runs joined with method/seed/label
  (:func:`normlab.views.frames.with_methods`), loading only what a chart needs, thinned with
  ``every=`` (:func:`load_every`) for long runs.
* :data:`CHART_GROUPS` / :func:`build_chart` — the Compare page's charts, each drawn by
  one builder of :mod:`normlab.views.charts` / :mod:`normlab.views.layercharts`; :func:`fit` sizes
  small multiples to the page and enlarges them for presenter mode; :func:`stable_data`
  names a chart's data so that new data alone does not rebuild it in the browser.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from normlab.measure.schema import ACT_SITES
from normlab.training.config import ConfigError, RunConfig
from normlab.views.frames import with_methods
from normlab.runs.store import NotFound, Store
from normlab.views.urlstate import View, default_methods
from normlab.views.viewparams import ANY_SITE, name_rows, site_title
from normlab.views.runprogress import (  # noqa: F401  (split from here, re-exported)
    FIRST_LINE_WAIT, FIRST_POLL_SECONDS, FIRST_POLL_WINDOW, LIVE_REDRAWS, MANY_RUNS,
    chart_signature, comparison_choices, drawable, finished, poll_seconds, progress_groups,
    progress_summary, progress_table, run_label, signature, started, wait_for_line)

FRAMEWORK_LATEX = r"h = f\!\left(g \cdot \frac{x - \mu}{\sigma} + b\right)"

# The quick start: sigmoid MLP on digits with plain SGD, where normalization decides
# whether the net learns at all within a few hundred steps (no norm and WeightNorm stay
# near chance; BatchNorm, LayerNorm, ... reach ~95%). record_interval 5 keeps every run
# at ~200 steps/s on one core.
QUICK_START = RunConfig(dataset="digits", model="mlp", depth=3, width=100,
                        activation="sigmoid", optimizer="sgd", lr=0.1, batch_size=64,
                        steps=500, eval_interval=25, record_interval=5)
QUICK_SEEDS = (0,)
LOAD_POINTS = 2000  # points per series loaded for a chart (builders then draw <= 600)


def methods_table() -> pd.DataFrame:
    """One row per normalization method of the registry, in the framework's terms."""
    from normlab.methods.specs import NORMS

    rows = [{"method": s.title, "name": s.name, "μ (shift)": s.mu, "σ (scale)": s.sigma,
             "reduction axes": s.axes, "learnable": s.learnable, "train vs eval": s.train_eval,
             "applies to": ", ".join(s.models).upper(), "paper": s.paper}
            for s in NORMS.values()]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- form and launch
def configs_for(config: RunConfig, methods: Iterable[str], seeds: Iterable[int]
                ) -> list[RunConfig]:
    """The grid method × seed on ``config`` (methods vary slowest, as on the charts)."""
    return [config.replace(norm=m, seed=int(s)) for m in methods for s in seeds]


def form_errors(config: RunConfig, methods: Iterable[str], seeds: Iterable[int]
                ) -> dict[str, str]:
    """Field → message for everything that would stop a launch (empty: ready to run).

    Problems of the norm field are reported on ``methods``, naming each method concerned.
    """
    from normlab.runs.comparisons import check  # lazy: sizes datasets (imports torch)

    methods, seeds = list(methods), list(seeds)
    out: dict[str, str] = {}
    if not methods:
        out["methods"] = "pick at least one method"
    if not seeds:
        out["seeds"] = "give at least one seed, e.g. 0"
    by_method: dict[str, str] = {}
    for method in methods or [default_methods(config.model)[0]]:
        try:
            check([config.replace(norm=method, seed=int(s)) for s in seeds or [0]])
        except ConfigError as exc:
            for name, msg in exc.errors.items():
                if name == "norm":
                    by_method.setdefault(method, msg)
                else:
                    out.setdefault(name, msg)
    if by_method:
        out["methods"] = "; ".join(by_method.values())
    return out


def form_warnings(config: RunConfig, methods: Iterable[str]) -> dict[str, str]:
    """Field → message for settings that run but give misleading numbers
    (:func:`normlab.training.config.warnings`), for each method of the form."""
    from normlab.training.config import warnings

    out: dict[str, str] = {}
    for method in methods:
        for name, msg in warnings(config.replace(norm=method)).items():
            out.setdefault(name, msg)
    return out


def comparison_name(config: RunConfig, methods: Iterable[str], seeds: Iterable[int]) -> str:
    """A readable name: 'digits · MLP 3×100 sigmoid · sgd lr 0.1 · 9 methods × 1 seed'."""
    methods, seeds = list(methods), list(seeds)
    what = ", ".join(methods) if len(methods) <= 3 else f"{len(methods)} methods"
    return (f"{config.dataset} · {config.model.upper()} {config.depth}×{config.width} "
            f"{config.activation} · {config.optimizer} lr {config.lr:g} · {config.steps} steps"
            f" · {what} × {len(seeds)} seed{'s' * (len(seeds) != 1)}")


def launch(store: Store, config: RunConfig, methods: Iterable[str], seeds: Iterable[int],
           name: str | None = None, backend: str | None = None
           ) -> tuple[str | None, dict[str, str]]:
    """Submit method × seed on ``config``: (comparison id, {}) or (None, field errors).
    ``backend``: 'local' or 'ray' (see :func:`normlab.runs.comparisons.submit`)."""
    from normlab.runs.comparisons import submit

    methods, seeds = list(methods), [int(s) for s in seeds]
    errors = form_errors(config, methods, seeds)
    if errors:
        return None, errors
    try:
        cid, _ = submit(configs_for(config, methods, seeds), base=config,
                        name=name or comparison_name(config, methods, seeds),
                        grid={"norm": methods, "seed": seeds}, store=store, backend=backend)
    except ConfigError as exc:
        return None, dict(exc.errors)
    return cid, {}


# --------------------------------------------------------------------------- frames
def load_every(total_steps: int, record_interval: int = 1, points: int = LOAD_POINTS) -> int:
    """The ``every=`` that loads at most ~``points`` steps per series: a multiple of the
    record interval, so thinned steps are ones that were measured."""
    ri = max(1, int(record_interval))
    k = max(1, math.ceil(max(1, int(total_steps)) / points))
    return ri * math.ceil(k / ri) if k > 1 else 1


def comparison_frame(store: Store, run_ids: Iterable[str], metrics=None, sites=None,
                     layers=None, every: int | None = None,
                     pending: Iterable[tuple[str, str, str]] | None = None) -> pd.DataFrame:
    """Tidy metric rows of ``run_ids`` with ``method``, ``seed`` and ``label`` joined on.

    Only the asked ``metrics``/``sites``/``layers`` are read. ``every`` thins every site
    but ``val`` (validation points are sparse already). Unknown run ids raise NotFound.

    ``pending`` (a live view's charts): each run without rows of a series — a (layer, site,
    metric) of the frame, or of ``pending`` — gets one row of it with no value (step 0,
    value NaN): its charts name every run of the comparison from the start (its legend,
    panels and tooltips), draw nothing for it until it has values, and keep their spec
    while the runs start one by one (:mod:`normlab.views.livespecs`).
    """
    ids = list(dict.fromkeys(run_ids))
    runs = store.runs(ids=ids) if ids else store.runs().iloc[:0]
    sites = None if sites is None else ([sites] if isinstance(sites, str) else list(sites))
    thin = every if every and every > 1 else None
    if thin and (sites is None or "val" in sites):
        dense = store.metrics(ids, metrics=metrics, sites=["val"], layers=layers)
        rest = None if sites is None else [s for s in sites if s != "val"]
        parts = [dense]
        if rest is None or rest:
            other = store.metrics(ids, metrics=metrics, sites=rest, layers=layers, every=thin)
            parts.append(other[other["site"] != "val"] if rest is None else other)
        frame = pd.concat(parts, ignore_index=True)
        frame["run"] = pd.Categorical(frame["run"].astype(str), categories=ids)
    else:
        frame = store.metrics(ids, metrics=metrics, sites=sites, layers=layers, every=thin)
    if pending is not None:
        frame = _with_pending(frame, ids, pending)
    return _join_methods(frame, runs)


def _with_pending(frame: pd.DataFrame, ids: list[str],
                  series: Iterable[tuple[str, str, str]]) -> pd.DataFrame:
    """``frame`` plus a row without value (step 0) per run of ``ids`` and (layer, site,
    metric) of the frame or of ``series`` the run has no row of."""
    keys = ["run", "layer", "site", "metric"]
    present = {tuple(map(str, k)) for k in
               frame.groupby(keys, observed=True, sort=False).size().index} if len(frame) else set()
    wanted = {k[1:] for k in present} | set(series)
    if not wanted:
        return frame
    missing = [(run, *key) for key in sorted(wanted) for run in ids
               if (run, *key) not in present]
    if not missing:
        return frame
    rows = pd.DataFrame(missing, columns=["run", "layer", "site", "metric"]).assign(
        step=0, value=np.nan)
    out = pd.concat([frame.astype({c: str for c in ("run", "layer", "site", "metric")}),
                     rows[frame.columns]], ignore_index=True)
    for col in ("layer", "site", "metric"):
        out[col] = out[col].astype("category")
    out["run"] = pd.Categorical(out["run"], categories=ids)
    return out


def placeholder_frame(configs: Sequence[RunConfig], group: str) -> pd.DataFrame:
    """The frame a live view of runs ``configs`` (one comparison) has before any of them
    has a value: :func:`comparison_frame` with ``pending``, without a store. Its charts'
    specs are those of the comparison's first polls (:mod:`normlab.views.livespecs`), so a
    dashboard can build them before the runs are even launched."""
    ids = [f"pending-{i}" for i in range(len(configs))]
    runs = pd.DataFrame({"id": ids, "norm": [c.norm for c in configs],
                         "seed": [c.seed for c in configs], "name": [c.norm for c in configs],
                         "comparison_id": "pending", "config": [c.to_dict() for c in configs]})
    empty = pd.DataFrame({"run": pd.Categorical([], categories=ids), "step": np.array([], int),
                          "layer": [], "site": [], "metric": [], "value": np.array([], float)})
    return _join_methods(_with_pending(empty, ids, pending_series(group)), runs)


def pending_series(group: str) -> list[tuple[str, str, str]]:
    """The model-level series (layer, site, metric) the charts of ``group`` draw: a live
    view names every run in them before any has a value (:func:`comparison_frame`'s
    ``pending``; per-layer series are padded once a run has recorded its layers)."""
    return [("model", spec.site, spec.metric) for spec in CHART_GROUPS[group]
            if not spec.per_layer and spec.site in ("train", "val")]


def _join_methods(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """with_methods, computed once per run rather than once per row (same result)."""
    run = frame["run"].astype("category")
    present = [str(c) for c in run.cat.categories]
    info = with_methods(pd.DataFrame({"run": present}), runs).set_index("run")
    info = info.reindex(present)
    codes = run.cat.codes.to_numpy()
    keep = codes >= 0
    keep &= info["method"].notna().to_numpy()[codes.clip(0)]
    out = frame.loc[keep].reset_index(drop=True)
    codes = codes[keep]
    for col in ("method", "label"):  # categoricals: no string per row to build
        per_run, names = pd.factorize(info[col].astype(str).to_numpy())
        out[col] = pd.Categorical.from_codes(per_run[codes], categories=list(names))
    out["seed"] = info["seed"].to_numpy()[codes].astype("int64")
    return out


# --------------------------------------------------------------------------- charts
@dataclass(frozen=True)
class ChartSpec:
    key: str  # stable id (widget keys, cache keys)
    title: str
    metric: str  # metric name; "saturation" picks saturated or dead, whichever exists
    site: str  # a schema site; "site" means the site chosen in the view options
    per_layer: bool = False  # layer_chart (one panel per layer) instead of metric_chart
    loggable: bool = False  # follows the log-scale toggle


CHART_GROUPS: dict[str, tuple[ChartSpec, ...]] = {
    "Loss & accuracy": (
        ChartSpec("train_loss", "Training loss", "loss", "train", loggable=True),
        ChartSpec("val_loss", "Validation loss", "loss", "val", loggable=True),
        ChartSpec("train_acc", "Training accuracy (batch)", "acc", "train"),
        ChartSpec("val_acc", "Validation accuracy", "acc", "val"),
    ),
    "Gradients": (
        ChartSpec("grad_norm", "Global gradient norm", "grad_norm", "train", loggable=True),
        ChartSpec("layer_grad", "Gradient norm per layer", "grad_norm", "param",
                  per_layer=True, loggable=True),
        ChartSpec("update_ratio", "Effective learning rate ‖Δw‖/‖w‖ per layer", "update_ratio",
                  "param", per_layer=True, loggable=True),
        ChartSpec("weight_norm", "Weight norm ‖w‖ per layer", "weight_norm", "param",
                  per_layer=True, loggable=True),
    ),
    "Activations": (
        ChartSpec("act_mean", "Activation mean per layer", "mean", "site", per_layer=True),
        ChartSpec("act_var", "Activation variance per layer", "var", "site", per_layer=True,
                  loggable=True),
        ChartSpec("saturation", "Saturated (sigmoid/tanh) or dead (ReLU/GELU) units",
                  "saturation", "post_act", per_layer=True),
    ),
}


CHART_SPECS: dict[str, ChartSpec] = {s.key: s for g in CHART_GROUPS.values() for s in g}


def relevant_view(spec: ChartSpec, view: View, n_seeds: int, client: bool = False) -> View:
    """``view`` with the options ``spec``'s chart ignores set to defaults, so a cached
    chart is reused when only those change (``client``: the log scale too, which the
    browser applies: :func:`plan_chart`)."""
    return View(layout=view.layout, log=view.log and spec.loggable and not client,
                smooth=view.smooth,
                band=view.band if n_seeds > 1 else "none",
                site=view.site if spec.site == "site" and not browser_site(view, client)
                else "post_act",
                present=view.present)


def browser_site(view: View, client: bool) -> bool:
    """Whether the activation site is picked in the browser (:mod:`normlab.views.
    viewparams`): for the live charts, overlaid. Side by side, a per-layer chart has a
    panel per method and layer, and every site's rows would triple an already heavy tab
    (its hover rows most: one per step and panel), so the server draws the site shown."""
    return client and view.layout != "side"


def group_request(group: str, view: View, client: bool = False
                  ) -> tuple[list[str], list[str]]:
    """(metrics, sites) a chart group needs from the store (``client``: every activation
    site for the charts that follow the site option, which the browser then picks)."""
    metrics, sites = set(), set()
    for spec in CHART_GROUPS[group]:
        metrics.update(("saturated", "dead") if spec.metric == "saturation" else (spec.metric,))
        if spec.site == "site" and browser_site(view, client):
            sites.update(ACT_SITES)
        else:
            sites.add(view.site if spec.site == "site" else spec.site)
    return sorted(metrics), sorted(sites)


PANEL_MIN = 90  # narrowest small multiple, px
POINT_BUDGET = 3000  # points drawn per chart (spread over its series), keeps redraws fast
MIN_POINTS = 120  # ... but never fewer than this per series
BESIDE_PANELS = 80  # y axis (title, labels) beside a grid of panels, px
ROW_HEADERS = 140  # row headers (method names) left of a grid with rows, px
FACET_GAP = 20  # Vega-Lite's spacing between panels, px
PRESENTER_SCALE = 1.4  # presenter mode: panels and fonts this much larger


def plan_chart(frame: pd.DataFrame, spec: ChartSpec, view: View, n_seeds: int,
               client: bool = False):
    """(builder, its rows, metric, site, its keyword arguments, (columns, scale) for
    :func:`fit`) of the chart of ``spec``, or None without data: what :func:`build_chart`
    builds, and :mod:`normlab.views.livespecs` keys and fills without building.

    ``client``: the chart smooths and (when ``spec.loggable``) follows the log scale in
    the browser (:mod:`normlab.views.viewparams`); ``view.log`` is then not read."""
    from normlab.views.charts import METRIC_TITLES, metric_chart
    from normlab.views.layercharts import layer_chart

    site = view.site if spec.site == "site" else spec.site
    metric = spec.metric
    if metric == "saturation":
        found = frame.loc[frame["site"] == site, "metric"].astype(str).unique()
        metric = "saturated" if "saturated" in found else "dead"
    if spec.site == "site" and browser_site(view, client):  # viewparams.SITE picks it
        site = ANY_SITE
        rows = frame[(frame["metric"] == metric) & frame["site"].isin(ACT_SITES)]
    else:
        rows = frame[(frame["metric"] == metric) & (frame["site"] == site)]
    if rows.empty:
        return None
    n_labels, n_layers = rows["label"].nunique(), rows["layer"].nunique()
    if spec.per_layer:
        columns = n_layers if view.layout == "side" else min(n_layers, 3)
    else:
        columns = min(n_labels, 4) if view.layout == "side" else 1
    band = None if view.band == "none" or n_seeds < 2 else view.band
    builder = layer_chart if spec.per_layer else metric_chart
    # a chart that follows the site option does not name the site (the page says it): the
    #   same spec at every site, so a site change swaps its rows into the drawn chart
    #   rather than drawing it anew
    extra = {"y_title": f"{METRIC_TITLES.get(metric, metric)} (at the chosen site)"} if (
        spec.site == "site" and spec.per_layer) else {}
    # a point budget per chart: the browser draws every point (line + hover targets)
    per_series = POINT_BUDGET // max(1, n_labels * n_layers)
    title = spec.title
    if site == ANY_SITE:  # the site the browser shows, in words
        title = site_title(spec.title)
    kwargs = dict(title=title, layout=view.layout, **extra,
                  log=spec.loggable and (client or view.log), band=band,
                  smoothing=view.smooth, **({"client": True} if client else {}),
                  columns=None if spec.per_layer and view.layout == "side" else columns,
                  max_points=int(min(600, max(MIN_POINTS, per_series))))
    return builder, rows, metric, site, kwargs, (columns, PRESENTER_SCALE if view.present
                                                 else 1.0)


def build_chart(frame: pd.DataFrame, spec: ChartSpec, view: View, *, n_seeds: int = 1,
                width: int = 800, client: bool = False):
    """The chart of ``spec`` over ``frame`` with the view options, or None without data.

    Small multiples are sized so that their grid fits ``width`` pixels (the page's width
    is not known to Python: pass what the layout leaves); presenter mode enlarges panels
    and fonts. ``client``: as :func:`plan_chart` (the live view's charts).
    """
    plan = plan_chart(frame, spec, view, n_seeds, client)
    if plan is None:
        return None
    builder, rows, metric, site, kwargs, (columns, scale) = plan
    return fit(builder(rows, metric, site, **kwargs), columns, width, scale)


def stable_data(spec: dict, name: str) -> dict:
    """``spec`` (a chart's Vega-Lite dict) with its datasets renamed ``name``, ``name-1``, ...
    and every reference to them, in place; returned.

    Altair names a dataset by a hash of its rows, so a chart whose data changed (a live
    poll, another smoothing weight) is a new spec and the browser builds the whole chart
    again. Under a name that stays, the spec is the same and only its data is swapped in
    (Streamlit's ``st.vega_lite_chart`` updates a drawn chart's named datasets in place)."""
    old = list(spec.get("datasets") or {})
    if not old:
        return spec
    new = {o: name if i == 0 else f"{name}-{i}" for i, o in enumerate(old)}
    spec["datasets"] = {new[o]: spec["datasets"][o] for o in old}

    def rename(node) -> None:
        if isinstance(node, dict):
            ref = node.get("data")
            if isinstance(ref, dict) and ref.get("name") in new:
                node["data"] = {**ref, "name": new[ref["name"]]}
            for key, value in node.items():
                if key != "datasets":
                    rename(value)
        elif isinstance(node, list):
            for value in node:
                rename(value)

    rename(spec)
    return name_rows(spec, name)  # a live chart's axis reads its rows (viewparams)


def chart_rows(halves: list[bool]) -> list[list[int]]:
    """Rows of chart indices: charts that may take half the width (``halves[i]``) go in
    pairs of consecutive ones; the others, and a half chart left without a partner, alone."""
    return list(stream_rows(range(len(halves)), halves.__getitem__))


def stream_rows(items: Iterable, half: Callable[[object], bool]) -> Iterator[list]:
    """:func:`chart_rows` over ``items`` as they come: each row is yielded as soon as it is
    complete, so a live view draws its first charts while it builds the next ones."""
    pending = None  # a half-width item waiting for its partner
    for item in items:
        if half(item) and pending is not None:
            yield [pending, item]
            pending = None
        elif half(item):
            pending = item
        else:
            if pending is not None:
                yield [pending]
                pending = None
            yield [item]
    if pending is not None:
        yield [pending]


def fit(chart, columns: int, width: int, scale: float = 1.0):
    """``chart`` (a builder's output) with its panels scaled by ``scale`` but narrowed so
    that ``columns`` of them fit in ``width`` px; larger fonts when ``scale`` > 1."""
    inner = chart.spec if isinstance(chart, alt.FacetChart) else chart
    w, h = getattr(inner, "width", None), getattr(inner, "height", None)
    if isinstance(w, (int, float)) and isinstance(h, (int, float)):
        if isinstance(chart, alt.FacetChart):
            facet = chart.facet
            rows = isinstance(facet, alt.FacetMapping) and facet.row is not alt.Undefined
            beside = (BESIDE_PANELS + ROW_HEADERS * rows) * scale
            room = (width - beside) / max(1, columns) - FACET_GAP
            new_w = max(PANEL_MIN, min(w * scale, room))
            inner.width = int(new_w)
            inner.height = int(h * scale * max(0.7, min(1.0, new_w / (w * scale))))
        else:
            inner.height = int(h * scale)
    if scale <= 1.0:
        return chart
    f = lambda size: round(size * scale)  # noqa: E731
    return (chart.configure_axis(labelFontSize=f(12), titleFontSize=f(13), grid=True)
            .configure_legend(labelFontSize=f(12), titleFontSize=f(13),
                              symbolStrokeWidth=4, labelLimit=320)
            .configure_header(labelFontSize=f(13), titleFontSize=f(13))
            .configure_title(fontSize=f(16), anchor="start"))


def comparison_record(store: Store, cid: str) -> dict | None:
    """The stored comparison, or None if there is no such id."""
    try:
        return store.comparison(cid)
    except NotFound:
        return None
