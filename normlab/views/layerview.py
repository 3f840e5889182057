"""What the Layer dynamics view shows, without Streamlit: which runs, which metrics, which
histogram range.

* :func:`resolve_selection` — the runs named by a ``?comparison=`` / ``?runs=`` query (the
  Compare, Runs and Layer pages link to each other with it), with one readable message per
  unknown or malformed id; :func:`url_params` writes a selection back as such a query.
* :func:`load_site` — the tidy rows of one activation site for the chosen runs, only the
  metrics asked for (p15/p50/p85 or hist_00..hist_31, see :mod:`normlab.measure.schema`), with
  ``method``/``seed``/``label`` from :func:`normlab.views.frames.with_methods`.
* :func:`hist_activation` — histogram bins at ``post_act`` depend on the activation
  (:func:`normlab.measure.schema.hist_edges`): runs with another activation than the first
  cannot share the histogram axis, so they are set aside with a message.
* :func:`thin_every` and :func:`default_layers` keep big runs and deep models readable;
  :func:`bulk_range` + :func:`zoom` cut a histogram's value axis to where the values are
  (the fixed bins of :func:`normlab.measure.schema.hist_edges` span e.g. ±8 before the norm, where
  activations often stay within ±2).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import altair as alt
import numpy as np
import pandas as pd

from normlab.views.frames import (PCT_METRICS, _hist_bins, _hist_ranges, _with_edges,
                                  natural_order, with_methods)
from normlab.measure.schema import (ACT_SITES, HIST_EXTRA, HIST_METRICS, MEDIAN_CI,
                                    UNIT_PERCENTILES, hist_edges, unit_metric, unit_picks)
from normlab.runs.store import NotFound, Store, empty_metrics

SITE_HELP = ("pre_norm: the input of the normalization; post_norm: its output, which is "
             "the activation's input when the norm comes before it (the default, and the "
             "site of the BatchNorm paper's Figure 1: the sigmoid's input); post_act: after "
             "the activation function.")
SITE_LABELS = {"pre_norm": "pre_norm (norm input)",
               "post_norm": "post_norm (activation input)",
               "post_act": "post_act (activation output)"}
KINDS = {"percentiles": PCT_METRICS + MEDIAN_CI, "histogram": HIST_METRICS + HIST_EXTRA,
         "units": ()}  # units: see unit_metrics
MAX_HIST_STEPS = 80  # histogram steps per run for the heatmap: one column each
UNFINISHED = ("queued", "running", "paused")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Selection:
    comparison: str | None = None  # the comparison the runs belong to, if exactly one
    runs: list[str] = field(default_factory=list)  # run ids, in display order
    errors: list[str] = field(default_factory=list)  # one message per problem


def parse_ids(text: str | None) -> list[str]:
    """Ids from a comma-separated query value: stripped, empty ones dropped, distinct."""
    return list(dict.fromkeys(t.strip() for t in str(text or "").split(",") if t.strip()))


def resolve_selection(store: Store, comparison: str | None = None,
                      runs: str | Iterable[str] | None = None) -> Selection:
    """The runs named by ``?comparison=`` and/or ``?runs=`` (both: their intersection).

    Unknown ids are dropped with a message naming them; with runs only, ``comparison`` is
    set when they all belong to one comparison.
    """
    sel = Selection()
    wanted = parse_ids(runs) if isinstance(runs, str) or runs is None else list(runs)
    cid = (comparison or "").strip() or None
    if cid is not None:
        try:
            members = store.comparison(cid)["runs"] if _ID.match(cid) else None
        except NotFound:
            members = None
        if members is None:
            sel.errors.append(f"No comparison with id “{cid}” in this store (from the page "
                              "address, ?comparison=…): it may have been deleted or belong to "
                              "another store. Pick a comparison below, or find it on the Runs "
                              "page.")
        elif not members:
            sel.errors.append(f"Comparison {cid} has no runs left; pick another one below.")
        else:
            sel.comparison = cid
            if not wanted:
                sel.runs = list(members)
    if wanted:
        every_run = store.runs()
        found = dict(zip(every_run["id"], every_run["comparison_id"]))
        missing = [r for r in wanted if r not in found]
        if missing:
            sel.errors.append(f"No run with id {', '.join('“%s”' % m for m in missing)} in "
                              "this store (from the page address, ?runs=…): it may have been "
                              "deleted. The other runs are shown; pick more below or on the "
                              "Runs page.")
        ok = [r for r in wanted if r in found]
        if sel.comparison is not None:
            outside = [r for r in ok if found[r] != sel.comparison]
            if outside:
                sel.errors.append(f"Run(s) {', '.join(outside)} are not in comparison "
                                  f"{sel.comparison}; they are left out.")
            ok = [r for r in ok if found[r] == sel.comparison] or list(members)
        elif ok and len({found[r] for r in ok}) == 1:
            sel.comparison = found[ok[0]]
        sel.runs = ok
    return sel


def url_params(comparison: str | None, runs: list[str],
               members: list[str] | None = None) -> dict[str, str]:
    """The query naming a selection: ``comparison`` alone when ``runs`` are all of its
    ``members``, ``comparison`` + ``runs`` for part of one, ``runs`` otherwise."""
    if comparison and members is not None and list(runs) == list(members):
        return {"comparison": comparison}
    out = {"comparison": comparison} if comparison else {}
    if runs:
        out["runs"] = ",".join(runs)
    return out


def run_label(run: pd.Series | dict, comparison_name: str | None = None) -> str:
    """``'batch · seed 0 · <comparison> (r1a2b3c4)'``; the run's own name first if it has one."""
    name = run.get("name")
    head = f"“{name}” · " if isinstance(name, str) and name else ""
    comp = f" · {comparison_name}" if comparison_name else ""
    return f"{head}{run['norm']} · seed {run['seed']}{comp} ({run['id']})"


def default_site(runs: pd.DataFrame) -> tuple[str, str]:
    """(site, note): the activation's input — ``post_norm`` when every run puts the norm
    before the activation (the sigmoid input of Ioffe & Szegedy's Figure 1). Runs with
    the norm after the activation record no activation input: then ``pre_norm`` (the
    norm's input, i.e. the activation's output) and a note saying so."""
    after = [c.get("norm_position") == "after" for c in runs["config"] if isinstance(c, dict)]
    if any(after):
        return "pre_norm", ("Some runs put the norm after the activation: their activation "
                            "input is not recorded; post_norm is the norm's output there.")
    return "post_norm", ""


def overflow_note(rows: pd.DataFrame, site: str, at_least: float = 0.001) -> str:
    """One sentence on the values outside the histograms' ranges (each run's range is
    fitted at its first step; later values can leave it), or '' when none do."""
    from normlab.views.frames import overflow_frame

    worst = overflow_frame(rows, site)
    if worst.empty:
        return ""
    worst = worst.assign(out=worst["under"].fillna(0) + worst["over"].fillna(0))
    worst = worst[worst["out"] >= at_least].sort_values("out", ascending=False)
    if worst.empty:
        return "No values fell outside the histograms' ranges."
    parts = [f"{r.method} {r.layer}: {r.under:.1%} below, {r.over:.1%} above"
             for r in worst.head(4).itertuples()]
    return ("Values outside the range (not drawn; largest share at any step): "
            + "; ".join(parts) + ("; …" if len(worst) > 4 else "") + ".")


def unit_metrics(runs: pd.DataFrame) -> list[str]:
    """The per-unit percentile metrics the runs recorded (units 0, width//2, width−1)."""
    widths = {int(c.get("width") or 0) for c in runs["config"] if isinstance(c, dict)}
    return sorted({unit_metric(u, q) for w in widths for u in unit_picks(w)
                   for q in UNIT_PERCENTILES})


def load_rows(store: Store, run_ids: Iterable[str], site: str, kind: str, *,
              layers: Iterable[str] | None = None, every: int | None = None,
              steps: tuple[int, int] | None = None,
              metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Tidy rows of ``site`` for ``run_ids``: only the metrics of ``kind`` ('percentiles':
    p15/p50/p85, or 'histogram': hist_00..hist_31), optionally only ``layers``, steps
    divisible by ``every`` and steps in ``steps`` (first, last)."""
    if site not in ACT_SITES:
        raise ValueError(f"site {site!r} is not an activation site; use one of "
                         f"{', '.join(ACT_SITES)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} must be one of {', '.join(KINDS)}")
    ids = list(run_ids)
    if not ids:
        return empty_metrics()
    if kind == "units" and metrics is None:  # names depend on each run's width
        every_run = store.runs()
        metrics = unit_metrics(every_run[every_run["id"].isin(ids)]) or ["u0_p50"]
    return store.metrics(runs=ids, sites=site, metrics=list(metrics or KINDS[kind]),
                         layers=None if layers is None else list(layers), every=every,
                         steps=steps)


def join_methods(rows: pd.DataFrame, runs: pd.DataFrame,
                 comparison_names: dict[str, str] | None = None) -> pd.DataFrame:
    """:func:`normlab.views.frames.with_methods`, computed once per run rather than once per row
    (the same result; histogram frames have ~100k rows per few runs)."""
    run = rows["run"]
    if not isinstance(run.dtype, pd.CategoricalDtype):
        run = run.astype(str).astype("category")
    present = [str(c) for c in run.cat.categories]
    info = with_methods(pd.DataFrame({"run": present}), runs,
                        comparison_names=comparison_names).set_index("run").reindex(present)
    codes = run.cat.codes.to_numpy()
    known = info["method"].notna().to_numpy()
    keep = (codes >= 0) & known[codes]
    out = rows.loc[keep].reset_index(drop=True)
    codes = codes[keep]
    for col in ("method", "seed", "label"):
        out[col] = info[col].to_numpy()[codes]
    out["seed"] = out["seed"].astype("int64")
    return out


def load_site(store: Store, runs: pd.DataFrame, site: str, kind: str, *,
              layers: Iterable[str] | None = None, every: int | None = None,
              comparison_names: dict[str, str] | None = None) -> pd.DataFrame:
    """:func:`load_rows` for ``runs`` (a ``store.runs()`` frame) plus method, seed, label."""
    rows = load_rows(store, runs["id"], site, kind, layers=layers, every=every)
    return join_methods(rows, runs, comparison_names)


def hist_activation(runs: pd.DataFrame, site: str) -> tuple[str | None, list[str], str]:
    """(activation giving the histogram range, run ids drawn, message about the others).

    Only ``post_act`` depends on the activation; there the runs whose activation differs
    from the first run's are left out of the histogram charts (their bins differ).
    """
    acts = [c.get("activation") if isinstance(c, dict) else None for c in runs["config"]]
    first = acts[0] if acts else None
    if site != "post_act" or len(set(acts)) <= 1:
        return first, list(runs["id"]), ""
    keep = [r for r, a in zip(runs["id"], acts) if a == first]
    other = sorted({str(a) for a in acts if a != first})
    return first, keep, (f"Histograms after the activation use the activation's range, and "
                         f"these runs use several ({first}, {', '.join(other)}): only the "
                         f"{len(keep)} {first} run(s) are drawn. Pick runs with one "
                         "activation, or look at pre_norm / post_norm.")


def thin_every(runs: pd.DataFrame, max_steps: int = MAX_HIST_STEPS) -> int | None:
    """``every`` for loading histograms: at most about ``max_steps`` steps of the longest
    run, a multiple of every run's record interval (so no run loses all its steps)."""
    longest = pd.to_numeric(runs["total_steps"], errors="coerce").max()
    if pd.isna(longest) or longest <= max_steps:
        return None
    every = int(-(-longest // max_steps))
    unit = math.lcm(*(int(c.get("record_interval") or 1) if isinstance(c, dict) else 1
                      for c in runs["config"]))
    every = -(-every // unit) * unit
    return None if every <= 1 else every


def step_window(runs: pd.DataFrame, step: int) -> tuple[int, int]:
    """The steps to load to find each run's measurement nearest ``step`` (what
    :func:`normlab.views.frames.hist_step_frame` draws): one record interval (the longest of
    ``runs``) on either side, reaching back to the last step of a run that ended earlier."""
    width = max([int(c.get("record_interval") or 1) if isinstance(c, dict) else 1
                 for c in runs["config"]] or [1])
    taken = pd.to_numeric(runs["step"], errors="coerce")
    ended = taken[taken > 0]
    last = int(ended.min()) - 1 if len(ended) else step
    return max(0, min(step, last) - width), step + width


def step_range(rows: pd.DataFrame) -> tuple[int, int, int]:
    """(first, last, spacing) of the measured steps in ``rows`` (for a step slider)."""
    steps = np.unique(rows["step"].to_numpy())
    if len(steps) == 0:
        return 0, 0, 1
    gap = int(np.gcd.reduce(np.diff(steps))) if len(steps) > 1 else 1
    return int(steps[0]), int(steps[-1]), max(gap, 1)


def bulk_range(rows: pd.DataFrame, site: str, activation: str | None = None, *,
               share: float = 0.01) -> tuple[float, float]:
    """The value range of the histogram bins that hold at least ``share`` of a layer's
    values at some step (any run, layer or step), widened by one bin on each side and
    kept within the histograms' ranges (each run's recorded one, or the fixed one of
    runs stored before). The whole range when no bin qualifies."""
    hist = rows[(rows["site"] == site) & rows["metric"].astype(str).isin(HIST_METRICS)]
    full = full_range(rows, site, activation)
    if hist.empty:
        return full
    hist = _with_edges(hist.assign(bin=_hist_bins(hist["metric"].astype(str))), site,
                       activation, _hist_ranges(rows, site))
    big = hist[hist["value"] >= share]
    if big.empty:
        return full
    width = big["hi"] - big["lo"]
    return (float(max((big["lo"] - width).min(), full[0])),
            float(min((big["hi"] + width).max(), full[1])))


def full_range(rows: pd.DataFrame, site: str, activation: str | None = None
               ) -> tuple[float, float]:
    """The union of the histogram ranges of ``rows``' runs at ``site`` (the recorded ones;
    the site's fixed range for runs stored before ranges were fitted)."""
    ranges = _hist_ranges(rows, site)
    edges = hist_edges(site, activation)
    runs = rows.loc[rows["site"] == site, "run"].astype(str).unique() if "run" in rows else []
    lows = list(ranges["hist_lo"].dropna())
    highs = list(ranges["hist_hi"].dropna())
    if len(ranges.dropna()) < len(runs) or not lows:  # some runs without a recorded range
        lows.append(float(edges[0]))
        highs.append(float(edges[-1]))
    return float(min(lows)), float(max(highs))


def zoom(chart, channel: str, lo: float, hi: float):
    """A copy of a per-layer histogram chart (``hist_heatmap``: channel 'y';
    ``hist_at_step``: 'x') whose value axis shows only [lo, hi]; marks are clipped."""
    out = chart.copy(deep=True)
    for layer in out.spec.layer:
        enc = getattr(layer.encoding, channel)
        enc.scale = alt.Scale(domain=[lo, hi], nice=False)
        mark = layer.mark if isinstance(layer.mark, str) else layer.mark.to_dict()
        layer.mark = alt.MarkDef(**({"type": mark} if isinstance(mark, str) else mark),
                                 clip=True)
    return out


def default_layers(layers: Iterable[str], at_most: int = 4) -> list[str]:
    """All layers when there are few, else ``at_most`` spread from the first to the last."""
    names = natural_order(layers)
    if len(names) <= at_most:
        return names
    picks = sorted({round(i * (len(names) - 1) / (at_most - 1)) for i in range(at_most)})
    return [names[i] for i in picks]


# ------------------------------------------------------------------- the page's charts
PAGE_WIDTH = 800  # px of the main column at 1280 px with the sidebar open
BULK_HELP = ("Histograms show only the value bins that hold at least 1% of a layer's values "
             "at some step (each run's bins cover the range fitted at its first step).")
UNIT_HELP = ("Exact percentiles of 3 fixed units per layer (first, middle, last) over the "
             "batch, instead of the whole layer pooled.")
PCT_CAPTION = ("Line: the median (50th percentile); band: 15th to 85th percentile; dark band "
               "around the line: the median's 95% sampling interval (none where every value "
               "is used, e.g. an MLP layer at batch 64). Drag or scroll to zoom the steps of "
               "either grid (both follow), double-click to reset.")
UNIT_CAPTION = "Exact percentiles of one unit over the batch (and positions)."


def percentile_view(rows: pd.DataFrame, site: str, layers: list[str], *, units: bool = False,
                    width: int = PAGE_WIDTH):
    """The percentile grid of ``layers`` (rows = methods, columns = layers), fitted to
    ``width`` px."""
    from normlab.views.compareview import fit
    from normlab.views.layercharts import percentile_chart

    chart = percentile_chart(rows[rows["layer"].isin(layers)], site, units=units,
                             title=f"{SITE_LABELS[site]}: 15/50/85th percentiles")
    return fit(chart, len(layers), width)


def heatmap_caption(rows: pd.DataFrame, site: str, shown: tuple[float, float],
                    full: tuple[float, float]) -> str:
    return ("Each column: the share of values per bin at that step (log colour; blank = "
            "none). Values %.3g to %.3g shown, of %.3g to %.3g. " % (*shown, *full)
            + overflow_note(rows, site))


def heatmap_view(rows: pd.DataFrame, site: str, activation: str | None,
                 value_range: tuple[float, float], width: int = PAGE_WIDTH):
    """The histogram-over-time grid, fitted to ``width`` px, value axis cut to ``value_range``."""
    from normlab.views.compareview import fit
    from normlab.views.layercharts import hist_heatmap

    chart = hist_heatmap(rows, site, activation=activation, title=f"{site} histogram over time")
    return zoom(fit(chart, rows["layer"].nunique(), width), "y", *value_range)


def over_time_spec(*charts) -> dict:
    """The percentile grid and the histogram over time (``None`` ones left out) as one
    Vega-Lite spec (:func:`normlab.views.linked.compose`): zooming or panning the steps of
    either moves both, a double-click resets both."""
    from normlab.views.linked import compose

    with alt.data_transformers.disable_max_rows():
        return compose([c.to_dict() for c in charts if c is not None])


def step_view(rows: pd.DataFrame, site: str, step: int, activation: str | None, log: bool,
              value_range: tuple[float, float], width: int = PAGE_WIDTH):
    """Every method's histogram at ``step``, one panel per layer (up to 3 a row), fitted to
    ``width`` px, value axis cut to ``value_range``."""
    from normlab.views.compareview import fit
    from normlab.views.layercharts import hist_at_step

    chart = hist_at_step(rows, site, int(step), activation=activation, log=log)
    return zoom(fit(chart, min(3, rows["layer"].nunique()), width), "x", *value_range)
