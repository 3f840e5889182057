"""The metric explorer: every recorded series of some runs, and the chart of any of them.

The Compare page's fixed tabs draw a chosen few metrics; the store holds more (per-layer
``weight_norm`` and ``update_ratio``, per-unit percentiles, the mean and variance at every
site, see :mod:`normlab.measure.schema`). :func:`series_catalog` lists the series the runs
recorded (histogram bins excepted: the Layer dynamics page draws those), :func:`parse_series`
reads a catalog name back, and :func:`explore_chart` draws one series across the runs with
the Compare page's view options (one builder of :mod:`normlab.views.charts`; log scale only
for positive series).
"""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from normlab.measure.schema import HIST_EXTRA, HIST_METRICS
from normlab.runs.store import Store
from normlab.views.urlstate import View

SEP = " · "  # "metric · site · layer"
HIDDEN = frozenset(HIST_METRICS) | frozenset(HIST_EXTRA)


def series_name(metric: str, site: str, layer: str) -> str:
    return SEP.join((metric, site, layer))


def parse_series(name: str) -> tuple[str, str, str]:
    """(metric, site, layer) of a :func:`series_name`; ValueError naming the value if not one."""
    parts = str(name).split(SEP)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"series {name!r} must read 'metric{SEP}site{SEP}layer', "
                         f"e.g. 'grad_norm{SEP}param{SEP}hidden1'")
    return parts[0], parts[1], parts[2]


def series_catalog(store: Store, run_ids: Iterable[str], configs: Iterable[dict] = ()
                   ) -> list[str]:
    """The series (:func:`series_name`) recorded for ``run_ids``, read from their first
    recorded steps only (cheap), sorted by metric, site and layer (natural order)."""
    from normlab.views.frames import natural_key

    ids = list(run_ids)
    if not ids:
        return []
    reach = max([int(c.get(k) or 1) for c in configs if isinstance(c, dict)
                 for k in ("record_interval", "eval_interval")] or [1])
    rows = store.metrics(ids, steps=(0, reach))
    keys = rows[["metric", "site", "layer"]].astype(str).drop_duplicates()
    keys = keys[~keys["metric"].isin(HIDDEN)]
    names = [series_name(*k) for k in keys.itertuples(index=False)]
    return sorted(names, key=natural_key)


def explore_chart(frame: pd.DataFrame, name: str, view: View, *, n_seeds: int = 1):
    """One series of ``frame`` (comparison_frame rows) over steps, or None without data."""
    from normlab.views.charts import metric_chart

    metric, site, layer = parse_series(name)
    rows = frame[(frame["metric"].astype(str) == metric) & (frame["site"].astype(str) == site)
                 & (frame["layer"].astype(str) == layer)]
    if rows.empty:
        return None
    log = view.log and bool((rows["value"] > 0).all())
    band = None if view.band == "none" or n_seeds < 2 else view.band
    layout = view.layout
    n = rows["label"].nunique()
    return metric_chart(rows, metric, site, layout=layout, log=log, band=band,
                        smoothing=view.smooth, title=f"{name}" + (" (log)" if log else ""),
                        columns=min(n, 3) if layout == "side" else None)
