"""What each lab page shows, section by section: the lab's report (``normlab report``, the
page's "Download report") is built from these.

A :class:`Section` is one subheader of a lab page: the Altair charts the page draws there,
built by the lab's own frame and chart functions from the stored runs; a table where the
page shows one; the readouts the page writes under it, computed by the lab's own readout
functions; and what the page says instead when there is nothing to draw yet. The choices a
page leaves to a widget take the page's defaults (the layer, the newest step, the sweep's
first field, validation accuracy, last value, min–max band), so a report is what the page
shows when it opens.

:data:`LABS` lists the labs in the menu's order; :func:`lab_of` finds the lab that launched
a comparison — by the ``origin`` the comparison records
(:func:`normlab.views.labs.scaffold.origin`), else, for comparisons stored before origins,
by the name a preset gives it (``'Lab title · preset · N runs'``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import altair as alt
import pandas as pd

from normlab.runs.store import Store
from normlab.views import sweep
from normlab.views.frames import natural_order
from normlab.views.labs import formula, ics, invariance, sensitivity
from normlab.views.labs import whitening as wh
from normlab.views.labs.scaffold import Lab

LABS: tuple[Lab, ...] = (formula.LAB, wh.LAB, ics.LAB, invariance.LAB, sensitivity.LR_LAB,
                         sensitivity.BATCH_LAB)  # pages 4-9, in the menu's order


@dataclass(frozen=True)
class Section:
    """One subheader of a lab page, as its report shows it."""

    title: str
    charts: tuple[tuple[str, alt.TopLevelMixin], ...] = ()  # (title, the page's chart)
    tables: tuple[pd.DataFrame, ...] = ()  # tables the page shows (index: row labels)
    readouts: tuple[str, ...] = ()  # the lab's measured readouts, as the page writes them
    notes: tuple[str, ...] = ()  # what the page says instead of a chart (waiting, ...)


def lab_by_key(key: str) -> Lab:
    for lab in LABS:
        if lab.key == key:
            return lab
    raise ValueError(f"no lab {key!r}; the labs: {', '.join(lab.key for lab in LABS)}")


def lab_of(comparison: dict | None) -> Lab | None:
    """The lab that launched ``comparison`` (a store or export record), or None."""
    if not comparison:
        return None
    origin = comparison.get("origin")
    if isinstance(origin, dict):
        return next((lab for lab in LABS if lab.key == origin.get("lab")), None)
    name = str(comparison.get("name") or "")
    return next((lab for lab in LABS if name.startswith(f"{lab.title} · ")), None)


def sections(store: Store, lab: Lab, cid: str, runs: pd.DataFrame) -> list[Section]:
    """The sections of ``lab``'s page showing comparison ``cid`` (its ``runs``)."""
    return BUILDERS[lab.key](store, cid, runs)


def readouts(parts: list[Section]) -> list[str]:
    """Every readout of ``parts``, in page order."""
    return [r for s in parts for r in s.readouts]


# ------------------------------------------------------------------ one function per lab

def _formula(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/4_one_formula.py: the last layer at the newest step."""
    summary = formula.load(store, cid, runs)["summary"]
    linear = formula.linear_frame(summary, runs)
    if linear.empty:
        return [Section("x → x̂ → y → f(y)", notes=(
            "These runs recorded no stages (they were made without `stages=True`)."
            if _finished(runs) else "Waiting for the first measurements…",))]
    layer = natural_order(linear["layer"].unique())[-1]
    step = max(int(s) for s in linear["step"].unique())
    data = formula.load(store, cid, runs, layer, step)
    activation = (runs["config"].iloc[0] or {}).get("activation")
    stages = formula.stage_frame(data["stages"], runs, layer, step, activation)
    out = [Section(f"x → x̂ → y → f(y) in {layer} at step {step}",
                   charts=(() if stages.empty else
                           (("The four distributions", formula.stage_chart(stages)),)),
                   tables=(formula.source_table(data["stages"], runs, layer, step)
                           .set_index("method"),))]
    features = formula.feature_frame(data["features"], runs, layer, step)
    out.append(Section("Does the output have mean b and variance g²?", notes=(
        "No per-feature snapshot yet (taken every eval_interval steps).",)) if features.empty
        else Section("Does the output have mean b and variance g²?",
                     charts=(("Per feature: mean and variance of y against b and g²",
                              formula.feature_chart(features)),),
                     readouts=(formula.feature_readout(features, layer),)))
    affine = formula.affine_frame(summary, runs)
    if not affine[affine["layer"] == layer].empty:
        out.append(Section("g and b over training",
                           charts=((f"g and b in {layer}", formula.affine_chart(affine, layer)),)))
    out.append(Section("Do g and b move f's input out of its near-linear region?",
                       charts=(("Share in the near-linear region",
                                formula.linear_chart(linear, layer)),),
                       readouts=(formula.linear_readout(linear, layer),)))
    return out


def _whitening(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/5_whitening.py: the middle layer, the newest snapshot."""
    from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES, MATRIX_SITES

    ids = list(runs["id"])
    curves = wh.curve_frame(store.metrics(ids, metrics=list(CURVE_METRICS),
                                          sites=list(CURVE_SITES)), runs)
    if curves.empty:
        return [Section("Over training", notes=(wh.waiting_message(runs),))]
    layers = sorted(curves["layer"].unique())
    layer = layers[len(layers) // 2]
    snaps = wh.snapshot_steps_of(store.metrics(ids, metrics=["eig00"], sites=["matrix_out"]))
    out = []
    if snaps:
        step = snaps[-1]
        shot = store.metrics(ids, layers=[layer], sites=list(MATRIX_SITES), steps=(step, step))
        out.append(Section(
            f"Correlation matrices of {layer} at step {step}: the norm's input and output",
            charts=(("Correlation matrices (lowest seed)",
                     wh.heatmap_chart(wh.matrix_frame(shot, runs, layer, step))),
                    ("Eigenvalues of the output's covariance (whitened: flat at 1)",
                     wh.spectrum_chart(wh.spectrum_frame(shot, runs, layer, step))))))
    else:
        out.append(Section("Correlation matrices", notes=(
            "No snapshot stored (runs need `corr_snapshots` > 0).",)))
    out.append(Section(f"Over training ({layer}): correlation and the spread across features",
                       charts=(("Solid: output x̂; dashed: input x",
                                wh.curve_chart(curves, layer)),),
                       readouts=(wh.readout(curves),)))
    return out


def _ics(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/6_ics.py."""
    frame = ics.ics_frame(store.metrics(list(runs["id"]), sites=[ics.SITE]), runs)
    waiting = ics.waiting_message(runs, frame)
    if waiting:
        return [Section("Drift: how far each layer's input moves", notes=(waiting,))]
    smooth = ics.smooth_frame(frame)
    return [
        Section("Drift: how far each layer's input moves",
                charts=(("Drift per layer, in units of the initial spread σ₀",
                         ics.drift_chart(frame, width=230)),
                        ("Drift against depth", ics.depth_chart(ics.depth_frame(frame)))),
                readouts=(ics.drift_readout(frame),)),
        Section("Santurkar et al.'s ICS: does a layer's gradient change when the layers "
                "below update?",
                charts=(("‖G − G′‖", ics.lines_chart(frame, "ics_diff", "‖G − G′‖",
                                                     log=True, width=210)),
                        ("cos(G, G′)", ics.lines_chart(frame, "ics_cos", "cos(G, G′)",
                                                       width=210))),
                readouts=(ics.ics_readout(frame),)),
        Section("Landscape along the gradient (Santurkar et al., Fig. 4)",
                charts=(("Range along the gradient",
                         ics.lines_chart(smooth, "range", "range along the gradient",
                                         log=True, panel="quantity", width=300)),),
                readouts=(ics.smooth_readout(smooth),)),
    ]


@lru_cache(maxsize=1)
def measured_invariance() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lab 4's measurements that need no runs (the page's table and gradient scaling),
    measured once per process."""
    return invariance.invariance_table(), invariance.gradient_scaling()


def _invariance(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/7_invariance.py: the table and the gradient's 1/λ (measured on the spot), then
    the weights over training in the page's default layer."""
    table, gradients = measured_invariance()
    out = [Section("Which re-scalings does the output ignore?",
                   tables=(invariance.table_display(table),),
                   readouts=(invariance.table_readout(table),)),
           Section("So the gradient shrinks as the weights grow",
                   charts=(("‖∂L/∂W‖ against the weight scale λ",
                            invariance.gradient_chart(gradients)),),
                   readouts=(invariance.gradient_readout(gradients),))]
    metrics = store.metrics(list(runs["id"]), metrics=list(invariance.WEIGHT_METRICS),
                            sites=["param"])
    frame = invariance.weight_frame(metrics, runs)
    title = "Over training: weights grow, the effective step falls"
    if frame.empty:
        return out + [Section(title, notes=("Waiting for the first measurements…",))]
    layers = sorted(frame["layer"].unique(), key=lambda n: (n == "out", n))
    layer = layers[min(1, len(layers) - 1)]
    return out + [Section(f"{title} ({layer})",
                          charts=((f"Weight norm and ‖Δw‖/‖w‖ of {layer}",
                                   invariance.weight_chart(frame, layer)),),
                          readouts=(invariance.weight_readout(frame, layer),))]


def finals(store: Store, runs: pd.DataFrame, field: str, site: str = "val",
           metric: str = "acc", how: str = "last", k: int = 3) -> pd.DataFrame:
    """:func:`normlab.views.sweep.sweep_frame` of one final metric (the sweep view's read)."""
    rows = store.metrics(list(runs["id"]), metrics=[metric], sites=[site])
    return sweep.sweep_frame(runs, sweep.final_values(rows, how, k, metric), field)


def _sweep_section(store: Store, runs: pd.DataFrame, field: str,
                   readout: Callable[[pd.DataFrame], str]) -> Section:
    """The sweep view at its defaults (validation accuracy, last value, min–max band) and
    the lab's readout of the validation accuracy."""
    frame = finals(store, runs, field)
    title = f"Final validation accuracy against {field}"
    if frame["value"].notna().sum() == 0 and not frame["diverged"].any():
        return Section(title, notes=("No run has reached its first evaluation yet.",))
    chart = sweep.sweep_chart(frame, field, y_title=sweep.metric_title("acc", "val", "last"),
                              band="minmax", log_y=False)
    return Section(title, charts=((title, chart),),
                   tables=(sweep.sweep_table(frame, field),), readouts=(readout(frame),))


def _no_sweep(runs: pd.DataFrame) -> Section:
    return Section("Sweep", notes=("These runs vary no numeric setting, so there is nothing "
                                   "to sweep over.",))


def _lr_init(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/8_lr_init.py: the sweep over the grid's first swept field."""
    fields = sweep.swept_fields(list(runs["config"]), store.comparison(cid).get("grid"))
    if not fields:
        return [_no_sweep(runs)]
    field = fields[0]
    return [_sweep_section(store, runs, field,
                           lambda acc: sensitivity.tolerance_readout(acc, field))]


def _batch_size(store: Store, cid: str, runs: pd.DataFrame) -> list[Section]:
    """pages/9_batch_size.py: the sweep over the batch size, read in eval and (when
    measured) in training mode."""
    grid = store.comparison(cid).get("grid")
    fields = (["batch_size"] if "batch_size" in (grid or {})
              else sweep.swept_fields(list(runs["config"]), grid))
    if not fields:
        return [_no_sweep(runs)]
    trained = any(c.get("eval_train_mode") for c in runs["config"])
    train = finals(store, runs, "batch_size", "val_train_mode") if trained else None
    return [_sweep_section(store, runs, fields[0], lambda ev: sensitivity.batch_readout(
        finals(store, runs, "batch_size"), train))]


def _finished(runs: pd.DataFrame) -> bool:
    from normlab.views.compareview import finished

    return finished(runs)


BUILDERS: dict[str, Callable[[Store, str, pd.DataFrame], list[Section]]] = {
    formula.LAB.key: _formula, wh.LAB.key: _whitening, ics.LAB.key: _ics,
    invariance.LAB.key: _invariance, sensitivity.LR_LAB.key: _lr_init,
    sensitivity.BATCH_LAB.key: _batch_size}
