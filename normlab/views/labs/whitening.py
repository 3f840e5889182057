"""Lab 2, "How far from whitening?": which methods decorrelate, which only standardize.

The claim (LeCun et al. 1998; Ioffe & Szegedy 2015, §2; Huang et al. 2018): whitened
inputs — decorrelated, every feature with the same mean and variance — are the easiest to
learn from, but whitening every layer is costly, so BatchNorm only standardizes each
feature (same mean and variance, correlations kept), Decorrelated BatchNorm (``whiten``)
whitens groups of features, and LayerNorm/RMSNorm standardize each *example*, which
equalizes neither the features' means nor their variances.

The numbers are the opt-in measurements of :mod:`normlab.measure.decorrelation` (the
preset turns them on): over training, at the norm's input x (site ``pre_norm``) and its
standardized output x̂ (site ``xhat``, before the learned g and b); at a few snapshot
steps, correlation matrices and the output covariance's eigenvalues.

* :func:`curve_frame` / :func:`curve_chart` — the four statistics over training;
* :func:`matrix_frame` / :func:`heatmap_chart` — input and output correlation matrices,
  one shared colour scale (−1 … 1), the same feature order in every panel;
* :func:`spectrum_frame` / :func:`spectrum_chart` — the eigenvalues of x̂'s covariance,
  over all snapshot features and within whitening groups (whitened: flat at 1);
* :func:`summary` / :func:`readout` — per method, the last tenth of training, sorted
  into "decorrelates", "only equalizes per-feature mean and variance", "neither" by the
  thresholds :data:`DECORRELATED` and :data:`EQUALIZED`, from the runs shown.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES, MATRIX_SITES
from normlab.training.config import RunConfig
from normlab.views.labs.scaffold import Lab, Preset
from normlab.views.palette import color_scale, method_order

DECORRELATED = 0.05  # mean |r| within groups below this: "decorrelates"
EQUALIZED = 0.05  # mean and variance spread both below this: "equalizes"
FLOOR = 1e-6  # the curves' log axis starts here (values below are drawn at the floor)
SIDES = {"pre_norm": "input x", "xhat": "output x̂", "matrix_in": "input x",
         "matrix_out": "output x̂"}
TITLES = {"corr_offdiag": "mean |correlation|, all pairs",
          "corr_offdiag_group": "mean |correlation|, within groups",
          "mean_spread": "spread of feature means (÷ σ)",
          "var_spread": "spread of feature variances (÷ mean)"}
KINDS = {"eig": "all snapshot features", "geig": "within groups"}


def _with_runs(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Plain columns of tidy metric rows, with each run's method and seed."""
    cfg = {r.id: r.config for r in runs.itertuples()}
    out = pd.DataFrame({
        "run": rows["run"].astype(str).to_numpy(), "step": rows["step"].to_numpy(),
        "layer": rows["layer"].astype(str).to_numpy(), "site": rows["site"].astype(str).to_numpy(),
        "metric": rows["metric"].astype(str).to_numpy(),
        "value": rows["value"].to_numpy(dtype=float)})
    out["method"] = out["run"].map(lambda r: cfg[r]["norm"])
    out["seed"] = out["run"].map(lambda r: int(cfg[r]["seed"]))
    return out


def waiting_message(runs: pd.DataFrame) -> str:
    """What to say when the runs shown have no decorrelation rows (yet)."""
    if not any(c.get("decorrelation") for c in runs["config"]):
        return ("These runs did not measure decorrelation (`decorrelation` and "
                "`corr_snapshots` are off): launch the preset, or turn them on.")
    return "Waiting for the first measurements…"


# ------------------------------------------------------------------ over training

def curve_frame(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The over-training statistics: run, step, layer, site, metric, value, method, seed,
    side ("input x" / "output x̂")."""
    rows = metrics[metrics["site"].isin(CURVE_SITES) & metrics["metric"].isin(CURVE_METRICS)]
    out = _with_runs(rows, runs)
    out["side"] = out["site"].map(SIDES)
    return out


def curve_chart(frame: pd.DataFrame, layer: str) -> alt.VConcatChart:
    """``layer``'s four statistics over training, one panel each (log y from FLOOR):
    colour = method, solid = output x̂, dashed = input x; seeds averaged."""
    rows = frame[frame["layer"] == layer]
    if rows.empty:
        raise ValueError(f"no decorrelation measurements for layer {layer!r}")
    mean = rows.groupby(["method", "side", "metric", "step"], as_index=False)["value"].mean()
    mean["shown"] = mean["value"].clip(lower=FLOOR)
    methods = method_order(mean["method"].unique())
    panels = []
    for metric in CURVE_METRICS:
        # one line per method and side (input dashed)
        panels.append(alt.Chart(mean[mean["metric"] == metric]).mark_line().encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("shown:Q", scale=alt.Scale(type="log", domainMin=FLOOR), title=None),
            color=alt.Color("method:N", scale=color_scale(methods), title="method"),
            strokeDash=alt.StrokeDash("side:N", sort=["output x̂", "input x"], title="where"),
            tooltip=["method:N", "side:N", "step:Q",
                     alt.Tooltip("value:Q", format=".3g", title=TITLES[metric])],
        ).properties(width=300, height=200, title=TITLES[metric]))
    return alt.vconcat(alt.hconcat(*panels[:2]), alt.hconcat(*panels[2:]))


# ------------------------------------------------------------------ snapshots

def snapshot_steps_of(metrics: pd.DataFrame) -> list[int]:
    """The steps with a stored snapshot in some run (from any ``matrix_out`` row)."""
    rows = metrics[metrics["site"].astype(str) == "matrix_out"]
    return sorted(int(s) for s in rows["step"].unique())


def _first_seed(out: pd.DataFrame) -> pd.DataFrame:
    """Each method's rows of its lowest seed (a matrix is one run's, never averaged)."""
    lowest = out.groupby("method")["seed"].transform("min")
    return out[out["seed"] == lowest]


def matrix_frame(metrics: pd.DataFrame, runs: pd.DataFrame, layer: str,
                 step: int) -> pd.DataFrame:
    """The full correlation matrices of ``layer`` at ``step``, input and output, per method
    (lowest seed): method, side, i, j, value — both triangles and the diagonal (1)."""
    rows = metrics[(metrics["layer"].astype(str) == layer) & (metrics["step"] == step)
                   & metrics["site"].isin(MATRIX_SITES)
                   & metrics["metric"].astype(str).str.match(r"r\d+_\d+$")]
    out = _first_seed(_with_runs(rows, runs))
    if out.empty:
        return pd.DataFrame(columns=["method", "side", "i", "j", "value"])
    ij = out["metric"].str.slice(1).str.split("_", expand=True).astype(int)
    upper = pd.DataFrame({"method": out["method"].to_numpy(),
                          "side": out["site"].map(SIDES).to_numpy(),
                          "i": ij[0].to_numpy(), "j": ij[1].to_numpy(),
                          "value": out["value"].to_numpy()})
    lower = upper.rename(columns={"i": "j", "j": "i"})
    n = int(upper[["i", "j"]].to_numpy().max()) + 1
    diag = pd.DataFrame([{"method": m, "side": s, "i": k, "j": k, "value": 1.0}
                         for m, s in upper[["method", "side"]].drop_duplicates().itertuples(
                             index=False) for k in range(n)])
    return pd.concat([upper, lower, diag], ignore_index=True)


def heatmap_chart(frame: pd.DataFrame) -> alt.FacetChart:
    """Correlation heatmaps: a column per method, input above output; one colour scale
    from −1 (blue) to 1 (red) for every panel, features in the same order everywhere."""
    if frame.empty:
        raise ValueError("no correlation matrices to draw")
    n = int(frame["i"].max()) + 1
    ticks = list(range(0, n, 8))
    methods = method_order(frame["method"].unique())
    # one cell per feature pair
    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("j:O", title="feature", axis=alt.Axis(values=ticks, labelAngle=0)),
        y=alt.Y("i:O", title="feature", axis=alt.Axis(values=ticks)),
        color=alt.Color("value:Q", title="correlation",
                        scale=alt.Scale(domain=[-1, 1], scheme="redblue", reverse=True)),
        tooltip=["method:N", "side:N", "i:O", "j:O", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=170, height=170).facet(
        column=alt.Column("method:N", sort=methods, title=None),
        row=alt.Row("side:N", sort=["input x", "output x̂"], title=None))


def spectrum_frame(metrics: pd.DataFrame, runs: pd.DataFrame, layer: str,
                   step: int) -> pd.DataFrame:
    """Eigenvalues of ``layer``'s output covariance at ``step`` per method (lowest seed):
    method, kind, rank (1 = largest), value."""
    rows = metrics[(metrics["layer"].astype(str) == layer) & (metrics["step"] == step)
                   & (metrics["site"].astype(str) == "matrix_out")
                   & metrics["metric"].astype(str).str.match(r"g?eig\d+$")]
    out = _first_seed(_with_runs(rows, runs))
    kind = out["metric"].str.extract(r"^(g?eig)(\d+)$")
    return pd.DataFrame({"method": out["method"].to_numpy(),
                         "kind": kind[0].map(KINDS).to_numpy(),
                         "rank": kind[1].astype(int).to_numpy() + 1,
                         "value": out["value"].to_numpy()})


def spectrum_chart(frame: pd.DataFrame) -> alt.HConcatChart:
    """Eigenvalue against rank (log y), a panel per kind, colour = method; the dashed rule
    at 1 is whitened data."""
    if frame.empty:
        raise ValueError("no eigenvalues to draw")
    methods = method_order(frame["method"].unique())
    shown = frame.assign(shown=frame["value"].clip(lower=FLOOR))
    panels = []
    for kind in KINDS.values():
        rows = shown[shown["kind"] == kind]
        # whitened data: every eigenvalue 1
        ref = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 4],
                                                              color="gray").encode(y="y:Q")
        # one line per method
        lines = alt.Chart(rows).mark_line(point=True).encode(
            x=alt.X("rank:Q", title="rank (1 = largest)",
                    scale=alt.Scale(domain=[1, int(frame["rank"].max())])),
            y=alt.Y("shown:Q", scale=alt.Scale(type="log"), title="eigenvalue"),
            color=alt.Color("method:N", scale=color_scale(methods), title="method"),
            tooltip=["method:N", "rank:Q", alt.Tooltip("value:Q", format=".3g")])
        panels.append(alt.layer(ref, lines).properties(
            width=330, height=240, title=f"Output covariance spectrum, {kind}"))
    return alt.hconcat(*panels).resolve_scale(y="shared")


# ------------------------------------------------------------------ the readout

def summary(frame: pd.DataFrame, share: float = 0.1) -> pd.DataFrame:
    """Per method and side: each statistic averaged over the last ``share`` of the
    recorded steps, the layers and the seeds (a curve frame in, one row per method and
    side out)."""
    rows = []
    for (method, side), g in frame.groupby(["method", "side"], sort=False):
        steps = np.sort(g["step"].unique())
        last = g[g["step"].isin(steps[-max(1, int(len(steps) * share)):])]
        means = last.groupby("metric")["value"].mean()
        rows.append({"method": method, "side": side,
                     **{m: float(means.get(m, np.nan)) for m in CURVE_METRICS}})
    return pd.DataFrame(rows, columns=["method", "side", *CURVE_METRICS])


def classify(row) -> str:
    """"decorrelates", "equalizes" (per-feature mean and variance only) or "neither"."""
    if row["corr_offdiag_group"] < DECORRELATED:
        return "decorrelates"
    if row["mean_spread"] < EQUALIZED and row["var_spread"] < EQUALIZED:
        return "equalizes"
    return "neither"


def readout(frame: pd.DataFrame) -> str:
    """One line from a curve frame: the methods sorted by what their output x̂ is."""
    table = summary(frame)
    out = table[table["side"] == SIDES["xhat"]]
    if out.empty:
        return "No decorrelation measurements yet."
    out = out.assign(kind=out.apply(classify, axis=1))
    order = method_order(out["method"].unique())
    out = out.set_index("method").loc[order]

    def names(kind, fmt) -> str:
        picked = out[out["kind"] == kind]
        return ", ".join(fmt(m, r) for m, r in picked.iterrows()) or "none"

    decor = names("decorrelates", lambda m, r: (
        f"{m} (|r| {r.corr_offdiag_group:.2g} within groups, {r.corr_offdiag:.2g} over all "
        "pairs" + (": within its groups only)" if r.corr_offdiag >= DECORRELATED else ")")))
    equal = names("equalizes", lambda m, r: (
        f"{m} (spreads {max(r.mean_spread, r.var_spread):.1g}, |r| within groups "
        f"{r.corr_offdiag_group:.2f})"))
    neither = names("neither", lambda m, r: (
        f"{m} (mean spread {r.mean_spread:.2f}, variance spread {r.var_spread:.2f}, |r| "
        f"{r.corr_offdiag_group:.2f})"))
    return (f"Output x̂ over the last tenth of training, mean over layers — decorrelates "
            f"(mean |r| within groups < {DECORRELATED:g}): {decor}. Only equalizes "
            f"per-feature mean and variance (both spreads < {EQUALIZED:g}): {equal}. "
            f"Neither per feature: {neither}.")


LAB = Lab(
    key="whitening", title="How far from whitening?",
    claim=("Whitened inputs — decorrelated features with the same mean and variance — are "
           "the easiest to learn from, but whitening every layer is costly. BatchNorm only "
           "standardizes each feature; Decorrelated BatchNorm (`whiten`) also removes the "
           "correlations inside groups of features; LayerNorm and RMSNorm standardize each "
           "example instead, which makes the features neither uncorrelated nor alike."),
    look_for=("In the heatmaps, the output's blocks along the diagonal turning white "
              "(uncorrelated) for whiten only, and only inside its groups. In the spectrum, "
              "a flat line at 1 within groups for whiten. Over training, the spreads of "
              "feature means and variances near 0 for batch and whiten, not for layer or "
              "none. Measured in the training forward pass, on x̂ before the learned g, b."),
    presets=(
        Preset("whitening", "none, batch, layer, whiten",
               RunConfig(dataset="digits", model="mlp", depth=3, width=64,
                         activation="sigmoid", optimizer="sgd", lr=0.1, batch_size=64,
                         steps=1000, eval_interval=100, record_interval=5,
                         decorrelation=True, corr_snapshots=6),
               {"norm": ("none", "batch", "layer", "whiten")}),
    ),
)
