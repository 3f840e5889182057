"""Frame preparation for the charts: smoothing, display downsampling, seed aggregation.

Every function takes the tidy rows of :mod:`normlab.measure.schema` (run, step, layer, site, metric,
value) plus the columns the caller adds with :func:`with_methods`: ``method`` (norm name),
``seed`` (int) and ``label`` (a run's display name; runs of the same method from different
comparisons differ by label, otherwise label == method). All work is vectorized
pandas/numpy: no Python loop per row or per step.

* :func:`ema` / :func:`smooth` — TensorBoard's debiased exponential moving average
  (TensorBoard ``vz_line_chart2/line-chart.ts``, ``resmoothDataset``).
* :func:`downsample` — per series at most ``max_points`` rows for display, by *min/max
  buckets*: the step range is cut into equal buckets and each bucket keeps its minimum and
  maximum rows, plus the series' first and last rows. Kept rows are real measurements, and
  spikes survive, so the drawn line covers the same envelope as the full series (the
  "MinMax" preselection of MinMaxLTTB, Van Der Donckt et al. 2023).
* :func:`aggregate_seeds` — mean and a min/max or mean ± std band across seeds.
* Layer-dynamics helpers: :func:`percentile_frame` (p15/p50/p85 bands, the BatchNorm
  paper's Figure 1 view), :func:`hist_time_frame` (histogram over time) and
  :func:`hist_step_frame` (histogram at one step).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from normlab.measure.schema import HIST_BINS, HIST_METRICS, MEDIAN_CI, PERCENTILES, hist_edges

# Columns that identify one series (one run's one layer/site/metric), in grouping order.
SERIES_KEYS = ("run", "method", "label", "seed", "layer", "site", "metric")
# Columns that identify one seed-aggregated series point.
AGG_KEYS = ("method", "label", "layer", "site", "metric", "step")
PCT_METRICS = tuple(f"p{p}" for p in PERCENTILES)
_HIST_BIN = {m: i for i, m in enumerate(HIST_METRICS)}


def series_keys(df: pd.DataFrame) -> list[str]:
    """The :data:`SERIES_KEYS` columns ``df`` has."""
    return [c for c in SERIES_KEYS if c in df.columns]


def natural_key(name: str) -> list[tuple[int, int, str]]:
    """Sort key comparing embedded numbers as numbers (hidden2 < hidden10)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def natural_order(names: Iterable[str]) -> list[str]:
    """Distinct ``names`` in :func:`natural_key` order."""
    return sorted({str(n) for n in names}, key=natural_key)


def _group_ids(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """An int64 group id per row for the ``by`` columns (NaN is a value of its own)."""
    gid = np.zeros(len(df), dtype=np.int64)
    for col in by:
        codes, uniques = pd.factorize(df[col], use_na_sentinel=False)
        # re-factorized each time, so ids stay below len(df): no int64 overflow
        gid = pd.factorize(gid * (len(uniques) + 1) + codes)[0].astype(np.int64)
    return gid


# --------------------------------------------------------------------------- smoothing
def ema(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average of one series.

    ``last = last * w + (1 - w) * v``; the output is ``last / (1 - w**n)`` where ``n`` counts
    the finite values seen so far (the debiasing removes the pull toward the initial 0).
    Non-finite values (NaN, inf) are passed through unchanged and do not advance ``n``, as in
    TensorBoard. ``weight`` is in [0, 1); 0 returns the values unchanged.

    >>> ema([1.0, 3.0], 0.5)  # (0.5*1)/(1-0.5) = 1;  (0.25*1 + 0.5*3)/(1-0.25) = 7/3
    array([1.        , 2.33333333])
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight ({weight}) must be in [0, 1); 0 = no smoothing")
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    if weight == 0.0 or v.size == 0:
        return v.copy()
    # pandas' adjusted EWM is sum_i w^i x_{t-i} / sum_i w^i == TensorBoard's debiased form;
    # ignore_na=True counts only observed values, as TensorBoard's numAccum does.
    s = pd.Series(np.where(finite, v, np.nan)).ewm(alpha=1.0 - weight, adjust=True,
                                                    ignore_na=True).mean()
    return np.where(finite, s.to_numpy(), v)


def smooth(df: pd.DataFrame, weight: float, by: Sequence[str] | None = None,
           column: str = "value") -> pd.DataFrame:
    """``df`` with ``column`` replaced by :func:`ema` along ``step``, per series.

    ``by`` defaults to :func:`series_keys`. Rows keep their order; the index is reset.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight ({weight}) must be in [0, 1); 0 = no smoothing")
    out = df.reset_index(drop=True)
    if weight == 0.0 or out.empty:
        return out.copy()
    by = series_keys(out) if by is None else list(by)
    gid = _group_ids(out, by)
    order = np.lexsort((out["step"].to_numpy(), gid))  # by series, then step
    v = out[column].to_numpy(dtype=float)[order]
    finite = np.isfinite(v)
    s = pd.Series(np.where(finite, v, np.nan))
    sm = s.groupby(gid[order], sort=False).ewm(alpha=1.0 - weight, adjust=True,
                                               ignore_na=True).mean()
    sm = sm.reset_index(level=0, drop=True).sort_index().to_numpy()
    res = np.empty(len(out))
    res[order] = np.where(finite, sm, v)
    out = out.copy()
    out[column] = res
    return out


# ------------------------------------------------------------------------ downsampling
def downsample(df: pd.DataFrame, max_points: int = 600, by: Sequence[str] | None = None,
               *, value: str = "value") -> pd.DataFrame:
    """At most ``max_points`` rows per series, for display (min/max buckets, see module doc).

    Series with more rows are cut into ``(max_points - 2) // 2`` equal step ranges; each
    keeps the rows of its minimum and maximum ``value`` (whole rows, so band columns such as
    ``lo``/``hi`` travel along), and the series' first and last rows are always kept. Rows
    are returned sorted by series then step; the index is reset. ``by`` defaults to
    :func:`series_keys`.
    """
    if max_points < 4:
        raise ValueError(f"max_points ({max_points}) must be at least 4")
    out = df.reset_index(drop=True)
    if out.empty:
        return out
    by = series_keys(out) if by is None else list(by)
    gid = _group_ids(out, by)
    step = out["step"].to_numpy(dtype=float)
    order = np.lexsort((step, gid))  # by series, then step
    gid_s, step_s = gid[order], step[order]
    val_s = out[value].to_numpy(dtype=float)[order]
    n = len(order)

    counts = np.bincount(gid_s)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = starts + counts - 1
    if counts.max() <= max_points:
        return out.iloc[order].reset_index(drop=True)

    keep = np.zeros(n, dtype=bool)
    small = (counts <= max_points)[gid_s]
    keep[small] = True  # short series are kept whole
    keep[starts] = True  # first and last point of every series
    keep[ends] = True

    nb = max(1, (max_points - 2) // 2)
    smin, smax = step_s[starts][gid_s], step_s[ends][gid_s]
    span = np.where(smax > smin, smax - smin, 1.0)
    bucket = np.minimum(((step_s - smin) / span * nb).astype(np.int64), nb - 1)
    big = ~small & np.isfinite(val_s)
    idx = np.flatnonzero(big)  # contiguous (series, bucket) segments, in step order
    if idx.size:
        seg_key = gid_s[idx] * nb + bucket[idx]
        seg_start = np.flatnonzero(np.r_[True, seg_key[1:] != seg_key[:-1]])
        seg_of = np.cumsum(np.r_[True, seg_key[1:] != seg_key[:-1]]) - 1
        vals = val_s[idx]
        for reduce in (np.minimum, np.maximum):
            ext = reduce.reduceat(vals, seg_start)
            hit = np.flatnonzero(vals == ext[seg_of])
            first_hit = hit[np.r_[True, seg_of[hit][1:] != seg_of[hit][:-1]]]
            keep[idx[first_hit]] = True
    return out.iloc[order[keep]].reset_index(drop=True)


# ------------------------------------------------------------------------- aggregation
def aggregate_seeds(df: pd.DataFrame, band: str | None = "minmax",
                    by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean across seeds per (method, label, layer, site, metric, step), with a band.

    Returns the ``by`` columns (default: the :data:`AGG_KEYS` ``df`` has), ``value`` (the
    mean over seeds), ``n_seeds`` (non-NaN values averaged) and, unless ``band`` is None,
    ``lo``/``hi``: the min and max (``band='minmax'``) or mean ∓ the sample standard
    deviation, ddof=1 (``band='std'``; 0 when there is one seed). Sorted by keys then step.
    """
    if band not in (None, "minmax", "std"):
        raise ValueError(f"band ({band!r}) must be None, 'minmax' or 'std'")
    by = [c for c in AGG_KEYS if c in df.columns] if by is None else list(by)
    aggs = {"none": ["mean", "count"], "minmax": ["mean", "count", "min", "max"],
            "std": ["mean", "count", "std"]}[band or "none"]
    g = df.groupby(by, sort=False, dropna=False, observed=True)["value"].agg(aggs)
    out = g.reset_index().rename(columns={"mean": "value", "count": "n_seeds"})
    if band == "minmax":
        out = out.rename(columns={"min": "lo", "max": "hi"})
    elif band == "std":
        sd = out.pop("std").fillna(0.0)
        out["lo"], out["hi"] = out["value"] - sd, out["value"] + sd
    out["n_seeds"] = out["n_seeds"].astype(np.int64)
    return out.sort_values(by, kind="stable").reset_index(drop=True)


def run_methods(runs_df: pd.DataFrame) -> np.ndarray:
    """Each run's method label: its norm; for a run without one (logged from a user's own
    loop, or an odd import) its name, else ``run <id>`` — never missing."""
    norm = runs_df["norm"].astype(object).where(runs_df["norm"].notna(), None)
    name = runs_df["name"] if "name" in runs_df else pd.Series(None, index=runs_df.index)
    return np.array([str(n) if n is not None and n == n else
                     (str(m) if m is not None and m == m else f"run {i}")
                     for n, m, i in zip(norm, name.astype(object), runs_df["id"])], dtype=object)


def run_seeds(runs_df: pd.DataFrame) -> np.ndarray:
    """Each run's seed as int64; a run without one (an external run) counts as seed 0."""
    return pd.to_numeric(runs_df["seed"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)


def with_methods(metrics_df: pd.DataFrame, runs_df: pd.DataFrame, *, label: str = "auto",
                 comparison_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``metrics_df`` with ``method``, ``seed`` and ``label`` looked up from ``runs_df``.

    ``runs_df`` has columns id, norm, seed, name, comparison_id, config; metric rows whose
    ``run`` is not an ``id`` there are dropped. ``label``: ``'method'`` (label = method),
    ``'name'`` (the run's name), ``'comparison'`` ("batch · 3": method and comparison id) or
    ``'auto'``: the method, except for methods whose runs in ``metrics_df`` come from more
    than one comparison, which get the comparison form so their curves stay apart.
    ``comparison_names`` maps comparison ids to the names shown in those labels.
    """
    if label not in ("auto", "method", "name", "comparison"):
        raise ValueError(f"label ({label!r}) must be 'auto', 'method', 'name' or 'comparison'")
    ids = pd.Index(runs_df["id"].astype(str))
    if not ids.is_unique:
        raise ValueError("runs_df has duplicate ids")
    pos = ids.get_indexer(metrics_df["run"].astype(str))
    found = pos >= 0
    out = metrics_df.loc[found].reset_index(drop=True)
    pos = pos[found]
    runs = runs_df.reset_index(drop=True)
    method = run_methods(runs)
    cid = runs["comparison_id"].to_numpy()
    names = dict(comparison_names or {})
    comp = np.array([m if pd.isna(c) else f"{m} · {names.get(c, c)}"
                     for m, c in zip(method, cid)], dtype=object)
    if label == "method":
        lab = method.astype(object)
    elif label == "name":
        lab = runs["name"].astype(str).to_numpy(dtype=object)
    elif label == "comparison":
        lab = comp
    else:
        used = np.unique(pos)
        setting = setting_labels(runs["config"] if "config" in runs else [None] * len(runs),
                                 used)
        key = pd.Series([f"{a}\x00{b}\x00{c}" for a, b, c in zip(method, setting, cid)])
        n_key = key[used].groupby(method[used]).nunique()
        multi = np.isin(method, n_key.index[n_key > 1])
        n_set = pd.Series(setting[used]).groupby(method[used]).nunique()
        by_setting = np.isin(method, n_set.index[n_set > 1])
        lab = np.where(by_setting, [f"{m} · {t}" if t else m for m, t in zip(method, setting)],
                       np.where(multi, comp, method)).astype(object)
    out["method"] = method[pos]
    out["seed"] = run_seeds(runs)[pos]
    out["label"] = lab[pos]
    return out


SETTING_IGNORED = ("seed", "norm", "name")  # what a setting label never mentions


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_labels(configs: Sequence, among: Iterable[int] | None = None) -> np.ndarray:
    """Per run, the config fields that differ between the runs ``among`` (positions; default
    all) in words, e.g. 'lr 0.01' or 'lr 0.1 · width 64'; '' where nothing differs. Seed,
    norm and name never count (the seed is a band, the norm is the method)."""
    configs = [c if isinstance(c, dict) else {} for c in configs]
    idx = list(range(len(configs))) if among is None else [int(i) for i in among]
    keys = sorted({k for i in idx for k in configs[i]} - set(SETTING_IGNORED))
    differ = [k for k in keys
              if len({repr(configs[i].get(k)) for i in idx}) > 1]
    return np.array([" · ".join(f"{k} {_short(c.get(k))}" for k in differ) for c in configs],
                    dtype=object)


# ------------------------------------------------------------------ layer-dynamics frames
def _site_rows(df: pd.DataFrame, site: str, metrics: Iterable[str]) -> pd.DataFrame:
    return df[(df["site"] == site) & df["metric"].isin(list(metrics))]


def percentile_frame(df: pd.DataFrame, site: str) -> pd.DataFrame:
    """Wide p15/p50/p85 per (method, label, layer, step) at ``site``, averaged over seeds,
    with p50_lo/p50_hi, the median's 95% sampling interval (NaN for runs stored before it).

    Columns: method, label, layer, step, p15, p50, p85, p50_lo, p50_hi (a percentile
    missing at a step is NaN).
    """
    rows = _site_rows(df, site, PCT_METRICS + MEDIAN_CI)
    keys = [c for c in ("method", "label", "layer", "step") if c in rows.columns]
    mean = rows.groupby(keys + ["metric"], sort=False, observed=True)["value"].mean()
    wide = mean.unstack("metric").reindex(columns=list(PCT_METRICS + MEDIAN_CI))
    wide.columns.name = None
    return wide.reset_index().sort_values(keys, kind="stable").reset_index(drop=True)


def _hist_bins(metric: pd.Series) -> np.ndarray:
    """The bin index of each ``hist_XX`` metric name (mapped once per distinct name)."""
    codes, uniques = pd.factorize(metric)
    return np.array([_HIST_BIN[str(u)] for u in uniques], dtype=np.int64)[codes]


def unit_frame(df: pd.DataFrame, site: str) -> pd.DataFrame:
    """The per-unit percentiles (``u{i}_p{q}``) of ``site`` as a :func:`percentile_frame`
    whose ``layer`` is ``'hidden1 · unit 50'``: exact percentiles of one unit over the
    batch, seed-averaged. No median interval (there is no sampling)."""
    rows = df[(df["site"] == site) & df["metric"].astype(str).str.match(r"^u\d+_p\d+$")]
    if rows.empty:
        return pd.DataFrame(columns=["method", "label", "layer", "step", *PCT_METRICS])
    parts = rows["metric"].astype(str).str.extract(r"^u(\d+)_(p\d+)$")
    rows = rows.assign(layer=rows["layer"].astype(str) + " · unit " + parts[0],
                       metric=parts[1])
    return percentile_frame(rows, site)


def _hist_ranges(df: pd.DataFrame, site: str) -> pd.DataFrame:
    """Per (run, layer): the histogram range recorded with it (hist_lo, hist_hi), the
    first step's; empty for runs stored before ranges were fitted."""
    if "run" not in df.columns:
        return pd.DataFrame(columns=["run", "layer", "hist_lo", "hist_hi"])
    rows = _site_rows(df, site, ("hist_lo", "hist_hi"))
    first = rows.sort_values("step", kind="stable").drop_duplicates(["run", "layer", "metric"])
    wide = first.pivot_table(index=["run", "layer"], columns="metric", values="value",
                             observed=True).reset_index()
    wide.columns.name = None
    return wide.reindex(columns=["run", "layer", "hist_lo", "hist_hi"])


def _with_edges(frame: pd.DataFrame, site: str, activation: str | None,
                ranges: pd.DataFrame | None = None) -> pd.DataFrame:
    """``lo``/``hi`` of each row's bin: from its run's recorded range when there is one,
    else the fixed range older runs used (:func:`normlab.measure.schema.hist_edges`)."""
    edges = hist_edges(site, activation)
    b = frame["bin"].to_numpy()
    lo, hi = edges[b], edges[b + 1]
    if ranges is not None and len(ranges) and "run" in frame.columns:
        r = frame[["run", "layer"]].astype(str).merge(
            ranges.astype({"run": str, "layer": str}), on=["run", "layer"], how="left")
        known = r["hist_lo"].notna().to_numpy()
        width = (r["hist_hi"].to_numpy() - r["hist_lo"].to_numpy()) / HIST_BINS
        lo = np.where(known, r["hist_lo"].to_numpy() + b * width, lo)
        hi = np.where(known, r["hist_lo"].to_numpy() + (b + 1) * width, hi)
    frame["lo"], frame["hi"] = lo, hi
    return frame


def _one_range_per_series(rows: pd.DataFrame, ranges: pd.DataFrame, keys: list[str]
                          ) -> pd.DataFrame:
    """Only the runs whose histogram range equals that of the first run of their series
    (method, label, layer): seeds' histograms are averaged bin by bin, which needs the
    same bins. Runs with a fitted range differing from the first's are left out."""
    if ranges.empty or "run" not in rows.columns or not keys:
        return rows
    runs = rows[keys + ["run"]].drop_duplicates().astype({"run": str, "layer": str})
    runs = runs.merge(ranges.astype({"run": str, "layer": str}), on=["run", "layer"],
                      how="left").sort_values("run", kind="stable")
    first = runs.groupby(keys, sort=False, observed=True)[["hist_lo", "hist_hi"]].transform("first")
    same = ((runs["hist_lo"] == first["hist_lo"]) & (runs["hist_hi"] == first["hist_hi"])
            ) | (runs["hist_lo"].isna() & first["hist_lo"].isna())
    keep = set(zip(runs.loc[same, "run"], runs.loc[same, "layer"]))
    mask = [(str(r), str(l)) in keep for r, l in zip(rows["run"], rows["layer"])]
    return rows[np.asarray(mask, dtype=bool)]


def overflow_frame(df: pd.DataFrame, site: str) -> pd.DataFrame:
    """Per (method, label, layer): the largest share of values below (``under``) and above
    (``over``) the histogram's range at any step, seed-averaged; empty for older runs."""
    rows = _site_rows(df, site, ("hist_under", "hist_over"))
    keys = [c for c in ("method", "label", "layer") if c in rows.columns]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["under", "over"])
    mean = rows.groupby(keys + ["step", "metric"], sort=False, observed=True)["value"].mean()
    worst = mean.groupby(keys + ["metric"], sort=False, observed=True).max().unstack("metric")
    worst = worst.rename(columns={"hist_under": "under", "hist_over": "over"})
    worst.columns.name = None
    return worst.reindex(columns=["under", "over"]).reset_index()


def hist_time_frame(df: pd.DataFrame, site: str, *, activation: str | None = None,
                    max_steps: int = 80) -> pd.DataFrame:
    """The histogram of ``site`` over time, one rect per (step interval, bin), seed-averaged.

    Columns: method, label, layer, step, step_end (the interval [step, step_end) the column
    covers), bin, lo, hi (the bin's value edges, :func:`normlab.measure.schema.hist_edges`),
    fraction. With more than ``max_steps`` distinct steps, steps are grouped into
    ``max_steps`` equal intervals and fractions averaged within each (per series).
    """
    rows = _site_rows(df, site, HIST_METRICS)
    keys = [c for c in ("method", "label", "layer") if c in rows.columns]
    cols = keys + ["step", "bin", "step_end", "lo", "hi", "fraction"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    ranges = _hist_ranges(df, site)
    rows = _one_range_per_series(rows, ranges, keys)
    rows = rows.assign(bin=_hist_bins(rows["metric"]))
    # One id per measured histogram (run or seed, original step), to average by.
    who = [c for c in ("run", "seed") if c in rows.columns][:1]
    rows = rows.assign(_hid=_group_ids(rows, who + ["step"]))
    steps = np.unique(rows["step"].to_numpy())
    if len(steps) <= max_steps:
        gap = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
        nxt = pd.Series(np.r_[steps[1:], steps[-1] + gap], index=steps)
        rows = rows.assign(step_end=rows["step"].map(nxt))
    else:
        width = int(np.ceil((steps[-1] - steps[0] + 1) / max_steps))
        start = steps[0] + (rows["step"] - steps[0]) // width * width
        rows = rows.assign(step=start, step_end=start + width)
    # Mean over seeds and steps in an interval: sum / number of histograms measured there.
    gkeys = keys + ["step", "step_end"]
    n_hist = rows.groupby(gkeys, sort=False, observed=True)["_hid"].transform("nunique")
    rows = rows.assign(fraction=rows["value"] / n_hist)
    first_run = rows.groupby(keys, sort=False, observed=True)["run"].transform("first") \
        if "run" in rows.columns else None
    if first_run is not None:  # the series' bins are its first run's (all the same, above)
        rows = rows.assign(run=first_run)
        gkeys = gkeys + ["run"]
    out = rows.groupby(gkeys + ["bin"], sort=False, observed=True)["fraction"].sum().reset_index()
    out = _with_edges(out, site, activation, ranges)
    return out[cols].sort_values(keys + ["step", "bin"], kind="stable").reset_index(drop=True)


def hist_step_frame(df: pd.DataFrame, site: str, step: int, *,
                    activation: str | None = None) -> pd.DataFrame:
    """The histogram of ``site`` at the measured step nearest ``step``, seed-averaged.

    Per (method, label, layer) the nearest available step is used (ties: the earlier one).
    Columns: method, label, layer, step, bin, lo, hi, fraction.
    """
    rows = _site_rows(df, site, HIST_METRICS)
    keys = [c for c in ("method", "label", "layer") if c in rows.columns]
    cols = keys + ["step", "bin", "lo", "hi", "fraction"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    ranges = _hist_ranges(df, site)
    rows = _one_range_per_series(rows, ranges, keys)
    avail = rows[keys + ["step"]].drop_duplicates()
    avail = avail.assign(_d=(avail["step"] - step).abs()).sort_values(["_d", "step"])
    chosen = avail.drop_duplicates(keys)[keys + ["step"]]
    rows = rows.merge(chosen, on=keys + ["step"], how="inner")
    rows = rows.assign(bin=_hist_bins(rows["metric"]))
    extra = []
    if "run" in rows.columns:  # the series' bins are its first run's (all the same, above)
        rows = rows.assign(run=rows.groupby(keys, sort=False, observed=True)["run"]
                           .transform("first"))
        extra = ["run"]
    out = (rows.groupby(keys + extra + ["step", "bin"], sort=False, observed=True)["value"]
           .mean().rename("fraction").reset_index())
    out = _with_edges(out, site, activation, ranges)
    return out[cols].sort_values(keys + ["bin"], kind="stable").reset_index(drop=True)
