"""The sweep view: a final metric against a swept numeric config field, one line per method.

Any comparison whose runs differ in a numeric :class:`~normlab.training.config.RunConfig`
field (lr, init_scale, batch_size, weight_decay, ...) is a *sweep*. Reading it back:

* :func:`swept_fields` — the numeric fields that vary across the runs (seed excluded), the
  comparison's own grid keys first;
* :func:`final_values` — one number per run from its tidy metric rows: ``last`` (value at
  the last recorded step), ``best`` (max for accuracies, min otherwise) or ``mean_last``
  (mean of the last ``k`` evaluations);
* :func:`sweep_frame` — one row per run: series (method, plus any other field that varies
  independently of the swept one), x, seed, value, status, ``diverged``;
* :func:`aggregate` — per series and x: mean, std, min, max over the finite seeds, and how
  many runs diverged or have not finished;
* :func:`sweep_chart` — the Altair chart: seed band, mean line, one dot per run, and a
  cross at the axis edge for every diverged run (drawn, never dropped); log x axis when
  the field is log-spaced (:func:`log_spaced`);
* :func:`sweep_table` — the text table ``normlab show`` prints.

A diverged run's metrics stop before its end; its value never enters a mean, and a point
where every seed diverged has no line (the line breaks there) but shows its crosses.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import altair as alt
import numpy as np
import pandas as pd

from normlab.training.config import FIELD_TYPES
from normlab.views.palette import color_scale, method_order

HOWS = ("last", "best", "mean_last")  # what "final" means
HOW_TITLES = {"last": "last", "best": "best", "mean_last": "mean of the last k"}
HIGHER_IS_BETTER = ("acc",)  # metrics whose "best" is the maximum
PENDING = ("queued", "running", "paused")
WIDTH, HEIGHT = 560, 320


def swept_fields(configs: Sequence[dict], grid: dict | None = None) -> list[str]:
    """Numeric config fields (int/float, not ``seed``) that take more than one value across
    ``configs``; the keys of ``grid`` first (in order), then by number of values."""
    found = {}
    for name, kind in FIELD_TYPES.items():
        if kind not in ("int", "float") or name == "seed":
            continue
        values = {c.get(name) for c in configs if c.get(name) is not None}
        if len(values) > 1:
            found[name] = len(values)
    first = [k for k in (grid or {}) if k in found]
    rest = sorted((k for k in found if k not in first), key=lambda k: (-found[k], k))
    return first + rest


def log_spaced(values: Iterable[float]) -> bool:
    """Whether distinct positive ``values`` are closer to evenly spaced on a log axis than on
    a linear one (or span at least two decades): then the sweep's x axis is logarithmic."""
    v = np.unique(np.asarray([float(x) for x in values], dtype=float))
    if len(v) < 2 or v[0] <= 0:
        return False
    if v[-1] / v[0] >= 100:
        return True
    if len(v) < 3:
        return False
    lin, log = np.diff(v), np.diff(np.log(v))
    return float(np.std(log) / np.mean(log)) < float(np.std(lin) / np.mean(lin))


def final_values(rows: pd.DataFrame, how: str = "last", k: int = 3,
                 metric: str | None = None) -> pd.Series:
    """Run → final value of one series (``rows``: tidy rows of one site and metric).

    ``last``: the value at the run's highest step; ``best``: the max (accuracies, see
    :data:`HIGHER_IS_BETTER`) or min over its steps; ``mean_last``: the mean of its last
    ``k`` recorded values. Non-finite values are ignored by ``best`` and ``mean_last``.
    """
    if how not in HOWS:
        raise ValueError(f"unknown final {how!r}; choose one of {', '.join(HOWS)}")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    if rows.empty:
        return pd.Series(dtype=float)
    metric = metric or str(rows["metric"].iloc[0])
    df = pd.DataFrame({"run": rows["run"].astype(str).to_numpy(),
                       "step": rows["step"].to_numpy(),
                       "value": rows["value"].to_numpy(dtype=float)})
    df = df.sort_values(["run", "step"], kind="stable")
    if how == "last":
        return df.drop_duplicates("run", keep="last").set_index("run")["value"]
    finite = df[np.isfinite(df["value"])].groupby("run", sort=False)["value"]
    if how == "best":
        return finite.max() if metric in HIGHER_IS_BETTER else finite.min()
    return finite.apply(lambda s: s.iloc[-k:].mean())


def _series_fields(configs: pd.DataFrame, field: str) -> list[str]:
    """Other varied fields that are not a function of ``field`` (they split the lines)."""
    numeric = [n for n, kind in FIELD_TYPES.items() if kind in ("int", "float")
               and n not in ("seed", field) and n in configs.columns]
    varied = [n for n in numeric if configs[n].nunique() > 1]
    if not varied:
        return []
    per_x = configs.groupby(field)[varied].nunique().max()
    return [n for n in varied if per_x[n] > 1]


def sweep_frame(runs: pd.DataFrame, finals: pd.Series, field: str) -> pd.DataFrame:
    """One row per run: run, method, series, x, seed, value, status, diverged, pending.

    ``runs``: ``Store.runs(...)`` rows (``config`` a dict); ``finals``: run → value
    (:func:`final_values`). ``series`` is the method, followed by ``name=value`` of any
    other numeric field that varies independently of ``field``. A diverged run's value is
    NaN (it did not finish); runs still queued or training are ``pending``, also NaN
    (their last value is not final).
    """
    dicts = list(runs["config"])
    wanted = ["norm", "seed"] + [n for n, kind in FIELD_TYPES.items() if kind in ("int", "float")]
    configs = pd.DataFrame({n: [c.get(n) for c in dicts] for n in dict.fromkeys(wanted)
                            if any(n in c for c in dicts[:1])})
    if field not in configs.columns:
        raise ValueError(f"{field!r} is not a config field of these runs")
    extra = _series_fields(configs, field)
    series = configs["norm"].astype(str)
    for name in extra:
        series = series + " · " + name + "=" + configs[name].map(lambda v: f"{v:g}")
    status = runs["status"].astype(str).to_numpy()
    value = runs["id"].map(finals).to_numpy(dtype=float)
    diverged = (status == "diverged") | ((status == "done") & ~np.isfinite(value)
                                         & runs["id"].isin(finals.index).to_numpy())
    pending = np.isin(status, PENDING)
    value = np.where(diverged | pending, np.nan, value)  # unfinished: no final value yet
    return pd.DataFrame({
        "run": runs["id"].to_numpy(), "method": configs["norm"].astype(str).to_numpy(),
        "series": series.to_numpy(), "x": configs[field].astype(float).to_numpy(),
        "seed": configs["seed"].to_numpy(), "value": value, "status": status,
        "diverged": diverged, "pending": pending,
        "error": runs["error"].fillna("").astype(str).to_numpy() if "error" in runs else "",
    })


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, series, x): mean, std (ddof 0), min, max of the finite values, ``n``
    (finite runs), ``n_diverged`` and ``n_pending``; sorted by method order, series, x."""
    df = frame.assign(finite=np.isfinite(frame["value"]))
    keys = ["method", "series", "x"]
    good = df[df["finite"]]
    groups = good.groupby(keys, sort=False)["value"]
    stats = pd.DataFrame({"mean": groups.mean(), "std": groups.std(ddof=0),
                          "min": groups.min(), "max": groups.max(), "n": groups.size()})
    counts = df.groupby(keys, sort=False).agg(n_diverged=("diverged", "sum"),
                                              n_pending=("pending", "sum"))
    out = counts.join(stats, how="left").reset_index()
    out["n"] = out["n"].fillna(0).astype(int)
    out["n_diverged"] = out["n_diverged"].astype(int)
    out["n_pending"] = out["n_pending"].astype(int)
    rank = {m: i for i, m in enumerate(method_order(out["method"].unique()))}
    out = out.assign(_r=out["method"].map(rank)).sort_values(["_r", "series", "x"])
    return out.drop(columns="_r").reset_index(drop=True)[
        ["method", "series", "x", "mean", "std", "min", "max", "n", "n_diverged", "n_pending"]]


def metric_title(metric: str, site: str, how: str, k: int = 3) -> str:
    """'validation acc (last)' style axis title."""
    what = {"val": "validation", "train": "training"}.get(site, site.replace("_", " "))
    final = f"mean of last {k}" if how == "mean_last" else how
    return f"{what} {metric} ({final})"


def sweep_chart(frame: pd.DataFrame, field: str, *, y_title: str = "value",
                band: str | None = "minmax", log_x: bool | None = None,
                log_y: bool = False, title: str | None = None) -> alt.LayerChart:
    """Final metric against ``field`` (``frame``: :func:`sweep_frame`), one line per series.

    Layers: the seed band (``minmax`` or ``std``, drawn with two or more finite seeds), the
    mean line (breaks where no seed finished), a dot per finished run, and a cross per
    diverged run at the bottom of the axis (top for a log-scaled loss) with the reason in
    its tooltip. ``log_x=None`` chooses by :func:`log_spaced`.
    """
    if frame.empty:
        raise ValueError("no runs to draw: the sweep frame is empty")
    log_x = log_spaced(frame["x"]) if log_x is None else log_x
    agg = aggregate(frame)
    if band == "std":
        agg["lo"], agg["hi"] = agg["mean"] - agg["std"], agg["mean"] + agg["std"]
    else:
        agg["lo"], agg["hi"] = agg["min"], agg["max"]
    finite = frame["value"][np.isfinite(frame["value"])]
    if log_y:
        agg = agg.assign(lo=agg["lo"].where(agg["lo"] > 0))
        finite = finite[finite > 0]
    edge = (float(finite.max()) * 1.5 if len(finite) else 1.0) if log_y else \
        (min(0.0, float(finite.min())) if len(finite) else 0.0)
    dots = frame[np.isfinite(frame["value"])].copy()
    if log_y:
        dots = dots[dots["value"] > 0]
    crosses = frame[frame["diverged"]].assign(value=edge)
    methods = method_order(frame["method"].unique())
    color = alt.Color("method:N", scale=color_scale(methods), title="method")
    xs = alt.X("x:Q", title=field, scale=alt.Scale(type="log" if log_x else "linear",
                                                    zero=False, nice=False))
    ys = alt.Scale(type="log" if log_y else "linear", zero=False)
    many_series = frame["series"].nunique() > frame["method"].nunique()
    detail = alt.Detail("series:N")
    base = alt.Chart(agg).encode(x=xs, color=color, detail=detail)
    layers = []
    if band is not None and (agg["n"] >= 2).any():
        # the seed band: min–max (or ±1 std) of the finished seeds at each x
        layers.append(base.transform_filter(alt.datum.n >= 2).mark_area(opacity=0.18).encode(
            y=alt.Y("lo:Q", scale=ys, title=y_title), y2="hi:Q"))
    # the mean over finished seeds; NaN where every seed diverged, so the line breaks
    line = base.mark_line(point=False, strokeWidth=2.2).encode(
        y=alt.Y("mean:Q", scale=ys, title=y_title),
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("x:Q", title=field),
                 alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("std:Q", format=".2g"),
                 alt.Tooltip("n:Q", title="finished seeds"),
                 alt.Tooltip("n_diverged:Q", title="diverged")])
    if many_series:
        line = line.encode(strokeDash=alt.StrokeDash("series:N", title="series"))
    layers.append(line)
    # every finished run, so single seeds and outliers stay visible
    layers.append(alt.Chart(dots).mark_circle(size=28, opacity=0.55).encode(
        x=xs, y=alt.Y("value:Q", scale=ys, title=y_title), color=color,
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("x:Q", title=field),
                 alt.Tooltip("seed:Q"), alt.Tooltip("value:Q", format=".4g"),
                 alt.Tooltip("run:N")]))
    if len(crosses):
        # diverged runs: a cross at the axis edge, the reason in the tooltip
        layers.append(alt.Chart(crosses).mark_point(shape="cross", size=110, filled=True,
                                                     opacity=0.9).encode(
            x=xs, y=alt.Y("value:Q", scale=ys, title=y_title), color=color,
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("x:Q", title=field),
                     alt.Tooltip("seed:Q"), alt.Tooltip("status:N"),
                     alt.Tooltip("error:N", title="why")]))
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)
    return chart.properties(title=title) if title else chart


def sweep_table(frame: pd.DataFrame, field: str, digits: int = 3) -> pd.DataFrame:
    """The sweep as text cells: one row per x, one column per series, 'mean ± std' of the
    finished seeds, '÷N' for N diverged runs and '…' for runs not finished yet."""
    agg = aggregate(frame)
    cells = []
    for r in agg.itertuples():
        text = "" if r.n == 0 else (f"{r.mean:.{digits}f}" + (f" ± {r.std:.{digits}f}"
                                                              if r.n > 1 else ""))
        if r.n_diverged:
            text += f" ÷{r.n_diverged}"
        if r.n_pending:
            text += " …"
        cells.append(text.strip() or "—")
    table = agg.assign(cell=cells).pivot(index="x", columns="series", values="cell")
    order = list(dict.fromkeys(agg["series"]))
    table = table[order].fillna("")
    table.index = [f"{x:g}" for x in table.index]
    table.index.name = field
    table.columns.name = None
    return table
