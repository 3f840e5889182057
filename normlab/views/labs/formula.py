"""Lab 1, "One formula": ``h = f(g·(x − μ)/σ + b)`` stage by stage, on live runs.

The claim: every method standardizes (x̂ = (x − μ)/σ, with μ and σ from the batch, the
example, running averages or the weights) and then re-scales and re-shifts with learned
g and b, so the layer keeps its expressive power: a sigmoid's input need not stay in
its near-linear region around 0. The runs record the stages with the opt-in
``RunConfig.stages`` (:mod:`normlab.measure.stages`).

* :func:`stage_frame` / :func:`stage_chart` — the four distributions x → x̂ → y → f(y) of
  one layer at one step, one panel per stage, one outline per method; :func:`source_table`
  — the μ and σ each method used (named, and their mean ± spread at that step).
* :func:`affine_frame` / :func:`affine_chart` — g and b over training (mean across
  features, ± their spread).
* :func:`feature_frame` / :func:`feature_chart` / :func:`feature_readout` — per feature,
  the measured mean and variance of y against b and g², with the identity line:
  "the output has mean b and variance g²" holds per feature for BatchNorm in training,
  not for LayerNorm.
* :func:`linear_frame` / :func:`linear_chart` / :func:`linear_readout` — the share of f's
  input in its near-linear region at x̂ and at y over training.
"""
from __future__ import annotations

import re

import altair as alt
import numpy as np
import pandas as pd

from normlab.measure.schema import HIST_METRICS
from normlab.measure.stages import SOURCES
from normlab.training.config import RunConfig
from normlab.views.charts import style
from normlab.views.frames import hist_step_frame, run_methods, with_methods
from normlab.views.labs.scaffold import Lab, Preset
from normlab.views.palette import color_scale, method_order

STAGES = (("x", "pre_norm"), ("x̂ = (x − μ)/σ", "norm_hat"), ("y = g·x̂ + b", "post_norm"),
          ("f(y)", "post_act"))
STAGE_METRICS = HIST_METRICS + ("hist_lo", "hist_hi")
HOLDS = (1e-3, 0.01)  # "holds per feature": |mean(y) − b| ≤ 1e-3 and |var(y)/g² − 1| ≤ 1%
_FEATURE = re.compile(r"f(\d+)_(mean|var|g|b)$")


def _methods(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    return with_methods(metrics, runs, label="method")


def nearest_step(steps, step: int) -> int | None:
    """The step of ``steps`` nearest ``step`` (ties: the earlier); None if there are none."""
    steps = np.sort(np.asarray(list(steps), dtype=np.int64))
    if not len(steps):
        return None
    return int(steps[np.argmin(np.abs(steps - step))])


# ----------------------------------------------------------------- the four stages
def stage_frame(metrics: pd.DataFrame, runs: pd.DataFrame, layer: str, step: int,
                activation: str | None = None) -> pd.DataFrame:
    """Histograms of ``layer`` at the step nearest ``step`` for the four stages: columns
    stage, site, method, label, layer, step, bin, lo, hi, fraction (seed-averaged)."""
    df = _methods(metrics[metrics["layer"] == layer], runs)
    parts = []
    for stage, site in STAGES:
        h = hist_step_frame(df, site, step, activation=activation if site == "post_act" else None)
        parts.append(h.assign(stage=stage, site=site))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return out


def stage_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """One panel per stage (its own x axis, the fraction's axis shared), one step-outline
    per method; a stage a method does not have (x̂ of ``none``) is simply absent."""
    if frame.empty:
        raise ValueError("no stage histograms to draw (were the runs made with stages=True?)")
    methods = method_order(frame["method"].unique())
    # per stage, only the bins from the first to the last one holding values (any method)
    held = frame[frame["fraction"] > 0].groupby("stage")["bin"].agg(["min", "max"])
    span = frame["stage"].map(held["min"]).fillna(0), frame["stage"].map(held["max"]).fillna(-1)
    frame = frame[(frame["bin"] >= span[0]) & (frame["bin"] <= span[1])]
    last = frame.sort_values("bin").groupby(["stage", "method"], sort=False).tail(1)
    data = pd.concat([frame.assign(x=frame["lo"]), last.assign(x=last["hi"])],
                     ignore_index=True)
    top = float(data["fraction"].max()) or 1.0
    panels = []
    for stage, _ in STAGES:
        rows = data[data["stage"] == stage]
        # the histogram outline of each method at this stage
        panels.append(alt.Chart(rows).mark_line(interpolate="step-after", strokeWidth=2).encode(
            x=alt.X("x:Q", title=stage),
            y=alt.Y("fraction:Q", title="fraction of values", scale=alt.Scale(domain=[0, top])),
            color=alt.Color("method:N", scale=color_scale(methods), sort=methods,
                            title="method", legend=alt.Legend(orient="top")),
            tooltip=["method:N", "step:Q", alt.Tooltip("lo:Q", format=".3g", title="from"),
                     alt.Tooltip("hi:Q", format=".3g", title="to"),
                     alt.Tooltip("fraction:Q", format=".3g")],
        ).properties(width=185, height=170, title=stage))
    return style(alt.hconcat(*panels), None)


def source_table(metrics: pd.DataFrame, runs: pd.DataFrame, layer: str, step: int
                 ) -> pd.DataFrame:
    """Per method: where its μ and σ come from (:data:`normlab.measure.stages.SOURCES`)
    and, at the recorded step nearest ``step``, their mean ± spread over the values used."""
    df = _methods(metrics[(metrics["layer"] == layer) & (metrics["site"] == "norm_hat")
                          & metrics["metric"].isin(["mu_mean", "mu_std", "sigma_mean",
                                                    "sigma_std"])], runs)
    rows = []
    for method in method_order(run_methods(runs)):
        mu_from, sigma_from = SOURCES.get(method, ("—", "—"))
        got = df[df["method"] == method]
        at = nearest_step(got["step"].unique(), step)
        vals = (got[got["step"] == at].groupby("metric")["value"].mean() if at is not None
                else pd.Series(dtype=float))

        def pm(what: str) -> str:
            if f"{what}_mean" not in vals:
                return "—"
            return f"{vals[f'{what}_mean']:.3g} ± {vals.get(f'{what}_std', np.nan):.2g}"

        rows.append({"method": method, "μ from": mu_from, "μ (mean ± spread)": pm("mu"),
                     "σ from": sigma_from, "σ (mean ± spread)": pm("sigma"),
                     "step": "—" if at is None else at})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- g and b over training
def affine_frame(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """g and b summaries over training: method, layer, step, param (g, b), mean, std
    (seed-averaged)."""
    rows = metrics[(metrics["site"] == "affine")
                   & metrics["metric"].isin(["g_mean", "g_std", "b_mean", "b_std"])]
    cols = ["method", "layer", "step", "param", "mean", "std"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    df = _methods(rows, runs)
    df = df.assign(param=df["metric"].str[0], stat=df["metric"].str[2:])
    wide = (df.groupby(["method", "layer", "step", "param", "stat"], observed=True)["value"]
            .mean().unstack("stat").reset_index())
    return wide.reindex(columns=cols)


def affine_chart(frame: pd.DataFrame, layer: str) -> alt.HConcatChart:
    """g and b of ``layer`` over training: mean across features (line) ± their spread
    (band), colour = method."""
    rows = frame[frame["layer"] == layer].assign(
        lo=lambda d: d["mean"] - d["std"], hi=lambda d: d["mean"] + d["std"])
    if rows.empty:
        raise ValueError(f"no g, b measurements for layer {layer!r}")
    methods = method_order(rows["method"].unique())
    color = alt.Color("method:N", scale=color_scale(methods), sort=methods, title="method")
    panels = []
    for param, title in (("g", f"g of {layer} (mean ± spread over features)"),
                         ("b", f"b of {layer} (mean ± spread over features)")):
        base = alt.Chart(rows[rows["param"] == param]).encode(
            x=alt.X("step:Q", title="step"), color=color)
        # the spread across features
        band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=param), y2="hi:Q")
        # the mean across features
        line = base.mark_line().encode(
            y="mean:Q", tooltip=["method:N", "step:Q", alt.Tooltip("mean:Q", format=".3g"),
                                 alt.Tooltip("std:Q", format=".3g", title="spread")])
        panels.append((band + line).properties(width=360, height=220, title=title))
    return style(alt.hconcat(*panels), None)


# ------------------------------------------------------- "mean b and variance g²", per feature
def feature_frame(metrics: pd.DataFrame, runs: pd.DataFrame, layer: str, step: int
                  ) -> pd.DataFrame:
    """Per method and feature of ``layer``, at the snapshot step nearest ``step``: the
    measured mean and variance of y, b and g² (first seed). Columns: method, step,
    feature, mean, var, b, g2."""
    cols = ["method", "step", "feature", "mean", "var", "b", "g2"]
    rows = metrics[(metrics["layer"] == layer) & (metrics["site"] == "affine")]
    parts = rows["metric"].astype(str).str.extract(_FEATURE)
    rows = rows[parts[0].notna().to_numpy()]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    df = _methods(rows, runs)
    df = df[df["seed"] == df.groupby("method")["seed"].transform("min")]
    out = []
    for method, g in df.groupby("method", sort=False):
        at = nearest_step(g["step"].unique(), step)
        g = g[g["step"] == at]
        got = g["metric"].astype(str).str.extract(_FEATURE)
        wide = (g.assign(feature=got[0].astype(int).to_numpy(), kind=got[1].to_numpy())
                .pivot_table(index="feature", columns="kind", values="value").reset_index())
        out.append(wide.assign(method=method, step=at, g2=wide["g"] ** 2))
    return pd.concat(out, ignore_index=True).reindex(columns=cols)


def feature_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """Two scatters, one point per feature and method: mean of y against b, variance of
    y against g², each with the identity line (dashed)."""
    if frame.empty:
        raise ValueError("no per-feature measurements to draw")
    methods = method_order(frame["method"].unique())
    color = alt.Color("method:N", scale=color_scale(methods), sort=methods, title="method")
    panels = []
    for x, y, title in (("b", "mean", "mean of y vs b"), ("g2", "var", "variance of y vs g²")):
        lo = float(min(frame[x].min(), frame[y].min()))
        hi = float(max(frame[x].max(), frame[y].max()))
        # the identity: where every point lies if the statement holds per feature
        ident = alt.Chart(pd.DataFrame({"v": [lo, hi]})).mark_line(
            color="#444444", strokeDash=[5, 4]).encode(x="v:Q", y="v:Q")
        # one point per feature
        dots = alt.Chart(frame).mark_point(filled=True, size=40, opacity=0.75).encode(
            x=alt.X(f"{x}:Q", title="b" if x == "b" else "g²"),
            y=alt.Y(f"{y}:Q", title=f"measured {'mean' if y == 'mean' else 'variance'} of y"),
            color=color, tooltip=["method:N", "feature:Q", "step:Q",
                                  alt.Tooltip(f"{x}:Q", format=".4g"),
                                  alt.Tooltip(f"{y}:Q", format=".4g")])
        panels.append((ident + dots).properties(width=330, height=300, title=title))
    return style(alt.hconcat(*panels), None)


def feature_deviations(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method: the largest |mean(y) − b| and |var(y)/g² − 1| over the features, and
    whether the statement holds per feature (within :data:`HOLDS`)."""
    rows = []
    for method in method_order(frame["method"].unique()):
        g = frame[frame["method"] == method]
        dm = float(np.abs(g["mean"] - g["b"]).max())
        dv = float(np.abs(g["var"] / g["g2"] - 1).max())
        rows.append({"method": method, "mean_dev": dm, "var_dev": dv,
                     "holds": dm <= HOLDS[0] and dv <= HOLDS[1], "step": int(g["step"].iloc[0])})
    return pd.DataFrame(rows)


def feature_readout(frame: pd.DataFrame, layer: str) -> str:
    """One line from the measured per-feature deviations."""
    if frame.empty:
        return "No per-feature measurements yet."
    dev = feature_deviations(frame)
    parts = [f"{r.method}: mean(y) − b up to {r.mean_dev:.2g}, var(y) off g² by up to "
             f"{r.var_dev:.1%}" for r in dev.itertuples()]
    yes = [r.method for r in dev.itertuples() if r.holds]
    no = [r.method for r in dev.itertuples() if not r.holds]
    verdict = (f"it holds per feature for {', '.join(yes)}" + (f", not for {', '.join(no)}"
                                                                if no else "")
               if yes else f"it holds per feature for none of {', '.join(no)}")
    return (f"{layer} at step {dev['step'].iloc[0]}, over its features — " + "; ".join(parts)
            + f": {verdict}.")


# ------------------------------------------------------------- the near-linear region
def linear_frame(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The near-linear share over training: method, layer, step, at ("x̂" or "y"), value
    (seed-averaged)."""
    rows = metrics[(metrics["metric"] == "linear")
                   & metrics["site"].isin(["norm_hat", "post_norm"])]
    cols = ["method", "layer", "step", "at", "value"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    df = _methods(rows, runs)
    df = df.assign(at=np.where(df["site"].astype(str) == "norm_hat", "x̂", "y"))
    return (df.groupby(["method", "layer", "step", "at"], observed=True)["value"].mean()
            .reset_index().reindex(columns=cols))


def linear_chart(frame: pd.DataFrame, layer: str) -> alt.Chart:
    """Share of f's input in its near-linear region over training, at x̂ (dashed) and at
    y (solid), colour = method."""
    rows = frame[frame["layer"] == layer]
    if rows.empty:
        raise ValueError(f"no near-linear measurements for layer {layer!r}")
    methods = method_order(rows["method"].unique())
    # one line per method and stage
    chart = alt.Chart(rows).mark_line().encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", title="share near-linear", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("method:N", scale=color_scale(methods), sort=methods, title="method"),
        strokeDash=alt.StrokeDash("at:N", sort=["y", "x̂"], title="at"),
        tooltip=["method:N", "at:N", "step:Q", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=620, height=260)
    return style(chart, f"f's input in its near-linear region, {layer}")


def linear_readout(frame: pd.DataFrame, layer: str, share: float = 0.1) -> str:
    """Per method, the near-linear share of ``layer`` at x̂ and at y, averaged over the
    last ``share`` of the recorded steps (and at the first step, for the change)."""
    rows = frame[frame["layer"] == layer]
    if rows.empty:
        return "No near-linear measurements yet."
    steps = np.sort(rows["step"].unique())
    tail = steps[-max(1, int(len(steps) * share)):]
    parts = []
    for method in method_order(rows["method"].unique()):
        g = rows[(rows["method"] == method) & rows["step"].isin(tail)]
        y = g[g["at"] == "y"]["value"].mean()
        xh = g[g["at"] == "x̂"]["value"].mean()
        parts.append(f"{method} {y:.0%} at y (no x̂)" if np.isnan(xh)
                     else f"{method} {xh:.0%} at x̂ → {y:.0%} at y")
    return (f"{layer}, last tenth of training (steps {int(tail[0])}–{int(tail[-1])}): share "
            "of f's input in its near-linear region — " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------- the lab
def load(store, cid: str, runs: pd.DataFrame, layer: str | None = None,
         step: int | None = None) -> dict[str, pd.DataFrame]:
    """What the page draws, read from the store: ``linear`` and ``affine`` summaries over
    training, and — for ``layer`` at ``step`` — the stage histograms, μ/σ summaries and
    the per-feature snapshot nearest it."""
    ids = list(runs["id"])
    out = {"summary": store.metrics(ids, metrics=["linear", "g_mean", "g_std", "b_mean",
                                                  "b_std"],
                                    sites=["norm_hat", "post_norm", "affine"])}
    if layer is not None and step is not None:
        out["stages"] = store.metrics(ids, layers=[layer], steps=(step, step),
                                      sites=[s for _, s in STAGES],
                                      metrics=list(STAGE_METRICS) + ["mu_mean", "mu_std",
                                                                     "sigma_mean", "sigma_std"])
        out["features"] = store.metrics(ids, layers=[layer], sites=["affine"])
    return out


PRESET_BASE = RunConfig(dataset="digits", model="mlp", depth=3, width=100,
                        activation="sigmoid", optimizer="sgd", lr=0.1, batch_size=64,
                        steps=1000, eval_interval=100, record_interval=5, stages=True)

LAB = Lab(
    key="one_formula", title="One formula",
    claim=("Every method here computes h = f(g·(x − μ)/σ + b): it standardizes x with some "
           "μ and σ (of the batch, of the example, running averages, or of the weights), "
           "then re-scales and re-shifts it with learned g and b. Standardizing alone would "
           "hold a sigmoid's input near 0, where it is almost linear; g and b let the layer "
           "move it back out, so the network keeps its non-linearity."),
    look_for=("The four stages side by side: x̂ is standardized whatever x was, y is x̂ "
              "moved by g and b. Per feature, BatchNorm's output has mean b and variance g² "
              "(its points sit on the identity line), LayerNorm's does not. Where the "
              "near-linear share at y falls below the one at x̂, g and b have moved f's "
              "input out of its linear region."),
    presets=(Preset("sigmoid", "digits, MLP 3×100 sigmoid: none, batch, layer", PRESET_BASE,
                    {"norm": ("none", "batch", "layer")}),),
)
