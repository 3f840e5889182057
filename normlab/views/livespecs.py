"""Live charts' specs built once, then given new rows: what a live poll or a view toggle
rebuilds of a Compare chart.

Building a chart with Altair costs ~0.25–0.9 s of CPU (1–4 s for a tab of four while two
runs train beside the server); computing its rows costs ~0.1–0.3 s. A chart's spec depends
on its rows only through a few things — the methods, labels, layers and seeds it names
(legend, panels, tooltip columns) and its columns — so:

* :func:`chart_key` — what a spec depends on besides its rows, read from the frame;
* :func:`chart_data` — the rows a chart draws, without building it;
* :func:`data_shape` — what of those rows the spec names;
* :func:`with_rows` — a built spec with other rows, as Altair would have written them;
* :class:`KeptSpecs` — specs built once per key, reused while the rows' shape is the one
  they were built with (a method whose every value the log scale drops changes it).

``tests/test_views.py`` checks a reused spec with new rows equals a full build.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable

import altair as alt
import numpy as np
import pandas as pd

from normlab.views.compareview import ChartSpec, plan_chart
from normlab.views.urlstate import View

SHAPE_COLUMNS = ("method", "label", "layer", "seed")  # whose values a chart's spec names


def _names(values: pd.Series) -> tuple:
    """The distinct values of a column, sorted: a spec orders what it names itself (the
    legend's domain by method, panels and layers naturally), not by their rows' order."""
    return tuple(sorted(map(str, pd.unique(values.dropna()))))


def data_shape(rows: pd.DataFrame) -> tuple:
    """What of a chart's rows its spec names: the columns, and the methods, labels, layers
    and seeds (the legend's domain, the panels, the tooltip's columns)."""
    return (tuple(rows.columns),) + tuple(
        (c, _names(rows[c])) for c in SHAPE_COLUMNS if c in rows.columns)


def chart_key(frame: pd.DataFrame, spec: ChartSpec, view: View, *, n_seeds: int = 1,
              width: int = 800, client: bool = False) -> tuple | None:
    """What :func:`~normlab.views.compareview.build_chart`'s spec depends on besides its rows, read from ``frame``
    without building anything; None without data.

    The view options the chart uses except the smoothing and the site (they change only
    its rows), its size, and the methods, labels, layers and seeds of the runs it draws. A
    spec built once for a key serves the later polls, smoothing weights and sites of that
    key with :func:`with_rows` — when the rows' :func:`data_shape` is the one it was built
    with (a run whose every value a log scale drops is not drawn: then it is built again).
    Tested against full builds. ``client``: as :func:`~normlab.views.compareview.plan_chart`
    (then the log scale is not in the key either)."""
    plan = plan_chart(frame, spec, view, n_seeds, client)
    if plan is None:
        return None
    builder, rows, metric, site, kwargs, fitting = plan
    options = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v  # a title
               for k, v in kwargs.items() if k not in ("smoothing", "max_points")}
    fixed_site = None if spec.site == "site" else site
    shown = tuple((c, _names(rows[c])) for c in SHAPE_COLUMNS if c in rows.columns)
    return (spec.key, builder.__name__, metric, fixed_site, tuple(sorted(options.items())),
            fitting, width, shown)


def chart_data(frame: pd.DataFrame, spec: ChartSpec, view: View, *, n_seeds: int = 1,
               client: bool = False) -> pd.DataFrame | None:
    """The rows :func:`~normlab.views.compareview.build_chart`'s chart draws (its one dataset, before Altair writes
    it), without building the chart (a tab's poll: ~0.1–0.3 s, not ~0.4–0.9 s); None
    without data."""
    plan = plan_chart(frame, spec, view, n_seeds, client)
    if plan is None:
        return None
    builder, rows, metric, site, kwargs, _ = plan
    return builder(rows, metric, site, rows_only=True, **kwargs)


def with_rows(spec: dict, rows: pd.DataFrame) -> dict | None:
    """``spec`` (a chart's Vega-Lite dict with one dataset, e.g. from :func:`stable_data`)
    with that dataset's rows replaced by ``rows``, written as Altair writes a chart's data;
    a new dict (``spec`` untouched), or None when ``spec`` has not exactly one dataset."""
    sets = spec.get("datasets") or {}
    if len(sets) != 1:
        return None
    return {**spec, "datasets": {next(iter(sets)): values_of(rows)}}


def values_of(rows: pd.DataFrame) -> list[dict]:
    """``alt.utils.data.to_values(rows)["values"]``, the same list, in a few column-wise
    passes instead of Altair's per-column pandas copies (~4× faster on a first poll's
    chart rows): category, text, object and boolean columns as their objects (missing →
    None), integers as ``int``, floats as ``float`` (NaN and ±inf → None). Any other column
    (dates, nullable or array cells...) is left to Altair. Tested equal to Altair's."""
    names = list(rows.columns)
    if not all(isinstance(n, str) for n in names) or rows.columns.nlevels > 1:
        return alt.utils.data.to_values(rows)["values"]
    columns = []
    for name in names:
        col = rows[name]
        kind = col.dtype.kind
        if kind == "f" and isinstance(col.dtype, np.dtype):
            array = col.to_numpy()
            values = array.tolist()
            for i in np.flatnonzero(~np.isfinite(array)):
                values[i] = None
        elif kind in "iub" and isinstance(col.dtype, np.dtype):
            values = col.to_numpy().tolist()
        elif isinstance(col.dtype, pd.CategoricalDtype) or str(col.dtype) in _TEXT_DTYPES:
            values = col.astype(object).tolist()
            for i in np.flatnonzero(col.isna().to_numpy()):
                values[i] = None
            if any(isinstance(v, np.ndarray) for v in values):
                return alt.utils.data.to_values(rows)["values"]
        else:
            return alt.utils.data.to_values(rows)["values"]
        columns.append(values)
    return [dict(zip(names, row)) for row in zip(*columns)]


_TEXT_DTYPES = ("object", "str", "string")


class KeptSpecs:
    """Specs built once per :func:`chart_key`, each kept without its rows and with their
    :func:`data_shape`; shared by threads (a dashboard's sessions), the oldest of more than
    ``size`` dropped first."""

    def __init__(self, size: int = 64):
        self.size = size
        self._kept: dict[tuple, tuple[dict, tuple]] = {}
        self._lock = threading.Lock()

    def spec_for(self, frame: pd.DataFrame, spec: ChartSpec, view: View, *, n_seeds: int,
                 width: int, build: Callable[[], dict | None],
                 client: bool = False) -> dict | None:
        """The spec of ``spec``'s chart over ``frame``: a kept one with this frame's rows,
        or ``build()`` (the full build, e.g. Altair's dict named by ``stable_data``), kept
        when it has one dataset; None without data."""
        key = chart_key(frame, spec, view, n_seeds=n_seeds, width=width, client=client)
        if key is None:
            return None
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None:
            rows = chart_data(frame, spec, view, n_seeds=n_seeds, client=client)
            if rows is not None and data_shape(rows) == kept[1]:
                return with_rows(kept[0], rows)
        drawn = build()
        sets = list(((drawn or {}).get("datasets") or {}).values())
        if len(sets) == 1:  # kept with its shape (rows dropped: the next poll brings its own)
            shape = data_shape(pd.DataFrame(sets[0]))
            with self._lock:
                self._kept[key] = ({**drawn, "datasets": {k: [] for k in drawn["datasets"]}},
                                   shape)
                while len(self._kept) > self.size:
                    self._kept.pop(next(iter(self._kept)))
        return drawn

    def __len__(self) -> int:
        return len(self._kept)
