"""The guided tour: the seed's argument as a sequence of steps, one screen each, for a talk.

A :class:`TourStep` is one entry of the registry :data:`STEPS` (in the argument's order):
its claim in two sentences, the lab and preset whose runs it shows (``preset=None``: the
step measures on the spot and needs no runs), and a ``build(store, comparison_id)``
function that returns ``(figure, readout)`` by calling that lab's own frame, chart and
readout functions on the stored runs — a figure is an Altair chart, a table, or None while
there is nothing to draw yet (the readout then says why). Adding a step (the one-formula
lab's, for instance) is adding one entry.

The runs are the labs' presets, run once and then reused: :func:`stored_comparison` finds
the newest stored comparison of a preset (by the ``origin`` its launch recorded, so an
experiment changed on the lab's form with that preset counts too; a comparison stored
before origins existed by the name the scaffold gives it, ``Preset.name`` without its run
count); :func:`launch_missing` queues the presets that have none through
the engine; :func:`time_left` estimates when a step's runs will be done.

No Streamlit here: :mod:`normlab.ui.tour` draws.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import altair as alt
import pandas as pd

from normlab.runs.store import FINISHED, NotFound, Store
from normlab.views.labs import formula, ics, invariance, sensitivity
from normlab.views.labs import whitening as wh
from normlab.views.labs.scaffold import Lab, Preset, launch, origin

Figure = alt.TopLevelMixin | pd.DataFrame | tuple | None  # a tuple: drawn one below another
Build = Callable[[Store, str | None], tuple[Figure, str]]
FRAMEWORK_METHODS = ("none", "batch", "layer", "weight", "cosine")  # BN, LN, WN, CosineNorm
SCALE = 1.3  # presenter mode: charts and their fonts this much larger than on the lab page
SINGLE_WIDTH = 1.7  # ... and a single panel this much wider (a sweep: 560 -> 952 px)
ROWS_HEIGHT = 0.7  # ... but two rows of panels this high (whitening: 2 x 200 -> 2 x 140 px)


@dataclass(frozen=True)
class TourStep:
    """One screen of the tour."""

    key: str  # in the URL: /tour?step=key
    title: str
    claim: str  # two plain sentences (no markdown)
    lab: Lab  # the lab the chart comes from (its page is linked)
    preset: str | None  # the lab's preset whose runs are shown; None: no runs needed
    build: Build  # (store, comparison id or None) -> (figure, readout)
    caption: str = ""  # what the figure shows, in a line

    @property
    def needs(self) -> Preset | None:
        return None if self.preset is None else self.lab.preset(self.preset)


# ----------------------------------------------------------------- finding the runs
def _prefix(lab: Lab, preset: Preset) -> str:
    """``Preset.name`` up to its run count: 'Lab · preset label · '."""
    return f"{lab.title} · {preset.label} · "


def stored_comparison(store: Store, step: TourStep) -> str | None:
    """The newest stored comparison of the step's preset (None: none, or no runs needed)."""
    if step.needs is None:
        return None
    wanted, prefix = origin(step.lab, step.needs), _prefix(step.lab, step.needs)
    for record in store.comparisons().to_dict("records"):  # newest first
        launched = record.get("origin")
        if record["n_runs"] > 0 and (launched == wanted if isinstance(launched, dict)
                                     else str(record["name"]).startswith(prefix)):
            return str(record["id"])
    return None


def missing(store: Store, steps=None) -> list[TourStep]:
    """Steps whose preset has no stored comparison yet (one per preset)."""
    out, seen = [], set()
    for step in steps or STEPS:
        if step.needs is None or (step.lab.key, step.preset) in seen:
            continue
        seen.add((step.lab.key, step.preset))
        if stored_comparison(store, step) is None:
            out.append(step)
    return out


def launch_missing(store: Store, steps=None) -> list[tuple[str, str]]:
    """Queue every preset the tour needs that is not stored; [(step key, comparison id)]."""
    return [(step.key, launch(step.needs, step.lab, store=store)[0])
            for step in missing(store, steps)]


def time_left(store: Store, cid: str) -> str:
    """A line on how far comparison ``cid`` is: runs finished, and about how long is left.

    The engine gives its workers to the comparisons with unfinished runs in turn, so this
    one gets about 1/K of the speed of all running runs (K: comparisons with unfinished
    runs); the estimate is its remaining steps (of runs not paused) over that share.
    """
    from normlab.views.compareview import progress_summary

    runs = store.runs(comparison=cid)
    summary = progress_summary(runs)
    if summary["finished"]:
        return summary["text"]
    everything = store.runs()
    pending = everything[~everything["status"].isin(FINISHED)]
    speed = float(pending["steps_per_sec"].where(pending["status"] == "running").sum())
    total = runs["total_steps"].fillna(0).astype(float)
    done = runs["step"].fillna(0).astype(float).clip(upper=total)
    held = (runs["control"] == "pause") | (runs["status"] == "paused")  # not trained now
    waiting = ~runs["status"].isin(FINISHED) & ~held
    left = float((total - done)[waiting].sum())
    head = f"{int(runs['status'].isin(FINISHED).sum())} of {len(runs)} runs finished"
    if not waiting.any():
        return f"{head} · the others are paused (resume them on the lab's page)"
    if speed <= 0:
        return f"{head} · waiting for a worker ({left:,.0f} steps to train)"
    seconds = left * pending["comparison_id"].nunique() / speed
    return f"{head} · about {_duration(seconds)} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def finished(store: Store, cid: str | None) -> bool:
    """Whether every run of ``cid`` has finished (True for no comparison)."""
    if cid is None:
        return True
    try:
        return bool(store.runs(comparison=cid)["status"].isin(FINISHED).all())
    except NotFound:
        return True


# ----------------------------------------------------------------- presenter mode
def rows(chart) -> int:
    """How many rows of panels ``chart`` stacks (vconcat entries, facet rows counted 1)."""
    stacked = getattr(chart, "vconcat", None)
    if stacked:
        return sum(rows(c) for c in stacked)
    return max([rows(c) for c in getattr(chart, "hconcat", None) or ()] or [1])


def enlarge(chart, scale: float = SCALE, height_scale: float | None = None):
    """``chart`` with every panel's numeric width times ``scale``, its height times
    ``height_scale`` (default ``scale``) and fonts up to SCALE larger (presenter mode);
    concatenations, layers and facets are walked, the original is left as it was."""
    factors = {"width": scale, "height": scale if height_scale is None else height_scale}

    def walk(c) -> None:
        for attr in ("hconcat", "vconcat", "concat"):
            for sub in getattr(c, attr, None) or ():
                walk(sub)
        spec = getattr(c, "spec", None)
        if spec is not None and spec is not alt.Undefined and hasattr(spec, "to_dict"):
            walk(spec)
        sized = False
        for dim, factor in factors.items():
            value = getattr(c, dim, alt.Undefined)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(c, dim, int(value * factor))
                sized = True
        if not sized:
            for sub in getattr(c, "layer", None) or ():
                walk(sub)

    chart = chart.copy(deep=True)
    walk(chart)
    f = lambda size: round(size * min(scale, SCALE))  # noqa: E731
    return (chart.configure_axis(labelFontSize=f(12), titleFontSize=f(13))
            .configure_legend(labelFontSize=f(12), titleFontSize=f(13))
            .configure_header(labelFontSize=f(12), titleFontSize=f(13))
            .configure_title(fontSize=f(14)))


def presented(chart):
    """A step's chart for the screen, with larger fonts: a single panel (its width holds
    axes and legend) much wider; panels side by side SCALE wider and taller; two rows of
    panels wider but lower (ROWS_HEIGHT), so both rows fit a projector's screen under the
    claim and the readout."""
    if isinstance(chart, (alt.Chart, alt.LayerChart)):
        return enlarge(chart, SINGLE_WIDTH, SCALE)
    return enlarge(chart, SCALE, SCALE if rows(chart) == 1 else ROWS_HEIGHT)


# ----------------------------------------------------------------- the steps' builds
def _runs(store: Store, cid: str | None) -> pd.DataFrame | None:
    if cid is None:
        return None
    try:
        return store.runs(comparison=cid)
    except NotFound:
        return None


NO_RUNS = "No runs of this step's preset yet: the tour launches them at its first step."


def _whitening(store: Store, cid: str | None) -> tuple[Figure, str]:
    runs = _runs(store, cid)
    if runs is None:
        return None, NO_RUNS
    from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES

    curves = wh.curve_frame(store.metrics(list(runs["id"]), metrics=list(CURVE_METRICS),
                                          sites=list(CURVE_SITES)), runs)
    if curves.empty:
        return None, wh.waiting_message(runs)
    layers = sorted(curves["layer"].unique())
    return wh.curve_chart(curves, layers[len(layers) // 2]), wh.readout(curves)


def _ics(store: Store, cid: str | None) -> tuple[Figure, str]:
    runs = _runs(store, cid)
    if runs is None:
        return None, NO_RUNS
    frame = ics.ics_frame(store.metrics(list(runs["id"]), sites=[ics.SITE]), runs)
    waiting = ics.waiting_message(runs, frame)
    if waiting:
        return None, waiting
    return ics.drift_chart(frame, width=230), f"{ics.drift_readout(frame)} {ics.ics_readout(frame)}"


def _formula(store: Store, cid: str | None) -> tuple[Figure, str]:
    runs = _runs(store, cid)
    if runs is None:
        return None, NO_RUNS
    linear = formula.linear_frame(formula.load(store, cid, runs)["summary"], runs)
    if linear.empty:
        return None, ("Waiting for the first measurements… (runs made without "
                      "`stages=True` record none: launch the lab's preset)")
    from normlab.views.frames import natural_order

    layer = natural_order(linear["layer"].unique())[-1]  # the lab page's default layer
    return formula.linear_chart(linear, layer), formula.linear_readout(linear, layer)


@lru_cache(maxsize=1)
def _invariances() -> pd.DataFrame:
    return invariance.invariance_table(FRAMEWORK_METHODS)


@lru_cache(maxsize=1)
def _gradients() -> pd.DataFrame:
    """Lab 4's gradient measurement at λ = 0.1, 1, 10 (the tour shows only its slopes)."""
    return invariance.gradient_scaling(FRAMEWORK_METHODS, invariance.LAMBDAS[::4])


def framework_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tables of one row per method: its choices in the framework (the Home page's
    methods table), and per re-scaling whether its output ignores it (Y/N, measured by
    Lab 4: ``table`` is :func:`normlab.views.labs.invariance.invariance_table`)."""
    from normlab.views.compareview import methods_table

    methods = methods_table().set_index("name")
    titles = dict.fromkeys(table["title"])
    keep = [m for m in dict.fromkeys(table["method"])]
    choices = methods.loc[keep, ["method", "μ (shift)", "σ (scale)", "reduction axes",
                                 "learnable"]].set_index("method")
    ignores = table.assign(cell=table["invariant"].map({True: "Y", False: "N"})).pivot(
        index="title", columns="transform_title", values="cell")
    ignores = ignores.loc[list(titles), list(dict.fromkeys(table["transform_title"]))]
    return choices.rename_axis(index="method"), ignores.rename_axis(index="ignores…",
                                                                      columns=None)


def _framework(store: Store, cid: str | None) -> tuple[Figure, str]:
    table = _invariances()
    return framework_tables(table), invariance.table_readout(table)


def _invariance(store: Store, cid: str | None) -> tuple[Figure, str]:
    slope = invariance.gradient_readout(_gradients())
    runs = _runs(store, cid)
    if runs is None:
        return None, f"{slope} {NO_RUNS}"
    metrics = store.metrics(list(runs["id"]), metrics=list(invariance.WEIGHT_METRICS),
                            sites=["param"])
    frame = invariance.weight_frame(metrics, runs)
    if frame.empty:
        return None, f"{slope} Waiting for the first weight measurements…"
    layers = sorted(frame["layer"].unique(), key=lambda n: (n == "out", n))
    layer = layers[min(1, len(layers) - 1)]
    return (invariance.weight_chart(frame, layer),
            f"{slope} {invariance.weight_readout(frame, layer)}")


def _finals(store: Store, runs: pd.DataFrame, field: str, site: str = "val"):
    from normlab.views import sweep

    rows = store.metrics(list(runs["id"]), metrics=["acc"], sites=[site])
    return sweep.sweep_frame(runs, sweep.final_values(rows, "last", metric="acc"), field)


def _sweep(field: str, readout: Callable[[pd.DataFrame], str]) -> Build:
    def build(store: Store, cid: str | None) -> tuple[Figure, str]:
        from normlab.views import sweep

        runs = _runs(store, cid)
        if runs is None:
            return None, NO_RUNS
        frame = _finals(store, runs, field)
        if frame["value"].notna().sum() == 0 and not frame["diverged"].any():
            return None, "No run has finished yet; the sweep fills in as they do."
        chart = sweep.sweep_chart(frame, field,
                                  y_title=sweep.metric_title("acc", "val", "last"))
        return chart, readout(frame)
    return build


def _batch_readout(store: Store, cid: str | None):
    """Lab 6's readout needs the training-mode frame too."""
    runs = _runs(store, cid)
    trained = runs is not None and any(c.get("eval_train_mode") for c in runs["config"])
    return lambda ev: sensitivity.batch_readout(
        ev, _finals(store, runs, "batch_size", "val_train_mode") if trained else None)


def _batch(store: Store, cid: str | None) -> tuple[Figure, str]:
    return _sweep("batch_size", _batch_readout(store, cid))(store, cid)


# ----------------------------------------------------------------- the registry
STEPS: tuple[TourStep, ...] = (
    TourStep(
        "whitening", "i.i.d. inputs and whitening",
        "A network learns fastest from whitened inputs — features uncorrelated, with zero "
        "mean and unit variance — but whitening every layer is costly. BatchNorm only "
        "standardizes each feature, Decorrelated BatchNorm also removes correlations within "
        "groups, and LayerNorm standardizes each example instead.",
        wh.LAB, "whitening", _whitening,
        "The middle layer over training: solid, the norm's output x̂; dashed, its input."),
    TourStep(
        "ics", "Internal covariate shift and saturation",
        "As the layers below learn, each layer's input keeps moving — internal covariate "
        "shift — and with sigmoid units it can drift into saturation, where gradients "
        "vanish. BatchNorm was proposed to hold each layer's input still (Ioffe & Szegedy "
        "2015); Santurkar et al. (2018) found that it does not, and that it makes the loss "
        "landscape smoother instead.",
        ics.LAB, "shift", _ics,
        "How far each layer's input moves between measurements, in units of its initial "
        "spread; faint: the sampling floor."),
    TourStep(
        "formula", "One formula: what g and b do",
        "Every method computes h = f(g·(x − μ)/σ + b): it standardizes x with some μ and σ, "
        "then re-scales and re-shifts it with learned g and b. Standardizing alone would "
        "hold a sigmoid's input near 0, where it is almost linear, so g and b let the "
        "layer move it back out and keep the network non-linear.",
        formula.LAB, "sigmoid", _formula,
        "The last hidden layer: share of f's input in its near-linear region, at x̂ "
        "(dashed, before g and b) and at y (solid, after)."),
    TourStep(
        "framework", "BN, LN, WN and CosineNorm in one framework",
        "Every method is a choice in h = f(g·(x − μ)/σ + b): which axes the mean and spread "
        "are taken over, or whether the weights are normalized instead of the activations. "
        "Those choices decide which re-scalings of the weights and the data each method "
        "ignores (Ba et al. 2016, Table 1).",
        invariance.LAB, None, _framework,
        "Each method's choices in the formula; below, Y where its output ignores the "
        "re-scaling (measured now, on a block built by NormLab's own modules)."),
    TourStep(
        "invariance", "Re-scaling invariance lowers the effective learning rate",
        "A normalized layer ignores the scale of its weights, so when they grow by λ its "
        "gradient shrinks by 1/λ. Without weight decay the weights grow in training and "
        "the effective step ‖Δw‖/‖w‖ falls by itself; weight decay holds it up.",
        invariance.LAB, "weights", _invariance,
        "A hidden layer's weight norm and effective step over training; dashed: with "
        "weight decay."),
    TourStep(
        "lr", "Robust to the learning rate",
        "Normalized networks train well over a much wider range of learning rates than "
        "the same network without normalization. A too-large step grows the weights, and "
        "the larger weights shrink the effective step again.",
        sensitivity.LR_LAB, "lr", _sweep("lr", lambda f: sensitivity.tolerance_readout(
            f, "lr")),
        "Final validation accuracy against the learning rate; crosses: diverged runs."),
    TourStep(
        "init", "Robust to initialization",
        "A normalized layer undoes a bad initial weight scale at its output. So the "
        "initial scale of the weights should matter far less with normalization than "
        "without it.",
        sensitivity.LR_LAB, "init", _sweep("init_scale", lambda f: sensitivity
                                           .tolerance_readout(f, "init_scale")),
        "Final validation accuracy against the initial weight scale."),
    TourStep(
        "batch", "Batch size: where BatchNorm breaks",
        "BatchNorm normalizes with the statistics of the mini-batch, so with small batches "
        "they are noisy and both training and the running averages suffer. GroupNorm and "
        "LayerNorm normalize each example on its own and do not depend on the batch size "
        "(Wu & He 2018).",
        sensitivity.BATCH_LAB, "batch", _batch,
        "Final validation accuracy (eval mode) against the batch size, with the learning "
        "rate scaled with it and the examples seen held fixed."),
)


def index_of(key: str | None, steps=None) -> int | None:
    """The position of step ``key`` (None: no such step)."""
    keys = [s.key for s in steps or STEPS]
    return keys.index(key) if key in keys else None
