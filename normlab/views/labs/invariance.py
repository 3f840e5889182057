"""Lab 4, re-scaling invariance: Ba, Kiros & Hinton 2016, Table 1, computed live.

The claim: a normalized layer's output ignores some re-scalings and re-centerings of its
weights and of its data, so (for the weight re-scalings) the gradient shrinks as 1/λ when
the weights grow by λ — an automatic, per-layer learning-rate control.

* :func:`invariance_table` — for every method of the registry, one block
  ``layer → norm`` built by :func:`normlab.methods.registry.build_norm` (a bias-free
  ``Linear(12→16)``, or a bias-free 3×3 ``Conv2d`` for channel-only methods, in float64,
  training mode), the six transformations of Ba et al.'s Table 1 applied, and the relative
  change of the block's output ``‖h' − h‖ / ‖h‖`` measured. Below :data:`TOL` the cell is
  "invariant". The paper's published cells (BatchNorm, WeightNorm, LayerNorm:
  :data:`PAPER`) are beside each measurement and disagreements are flagged. The layer has
  no bias because the paper's summed input is ``a = W x`` (the norm has its own b); the
  "weight matrix" is the parameter the layer stores (``v`` for WeightNorm, whose
  ``w = g · v / ‖v‖``).
* :func:`gradient_scaling` — the same blocks with their weight scaled by λ ∈ [0.1, 10],
  and ‖∂L/∂W‖ for the fixed linear readout ``L = ⟨R, h⟩ / B`` (R random, fixed), so only
  the normalization decides how the gradient scales: slope −1 on log–log axes for a
  scale-invariant output (``∂L/∂W(λW) = ∂L/∂W(W) / λ``), 0 for ``none``.
* :func:`weight_frame` / :func:`weight_chart` / :func:`weight_readout` — the training
  consequence: weight norm and effective step ‖Δw‖/‖w‖ (the probes' ``weight_norm`` and
  ``update_ratio``, site ``param``) per layer over training, with and without weight decay.
"""
from __future__ import annotations

import copy

import altair as alt
import numpy as np
import pandas as pd

from normlab.methods.specs import NORM_NAMES, NORMS
from normlab.training.config import RunConfig
from normlab.views.labs.scaffold import Lab, Preset
from normlab.views.palette import color_scale, method_order

TRANSFORMS: dict[str, str] = {  # key -> Ba et al.'s column title
    "w_rescale": "weight matrix re-scaling",
    "w_recenter": "weight matrix re-centering",
    "w_vector": "weight vector re-scaling",
    "x_rescale": "dataset re-scaling",
    "x_recenter": "dataset re-centering",
    "x_case": "single training case re-scaling",
}
# Ba, Kiros & Hinton 2016, "Layer Normalization", Table 1 (True = "Invariant", False = "No").
PAPER: dict[str, tuple[bool, ...]] = {
    "batch": (True, False, True, True, True, False),
    "weight": (True, False, True, False, False, False),
    "layer": (True, True, False, True, False, True),
}
TOL = 1e-4  # relative output change below this counts as invariant (eps gives ~1e-6)
DELTA = 2.5  # the re-scaling factor
BATCH, IN, OUT = 32, 12, 16  # the MLP block's batch and sizes
CONV_BATCH, CONV_IN, CONV_OUT, SIDE = 8, 3, 8, 8  # the CNN block's
OPTIONS = {"num_groups": 4, "group_size": 4}  # groups of 4 features for group and whiten


def _raw_weight(layer) -> "torch.nn.Parameter":  # noqa: F821
    """The weight the layer stores and the optimizer updates (``v`` for WeightNorm)."""
    return layer.v if hasattr(layer, "v") else layer.weight


def block(method: str, seed: int = 0):
    """(layer, norm, x): the method's block on a fixed random batch, float64, training mode.

    MLP block (``Linear(12→16, bias=False)``) where the method applies to MLPs, else a
    CNN block (``Conv2d(3→8, 3×3, no padding, bias=False)`` on 8×8 inputs)."""
    import torch
    from torch import nn

    from normlab.methods.registry import build_norm

    gen = torch.Generator().manual_seed(seed)
    conv = "mlp" not in NORMS[method].models
    if conv:
        layer = nn.Conv2d(CONV_IN, CONV_OUT, 3, padding=0, bias=False)
        x = torch.randn(CONV_BATCH, CONV_IN, SIDE, SIDE, generator=gen, dtype=torch.float64)
        out = CONV_OUT
    else:
        layer = nn.Linear(IN, OUT, bias=False)
        x = torch.randn(BATCH, IN, generator=gen, dtype=torch.float64)
        out = OUT
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen)
                           / np.sqrt(layer.weight[0].numel()))
    layer, norm = build_norm(method, layer.double(), out, conv=conv, options=OPTIONS)
    layer, norm = layer.double().train(), norm.double().train()
    return layer, norm, x


def _transformed(layer, norm, x, key: str, gen):
    """Copies of (layer, norm) and x with transformation ``key`` applied."""
    import torch

    layer, norm, x = copy.deepcopy(layer), copy.deepcopy(norm), x.clone()
    w = _raw_weight(layer)
    with torch.no_grad():
        if key == "w_rescale":
            w.mul_(DELTA)
        elif key == "w_recenter":  # every unit's weights shift by the same vector γ
            w.add_(torch.randn(w.shape[1:], generator=gen, dtype=w.dtype))
        elif key == "w_vector":
            w[0].mul_(DELTA)
        elif key == "x_rescale":
            x = x * DELTA
        elif key == "x_recenter":  # every example shifts by the same vector γ
            x = x + torch.randn(x.shape[1:], generator=gen, dtype=x.dtype)
        elif key == "x_case":
            x[0] = x[0] * DELTA
        else:
            raise ValueError(f"unknown transformation {key!r}; choose one of "
                             f"{', '.join(TRANSFORMS)}")
    return layer, norm, x


def output_changes(method: str, seed: int = 0) -> dict[str, float]:
    """Transformation → ‖h' − h‖ / ‖h‖ of the method's block (:func:`block`)."""
    import torch

    layer, norm, x = block(method, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    with torch.no_grad():
        h = copy.deepcopy(norm)(layer(x))  # a copy: running statistics stay untouched
        for key in TRANSFORMS:
            layer2, norm2, x2 = _transformed(layer, norm, x, key, gen)
            out[key] = float((norm2(layer2(x2)) - h).norm() / h.norm())
    return out


def output_change(method: str, key: str, seed: int = 0) -> float:
    """‖h' − h‖ / ‖h‖ of the method's block under transformation ``key``."""
    if key not in TRANSFORMS:
        raise ValueError(f"unknown transformation {key!r}; choose one of {', '.join(TRANSFORMS)}")
    return output_changes(method, seed)[key]


def invariance_table(methods=NORM_NAMES, seed: int = 0) -> pd.DataFrame:
    """One row per (method, transformation): measured change, invariant (change < TOL),
    the paper's cell (None when not published) and whether they agree."""
    rows = []
    for method in methods:
        published = PAPER.get(method)
        changes = output_changes(method, seed)
        for i, (key, title) in enumerate(TRANSFORMS.items()):
            change = changes[key]
            invariant = bool(change < TOL)
            paper = None if published is None else published[i]
            rows.append({"method": method, "title": NORMS[method].title, "transform": key,
                         "transform_title": title, "change": change, "invariant": invariant,
                         "paper": paper, "agrees": None if paper is None else paper == invariant})
    return pd.DataFrame(rows)


def table_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the page shows it: a row per method, a column per transformation, cells
    like 'Y · 3e-07 · paper Y' ('⚠' marks a measurement that disagrees with the paper)."""
    def cell(r) -> str:
        text = f"{'Y' if r.invariant else 'N'} · {r.change:.0e}"
        if r.paper is not None:
            text += f" · paper {'Y' if r.paper else 'N'}" + ("" if r.agrees else " ⚠")
        return text

    out = table.assign(cell=[cell(r) for r in table.itertuples()])
    wide = out.pivot(index="title", columns="transform_title", values="cell")
    titles = list(dict.fromkeys(out["title"]))
    return wide.loc[titles, list(TRANSFORMS.values())].rename_axis(index="method", columns=None)


def table_readout(table: pd.DataFrame) -> str:
    """One line: how many published cells were reproduced, which disagree."""
    published = table[table["paper"].notna()]
    bad = published[published["agrees"] == False]  # noqa: E712 (a column of bools)
    n_inv = int(table["invariant"].sum())
    head = (f"{len(published) - len(bad)} of {len(published)} published cells reproduced"
            + ("" if bad.empty else " — disagreeing: " + ", ".join(
                f"{r.title} / {r.transform_title} (measured change {r.change:.2g})"
                for r in bad.itertuples())))
    return (f"{head}; {n_inv} of {len(table)} cells invariant over {table['method'].nunique()}"
            f" methods (output change below {TOL:g}).")


# ------------------------------------------------------------------ the gradient's 1/λ
LAMBDAS = tuple(float(v) for v in np.geomspace(0.1, 10, 9))


def gradient_scaling(methods=NORM_NAMES, lambdas=LAMBDAS, seed: int = 0) -> pd.DataFrame:
    """‖∂L/∂W‖ at W scaled by each λ, per method: columns method, lam, grad_norm."""
    import torch

    rows = []
    for method in methods:
        layer, norm, x = block(method, seed)
        with torch.no_grad():
            shape = norm(copy.deepcopy(layer)(x)).shape
        readout = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2),
                              dtype=torch.float64)
        for lam in lambdas:
            lay, nrm = copy.deepcopy(layer), copy.deepcopy(norm)
            w = _raw_weight(lay)
            with torch.no_grad():
                w.mul_(lam)
            loss = (readout * nrm(lay(x))).sum() / shape[0]
            (grad,) = torch.autograd.grad(loss, w)
            rows.append({"method": method, "lam": float(lam), "grad_norm": float(grad.norm())})
    return pd.DataFrame(rows)


def slopes(frame: pd.DataFrame) -> pd.Series:
    """Method → least-squares slope of log ‖∂L/∂W‖ against log λ."""
    out = {}
    for method, g in frame.groupby("method", sort=False):
        ok = g["grad_norm"] > 0
        out[method] = float(np.polyfit(np.log(g["lam"][ok]), np.log(g["grad_norm"][ok]), 1)[0])
    return pd.Series(out)


def gradient_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """‖∂L/∂W‖ against λ on log–log axes, one line per method, and a slope −1 guide."""
    methods = method_order(frame["method"].unique())
    x = alt.X("lam:Q", scale=alt.Scale(type="log"), title="weight scale λ")
    y = alt.Y("grad_norm:Q", scale=alt.Scale(type="log"), title="‖∂L/∂W‖")
    mid = frame.groupby("lam")["grad_norm"].median()
    lam0, g0 = float(np.sqrt(frame["lam"].min() * frame["lam"].max())), float(mid.median())
    guide = pd.DataFrame({"lam": [frame["lam"].min(), frame["lam"].max()]})
    guide["grad_norm"] = g0 * lam0 / guide["lam"]
    # the reference: slope −1, what a scale-invariant output gives
    ref = alt.Chart(guide).mark_line(color="#999999", strokeDash=[6, 4]).encode(x=x, y=y)
    # one line per method
    lines = alt.Chart(frame).mark_line(point=True).encode(
        x=x, y=y, color=alt.Color("method:N", scale=color_scale(methods), title="method",
                                  legend=alt.Legend(orient="right", columns=2)),
        tooltip=["method:N", alt.Tooltip("lam:Q", format=".3g", title="λ"),
                 alt.Tooltip("grad_norm:Q", format=".3g", title="gradient norm ‖∂L/∂W‖")])
    # as wide as its column; the legend in two columns, so 10 methods fit its height
    return alt.layer(ref, lines).properties(
        width="container", height=320, title="Gradient against weight scale (dashed: slope −1)")


def gradient_readout(frame: pd.DataFrame) -> str:
    """One line: the fitted slopes, grouped as ≈ −1, ≈ 0 and other."""
    s = slopes(frame)
    inv = [m for m, v in s.items() if abs(v + 1) < 0.05]
    flat = [m for m, v in s.items() if abs(v) < 0.05]
    other = [f"{m} {v:+.2f}" for m, v in s.items() if m not in inv and m not in flat]
    parts = [f"slope −1 (gradient ∝ 1/λ): {', '.join(inv) or 'none'}",
             f"slope 0: {', '.join(flat) or 'none'}"]
    if other:
        parts.append("other: " + ", ".join(other))
    return "Fitted log–log slopes — " + "; ".join(parts) + "."


# ------------------------------------------------------------- the training consequence
WEIGHT_METRICS = ("weight_norm", "update_ratio")


def weight_frame(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Tidy ``param`` rows of ``WEIGHT_METRICS`` with method and weight decay of each run."""
    rows = metrics[(metrics["site"] == "param") & metrics["metric"].isin(WEIGHT_METRICS)]
    cfg = {r.id: r.config for r in runs.itertuples()}
    out = pd.DataFrame({
        "run": rows["run"].astype(str).to_numpy(), "step": rows["step"].to_numpy(),
        "layer": rows["layer"].astype(str).to_numpy(),
        "metric": rows["metric"].astype(str).to_numpy(),
        "value": rows["value"].to_numpy(dtype=float)})
    out["method"] = out["run"].map(lambda r: cfg[r]["norm"])
    out["weight_decay"] = out["run"].map(lambda r: float(cfg[r]["weight_decay"]))
    out["seed"] = out["run"].map(lambda r: cfg[r]["seed"])
    return out


def weight_chart(frame: pd.DataFrame, layer: str) -> alt.HConcatChart:
    """Weight norm and ‖Δw‖/‖w‖ of ``layer`` over training (log y), colour = method, dash =
    weight decay; seeds averaged."""
    rows = frame[(frame["layer"] == layer) & (frame["value"] > 0)]
    if rows.empty:
        raise ValueError(f"no weight measurements for layer {layer!r}")
    mean = rows.groupby(["method", "weight_decay", "metric", "step"], as_index=False)[
        "value"].mean()
    mean["decay"] = mean["weight_decay"].map(lambda v: f"wd {v:g}")
    methods = method_order(mean["method"].unique())
    panels = []
    for metric, title in (("weight_norm", f"‖w‖ of {layer}"),
                          ("update_ratio", f"effective step ‖Δw‖/‖w‖ of {layer}")):
        # one line per method and weight decay
        panels.append(alt.Chart(mean[mean["metric"] == metric]).mark_line().encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=title),
            color=alt.Color("method:N", scale=color_scale(methods), title="method",
                            legend=alt.Legend(orient="bottom", direction="horizontal",
                                              columns=5)),
            strokeDash=alt.StrokeDash("decay:N", title="weight decay",
                                      legend=alt.Legend(orient="bottom")),
            tooltip=["method:N", alt.Tooltip("decay:N", title="weight decay"), "step:Q",
                     alt.Tooltip("value:Q", format=".3g", title=metric)],
        ).properties(width=300, height=240, title=title))
    # two panels and legends below them: ~760 px, within a 1280 px screen's column
    return alt.hconcat(*panels)


def _ends(g: pd.DataFrame, share: float = 0.1) -> tuple[float, float]:
    """Mean of the first and of the last ``share`` of a series' steps (noise averaged)."""
    steps = np.sort(g["step"].unique())
    k = max(1, int(len(steps) * share))
    first = g[g["step"].isin(steps[:k])]["value"].mean()
    last = g[g["step"].isin(steps[-k:])]["value"].mean()
    return float(first), float(last)


def weight_readout(frame: pd.DataFrame, layer: str) -> str:
    """One line per the data: for each method and weight decay, how ``layer``'s weight norm
    and effective step changed from the first to the last tenth of training."""
    rows = frame[frame["layer"] == layer]
    parts = []
    for (method, wd), g in rows.groupby(["method", "weight_decay"], sort=True):
        w0, w1 = _ends(g[g["metric"] == "weight_norm"])
        r0, r1 = _ends(g[g["metric"] == "update_ratio"])
        parts.append(f"{method} wd {wd:g}: ‖w‖ ×{w1 / w0:.2g}, ‖Δw‖/‖w‖ ×{r1 / r0:.2g}")
    return (f"{layer}, last tenth of training against the first — " + "; ".join(parts) + "."
            if parts else "No weight measurements yet.")


LAB = Lab(
    key="invariance", title="Re-scaling invariance",
    claim=("A normalized layer's output does not change when its weights (or its inputs) "
           "are re-scaled. So when the weights grow by λ the gradient shrinks by 1/λ: the "
           "layer's effective learning rate falls by itself as its weights grow, and weight "
           "decay, which keeps them small, keeps it up."),
    look_for=("In the table, which re-scalings each method ignores (Ba et al. 2016, Table 1; "
              "the paper's cells beside ours). In the gradient plot, lines parallel to the "
              "dashed slope −1. Over training, ‖w‖ rising and ‖Δw‖/‖w‖ falling without weight "
              "decay, both held with it."),
    presets=(
        Preset("weights", "Weight growth with and without weight decay",
               RunConfig(dataset="digits", model="mlp", depth=3, width=100,
                         activation="relu", optimizer="sgd", lr=0.5, batch_size=64,
                         steps=600, eval_interval=100, record_interval=10),
               {"weight_decay": (0.0, 0.005), "norm": ("batch", "layer", "none")}),
    ),
)
