"""Lab 3, internal covariate shift: does a layer's input keep moving, and does it matter?

Ioffe & Szegedy (2015) argued that each layer's input distribution keeps moving as the
layers below learn (internal covariate shift) and that BatchNorm helps by holding it
still; Santurkar et al. (2018) measured a gradient-based version of that shift that
BatchNorm does *not* reduce, and found instead a smoother loss landscape. The runs record
all three (the opt-in ``RunConfig.ics_interval``, site ``ics``, defined in
:mod:`normlab.measure.ics`); this module turns the rows into charts and readouts:

* :func:`ics_frame` — the ``ics`` rows with each run's method and learning rate, seeds
  averaged; :func:`depth_frame` — the median drift per layer (against depth);
* :func:`drift_chart` (drift over training with its sampling error and the two-samples
  floor), :func:`depth_chart`, :func:`lines_chart` (any ``ics`` metric over training,
  one panel per layer or quantity), :func:`smooth_frame` (the landscape's ranges);
* :func:`drift_readout`, :func:`ics_readout`, :func:`smooth_readout` — one line each,
  computed from the runs shown.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from normlab.measure.ics import PROBE_EXAMPLES, SITE  # noqa: F401 (the page names them)
from normlab.training.config import RunConfig
from normlab.views.frames import natural_key
from normlab.views.labs.scaffold import Lab, Preset
from normlab.views.palette import color_scale, method_order

KEYS = ["method", "lr", "layer", "metric", "step"]
PANEL_ORDER = {"quantity": ["loss", "gradient change"]}  # panels that are not layers


def _layer_order(layers) -> list[str]:
    """Input layers in depth order: hidden2, hidden3, …, out."""
    return sorted(set(map(str, layers)) - {"model"}, key=lambda n: (n == "out", natural_key(n)))


def ics_frame(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The ``ics`` rows with the run's ``method`` and ``lr`` and a ``series`` label
    ("batch · lr 0.1"), the mean over seeds; columns method, lr, series, layer, metric,
    step, value, every (the run's ics_interval)."""
    rows = metrics[metrics["site"].astype(str) == SITE]
    if rows.empty:
        return pd.DataFrame(columns=[*KEYS, "value", "series", "every"])
    cfg = {r.id: r.config for r in runs.itertuples()}
    out = pd.DataFrame({"run": rows["run"].astype(str).to_numpy(),
                        "step": rows["step"].to_numpy(dtype=np.int64),
                        "layer": rows["layer"].astype(str).to_numpy(),
                        "metric": rows["metric"].astype(str).to_numpy(),
                        "value": rows["value"].to_numpy(dtype=float)})
    out["method"] = out["run"].map(lambda r: cfg[r]["norm"])
    out["lr"] = out["run"].map(lambda r: float(cfg[r]["lr"]))
    out["every"] = out["run"].map(lambda r: int(cfg[r].get("ics_interval") or 0))
    out = out.groupby([*KEYS, "every"], as_index=False)["value"].mean()
    out["series"] = [f"{m} · lr {lr:g}" for m, lr in zip(out["method"], out["lr"])]
    return out


def _log_axis(values) -> alt.Axis:
    """A log axis with one tick and grid line per decade the positive ``values`` span."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return alt.Axis(format="~g")
    lo, hi = int(np.floor(np.log10(v.min()))), int(np.ceil(np.log10(v.max())))
    return alt.Axis(values=[10.0 ** k for k in range(lo, hi + 1)], format="~g")


def _series_order(frame: pd.DataFrame) -> list[str]:
    order = method_order(frame["method"].unique())
    pairs = frame[["method", "lr", "series"]].drop_duplicates()
    pairs = pairs.assign(rank=pairs["method"].map(order.index)).sort_values(["rank", "lr"])
    return list(pairs["series"])


def _encodings(frame: pd.DataFrame, legend: bool = True) -> dict:
    """Colour = method (the shared palette), dash = learning rate."""
    solid = alt.Legend(symbolOpacity=1, symbolType="stroke", symbolStrokeWidth=2)
    return {"color": alt.Color("method:N", scale=color_scale(frame["method"].unique()),
                               title="method", legend=solid if legend else None),
            "strokeDash": alt.StrokeDash("lr:O", title="lr",
                                         legend=solid if legend else None)}


def lines_chart(frame: pd.DataFrame, metric: str, title: str, *, log: bool = False,
                panel: str = "layer", width: int = 250) -> alt.FacetChart:
    """``metric`` over training, one line per method and lr, one panel per ``panel``
    value (input layer, or quantity); log y when values span decades."""
    rows = frame[frame["metric"] == metric]
    if log:
        rows = rows[rows["value"] > 0]
    if rows.empty:
        raise ValueError(f"no {metric!r} rows to draw")
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    base = alt.Chart(rows).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", scale=scale, title=title,
                axis=_log_axis(rows["value"]) if log else alt.Axis()),
        tooltip=["series:N", f"{panel}:N", "step:Q", alt.Tooltip("value:Q", format=".3g")],
        **_encodings(rows))
    # one line per method and lr
    return base.mark_line().properties(width=width, height=220).facet(
        column=alt.Column(f"{panel}:N", title=None, sort=_layer_order(rows[panel])
                          if panel == "layer" else PANEL_ORDER.get(panel)))


def drift_chart(frame: pd.DataFrame, width: int = 250) -> alt.FacetChart:
    """Drift over training per input layer (σ₀ units, log y): one line per method and lr,
    a band of ±2 sampling errors around it, and a faint line of the same style: that
    run's two-samples floor (what two different samples of the step are apart)."""
    d = frame[frame["metric"].isin(["drift", "drift_noise", "drift_floor"])]
    wide = d.pivot_table(index=["method", "lr", "series", "layer", "step"], columns="metric",
                         values="value").reset_index()
    if "drift" not in wide or wide["drift"].isna().all():
        raise ValueError("no drift rows to draw (a run needs two measured steps)")
    wide = wide.dropna(subset=["drift"])
    noise = wide.get("drift_noise", pd.Series(0.0, index=wide.index)).fillna(0.0)
    wide["lo"] = np.maximum(wide["drift"] - 2 * noise, wide["drift"] / 3)  # log axis: > 0
    wide["hi"] = wide["drift"] + 2 * noise
    x = alt.X("step:Q", title="step")
    y = alt.Y("drift:Q", scale=alt.Scale(type="log"), title="drift per k steps (W1 / σ₀)",
              axis=_log_axis(np.r_[wide["lo"], wide["hi"], wide.get("drift_floor", [])]))
    enc = faint = _encodings(wide)  # one legend for the three layers, drawn solid
    base = alt.Chart(wide)
    # faint: each run's floor, two different samples of the same step (no drift at all)
    floor = base.mark_line(opacity=0.35, strokeWidth=1.2).encode(
        x=x, y=alt.Y("drift_floor:Q"), **faint, detail="series:N",
        tooltip=["series:N", alt.Tooltip("drift_floor:Q", format=".3g",
                                         title="two-samples floor")])
    # ±2 sampling errors of the drift itself (its two halves' disagreement)
    band = base.mark_area(opacity=0.2).encode(x=x, y="lo:Q", y2="hi:Q",
                                              color=faint["color"], detail="series:N")
    # the drift, one line per method and lr
    line = base.mark_line().encode(
        x=x, y=y, **enc,
        tooltip=["series:N", "layer:N", "step:Q", alt.Tooltip("drift:Q", format=".3g"),
                 alt.Tooltip("drift_noise:Q", format=".2g", title="sampling error")])
    return alt.layer(line, band, floor).properties(width=width, height=220).facet(
        column=alt.Column("layer:N", title=None, sort=_layer_order(wide["layer"])))


def depth_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per series and input layer: the median over training of drift and of the floor;
    ``depth`` = the layer's position (hidden2 = 2, …, out = depth + 1)."""
    d = frame[frame["metric"].isin(["drift", "drift_floor"])]
    med = d.groupby(["method", "lr", "series", "layer", "metric"], as_index=False)[
        "value"].median()
    wide = med.pivot_table(index=["method", "lr", "series", "layer"], columns="metric",
                           values="value").reset_index().dropna(subset=["drift"])
    order = _layer_order(frame["layer"][frame["layer"] != "model"])
    wide["depth"] = wide["layer"].map(lambda n: order.index(n) + 2)
    return wide.sort_values(["series", "depth"]).reset_index(drop=True)


def depth_chart(depth: pd.DataFrame) -> alt.LayerChart:
    """Median drift against the input layer's depth, one line per method and lr; faint
    ticks of the same colour: each run's two-samples floor at that layer."""
    if depth.empty:
        raise ValueError("no drift rows to draw")
    order = _layer_order(depth["layer"])
    enc = _encodings(depth)
    base = alt.Chart(depth).encode(
        x=alt.X("layer:N", sort=order, title="input of layer", axis=alt.Axis(labelAngle=0),
                scale=alt.Scale(padding=0.3)))
    y = alt.Y("drift:Q", scale=alt.Scale(type="log"), title="median drift (W1 / σ₀)",
              axis=_log_axis(np.r_[depth["drift"], depth.get("drift_floor", [])]))
    tip = ["series:N", "layer:N", alt.Tooltip("drift:Q", format=".3g"),
           alt.Tooltip("drift_floor:Q", format=".3g", title="two-samples floor")]
    # drift per layer, one line per method and lr
    line = base.mark_line().encode(y=y, **enc)
    points = base.mark_point(filled=True).encode(y="drift:Q", color=enc["color"], tooltip=tip)
    # each run's floor at the layer (what two different samples differ by)
    floor = base.mark_tick(opacity=0.4, thickness=2, size=16).encode(
        y="drift_floor:Q", color=enc["color"], tooltip=tip)
    return alt.layer(line, points, floor).properties(width=alt.Step(90), height=220)


def smooth_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The landscape's ranges along the gradient per step: metric ``range``, panel
    ``quantity`` = "loss" (max − min of L) or "gradient change" (max − min of
    ‖∇L(w − ηg) − ∇L(w)‖)."""
    m = frame[frame["layer"] == "model"]
    wide = m.pivot_table(index=["method", "lr", "series", "step"], columns="metric",
                         values="value").reset_index()
    parts = []
    for quantity, lo, hi in (("loss", "loss_min", "loss_max"),
                             ("gradient change", "grad_change_min", "grad_change_max")):
        if lo in wide and hi in wide:
            parts.append(wide[["method", "lr", "series", "step"]].assign(
                quantity=quantity, metric="range", value=wide[hi] - wide[lo]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["method", "lr", "series", "step", "quantity", "metric", "value"])


def waiting_message(runs: pd.DataFrame, frame: pd.DataFrame) -> str | None:
    """Why there is nothing to draw yet (None: there is): runs that do not measure (their
    ``ics_interval`` is 0 or not below ``steps``), or the first two measured steps not
    reached yet."""
    if len(frame) and (frame["metric"] == "drift").any():
        return None
    configs = list(runs["config"])
    off = [c for c in configs if int(c.get("ics_interval") or 0) < 1]
    if configs and len(off) == len(configs):
        return ("These runs were trained without the measurement (ics_interval = 0): "
                "launch the preset, or set ics_interval (e.g. 10) in the CLI or API.")
    if configs and all(int(c.get("ics_interval") or 0) >= int(c.get("steps", 0))
                       for c in configs if c not in off):
        return ("These runs measure only at step 0 (ics_interval is not below steps), and "
                "drift needs two measured steps: use an ics_interval below steps.")
    return "Waiting for the first measurements (drift needs two measured steps)…"


# --------------------------------------------------------------------------- readouts
def _per_series(frame: pd.DataFrame, metric: str, layer: str) -> dict[str, float]:
    rows = frame[(frame["metric"] == metric) & (frame["layer"] == layer)]
    med = rows.groupby("series")["value"].median()
    return {s: float(med[s]) for s in _series_order(frame) if s in med}


def drift_readout(frame: pd.DataFrame) -> str:
    """Median drift per k steps at the lowest and the highest input layer, per series;
    at the highest, the largest median sampling error and the range of the runs' median
    two-samples floors."""
    layers = _layer_order(frame["layer"][(frame["metric"] == "drift")])
    if not layers:
        return "No drift measured yet (it needs two measured steps)."
    low, high = layers[0], layers[-1]
    a, b = _per_series(frame, "drift", low), _per_series(frame, "drift", high)
    parts = [f"{s} {a[s]:.3f} → {b[s]:.3f}" for s in b if s in a]
    noise = max(_per_series(frame, "drift_noise", high).values(), default=float("nan"))
    floors = sorted(_per_series(frame, "drift_floor", high).values())
    floor = (f"{floors[0]:.3f}" if floors[-1] - floors[0] < 0.0005 else
             f"{floors[0]:.3f}–{floors[-1]:.3f}")
    ks = sorted(set(frame["every"]))
    k = f"{ks[0]}" if len(ks) == 1 else "k"
    return (f"Median drift per {k} steps, input of {low} → {high} (W1 in σ₀): "
            + "; ".join(parts) + f". At {high}, its sampling error ≤ {noise:.3f}σ₀; two "
            f"different samples of the same step differ by {floor}σ₀.")


def ics_readout(frame: pd.DataFrame) -> str:
    """Santurkar's ICS at the highest layer, median over training, per series."""
    layers = _layer_order(frame["layer"][frame["metric"] == "ics_diff"])
    if not layers:
        return "No ICS measured yet."
    top = layers[-1]
    rel, cos = _per_series(frame, "ics_rel", top), _per_series(frame, "ics_cos", top)
    diff = _per_series(frame, "ics_diff", top)
    parts = [f"{s} ‖G−G′‖ {diff[s]:.3g} ({rel[s]:.2f}‖G‖), cos {cos[s]:.2f}" for s in diff]
    return f"Santurkar's ICS at {top}, median over training: " + "; ".join(parts) + "."


def smooth_readout(smooth: pd.DataFrame) -> str:
    """Median range of the loss and of the gradient change along the gradient, per series."""
    if smooth.empty:
        return "No landscape measured yet."
    med = smooth.groupby(["series", "quantity"])["value"].median()
    parts = []
    for s in _series_order(smooth):
        if (s, "loss") in med and (s, "gradient change") in med:
            parts.append(f"{s} {med[(s, 'loss')]:.3g} / {med[(s, 'gradient change')]:.3g}")
    return ("Along the gradient (0.5–4 × lr), median range of the loss / of the gradient "
            "change: " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------- the lab
BASE = RunConfig(dataset="digits", model="mlp", depth=3, width=100, activation="sigmoid",
                 optimizer="sgd", lr=0.1, batch_size=64, steps=1000, eval_interval=100,
                 record_interval=10, ics_interval=10)

LAB = Lab(
    key="ics", title="Internal covariate shift",
    claim=("Inside a deep network each layer's input keeps moving as the layers below "
           "learn — *internal covariate shift* — and BatchNorm was proposed to hold it "
           "still (Ioffe & Szegedy 2015). Santurkar et al. (2018) measured a version that "
           "matters to the optimizer, how much a layer's gradient changes when the layers "
           "below update, found that BatchNorm does not reduce it, and found instead a "
           "smoother loss landscape."),
    look_for=("Drift: higher layers moving more, and BatchNorm keeping its lines low — "
              "always against each run's faint floor line (two different samples of the "
              "same step differ that much with no drift at all). ICS: whether BatchNorm's ‖G − G′‖ "
              "is smaller at all. Landscape: BatchNorm's loss and gradient ranges along "
              "the gradient staying small at the larger learning rate."),
    presets=(
        Preset("shift", "none vs batch at lr 0.1 and 0.5", BASE,
               {"norm": ("none", "batch"), "lr": (0.1, 0.5)}),
    ),
)
