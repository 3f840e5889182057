"""The metric schema: the one contract between the trainer, the run store and the charts.

Every measurement NormLab makes is a *tidy row*::

    run     str    run id (added by the store; absent in a trainer's own batches)
    step    int    optimizer steps taken when measured (0 = before the first update);
                   everything at step s describes the model before update s + 1
    layer   str    "hidden1", "hidden2", ... / "conv1", ...; "out" for the head;
                   "model" for whole-model metrics (loss, accuracy, global gradient norm)
    site    str    where in the layer: "pre_norm" (input of the normalization),
                   "post_norm" (its output), "post_act" (after the activation),
                   "param" (the layer's weight parameters), "train" / "val" (model metrics)
                   ("norm_hat", "affine": the formula's stages, opt-in, see below)
    metric  str    one of the names below
    value   float

Metric names by site:

===============  =========================================================================
site             metrics
===============  =========================================================================
pre_norm,        ``mean``, ``var`` (biased, over every element of the batch's activation),
post_norm,       ``p15``, ``p50``, ``p85`` (percentiles of the probe's sample: every value
post_act         of a tensor of at most ``SAMPLE`` values, else a fixed random sample of
                 that many; the BN paper's Figure 1 view), ``p50_lo``, ``p50_hi`` (the 95%
                 interval of the median's sampling error: the sample's order statistics at
                 ranks m·(0.5 ∓ 1.96·sqrt(0.25·(N−m)/((N−1)·m))) for a sample of m of N
                 values; both equal ``p50`` when every value is used),
                 ``hist_00`` ... ``hist_{HIST_BINS-1}`` (fraction of the sample per bin of
                 equal width from ``hist_lo`` to ``hist_hi``), ``hist_under``,
                 ``hist_over`` (fraction below ``hist_lo`` / at or above ``hist_hi``: counted
                 apart, never in the end bins), ``hist_lo``, ``hist_hi`` (the range: fitted
                 per run and layer at the first recorded step, see :func:`fit_range`; fixed
                 for sigmoid/tanh outputs), ``u{i}_p{q}`` (exact q-th percentile of unit i —
                 feature or channel i — over the batch and positions; units 0, C//2, C−1)
post_act         ``saturated`` (sigmoid/tanh: fraction of values where the activation's
                 derivative is below 5% of its maximum) or ``dead`` (relu/gelu: fraction of
                 units that are <= 0 for every example of the batch)
param            ``grad_norm`` (L2 norm of the gradient of the loss with respect to the
                 layer's weight w), ``weight_norm`` (||w||), ``update_ratio`` (||Δw|| / ||w||
                 of the optimizer step taken from there: the effective learning rate). For
                 weight-space layers w is the *effective* weight the map uses:
                 WeightNorm's g·v/||v|| (so weight_norm = ||g||), CosineNorm's
                 scale·w/||w|| per unit; ``grad_norm`` is then the gradient with respect to
                 that weight, and ``grad_norm_v`` / ``grad_norm_g`` those of the direction
                 (WeightNorm's v, CosineNorm's weight) and magnitude parameters (WeightNorm's
                 g, CosineNorm's learned scale; absent when the scale is fixed)
train            ``loss``, ``acc`` (on the training batch), ``grad_norm`` (global, all params)
val              ``loss``, ``acc`` (whole validation split), every ``eval_interval`` steps
val_train_mode   ``loss``, ``acc`` of the validation split with the model in training mode
                 (batch statistics over batches of ``batch_size``; opt-in:
                 ``RunConfig.eval_train_mode``), at the same steps as ``val``
---------------  -------------------------------------------------------------------------
*Lab 2, opt-in*  (:mod:`normlab.measure.decorrelation`; per normalization layer)
pre_norm, xhat   ``RunConfig.decorrelation``, every recorded step: ``corr_offdiag`` (mean
                 |correlation| over feature pairs), ``corr_offdiag_group`` (over pairs in
                 the same whitening group), ``mean_spread``, ``var_spread`` (spread across
                 features of per-feature means and variances); ``xhat`` is the norm's
                 output before its learned g and b, (y − b) / g
matrix_in,       ``RunConfig.corr_snapshots`` log-spaced steps: ``r{i:02d}_{j:02d}`` (i < j,
matrix_out       the correlation matrix's upper triangle over the first <= 32 features) of
                 the norm's input / of xhat; at ``matrix_out`` also ``eig{k:02d}`` and
                 ``geig{k:02d}`` (eigenvalues of xhat's covariance, all features / pooled
                 per group, largest first)
ics              Lab 3, internal covariate shift (opt-in: ``RunConfig.ics_interval``; every
                 such step; :mod:`normlab.measure.ics` defines each exactly). Layers
                 ``hidden2`` … and ``out``, about the layer's *input*: ``drift`` (per-unit
                 1-Wasserstein distance to the previous measured step, fixed examples, in
                 units of the input's initial spread σ₀), ``drift_noise`` (its sampling
                 error), ``drift_total`` (to the first measured step), ``drift_floor`` (W1
                 between two disjoint halves of the examples at the same step);
                 Santurkar et al.'s ICS: ``ics_diff`` ‖G − G′‖, ``ics_rel`` ‖G − G′‖/‖G‖,
                 ``ics_cos`` cos(G, G′). Layer ``model``: ``loss_min``, ``loss_max``,
                 ``grad_change_min``, ``grad_change_max``, ``beta`` (the landscape along
                 the gradient at 0.5–4 × lr)
norm_hat,        **Stages** (opt-in: ``RunConfig.stages``; :mod:`normlab.measure.stages`), per
affine           layer with a norm module. ``norm_hat`` is x̂ = (x − μ)/σ, the standardized
                 value before g and b (not for ``none``; for ``weight`` v·x/‖v‖, for
                 ``cosine`` cos(w, x)): ``mean``, ``var``, ``p15``, ``p50``, ``p85`` (numpy's linear
                 interpolation; same sample rule as above), ``hist_*`` as above (range
                 fitted at the first recorded step), ``linear`` (the fraction of values in
                 the activation's near-linear region: ``|v| < 1`` for sigmoid/tanh, ``v > 0``
                 for relu/gelu, see :func:`normlab.measure.stages.linear_fraction`),
                 ``mu_mean``, ``mu_std``, ``sigma_mean``, ``sigma_std`` (mean and spread, ÷n,
                 of the μ and σ values the norm used: per feature for batch methods, per
                 example (and group) for layer/group/instance/rms; μ = 0 for rms and the
                 weight-space methods; σ = ‖v‖ per unit for weight; no σ for whiten and
                 cosine). ``post_norm`` gets ``linear`` too (of y, f's input when the norm is
                 before the activation; every layer with a norm module, ``none`` included).
                 ``affine``: ``g_mean``, ``g_std``, ``b_mean``, ``b_std`` (learned g and b
                 across features) at every recorded step, and at every ``eval_interval``-th
                 step, per feature j < ``FEATURE_CAP``: ``f{j}_mean``, ``f{j}_var`` (mean and
                 biased variance of y over the batch and positions), ``f{j}_g``, ``f{j}_b``
===============  =========================================================================

Trainers emit :class:`RecordBatch` objects (a steps x series matrix, cheap to build
without a Python object per value); ``RecordBatch.to_frame()`` gives the tidy rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ["run", "step", "layer", "site", "metric", "value"]
ACT_SITES = ("pre_norm", "post_norm", "post_act")
MODEL_LAYER = "model"
PERCENTILES = (15, 50, 85)
HIST_BINS = 32
HIST_RANGES = {  # runs stored before fitted ranges: the fixed range per site (their end
    # bins also hold the values outside)
    "pre_norm": (-8.0, 8.0),
    "post_norm": (-4.0, 4.0),
    "post_act": (-4.0, 4.0),
}
ACT_HIST_RANGES = {  # post_act range by activation, where it is known
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "relu": (-0.5, 4.0),
    "gelu": (-0.5, 4.0),
}
HIST_METRICS = tuple(f"hist_{i:02d}" for i in range(HIST_BINS))
HIST_EXTRA = ("hist_under", "hist_over", "hist_lo", "hist_hi")  # overflow and the range
MEDIAN_CI = ("p50_lo", "p50_hi")  # 95% sampling interval of the median
UNIT_PERCENTILES = PERCENTILES  # exact percentiles of single units
UNITS = 3  # units per layer with exact percentiles over the batch (unit_picks)
# values one activation site records at a step (limits' storage estimate counts on it)
SITE_VALUES = (2 + len(PERCENTILES) + len(MEDIAN_CI) + len(HIST_METRICS) + len(HIST_EXTRA)
               + UNITS * len(UNIT_PERCENTILES))
# -- Stages (Lab 1 "One formula", opt-in RunConfig.stages; see the table above) ---------
STAGE_SITES = ("norm_hat", "affine")  # x̂ = (x − μ)/σ; the learned g, b and y per feature
HIST_RANGES["norm_hat"] = (-4.0, 4.0)  # only if the first step's values are not finite
FEATURE_CAP = 128  # per-feature values for features 0 .. FEATURE_CAP − 1 of a layer
# values per layer at a recorded step: x̂'s distribution, linear, μ/σ, g/b; + y's linear
STAGE_VALUES = 5 + len(HIST_METRICS) + len(HIST_EXTRA) + 1 + 4 + 4 + 1


def feature_metric(feature: int, kind: str) -> str:
    """Per-feature stage metric: ``f7_mean`` (kind: mean, var, g, b)."""
    return f"f{feature}_{kind}"
# -- end of Stages ------------------------------------------------------------------------

# -- Decorrelation (Lab 2, opt-in; computed by normlab.measure.decorrelation) -------------
# Names and sizes live here, without torch, so validating a config (limits, config.errors)
# does not import torch: the dashboard's Launch stays fast on a cold server.
MATRIX_FEATURES = 32  # features in a stored correlation matrix (the first ones)
MAX_SNAPSHOTS = 12  # corr_snapshots allowed at most
CURVE_SITES = ("pre_norm", "xhat")  # the norm's input, its standardized output
CURVE_METRICS = ("corr_offdiag", "corr_offdiag_group", "mean_spread", "var_spread")
MATRIX_SITES = ("matrix_in", "matrix_out")


def values_per_snapshot(features: int) -> int:
    """Values one layer stores at a snapshot: two upper triangles and two spectra."""
    return features * (features - 1) + 2 * features


# -- ICS (Lab 3, opt-in; measured by normlab.measure.ics) --------------------------------
DRIFT_METRICS = ("drift", "drift_noise", "drift_total", "drift_floor")
GRADIENT_METRICS = ("ics_diff", "ics_rel", "ics_cos")
SMOOTH_METRICS = ("loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta")
ICS_LAYER_VALUES = len(DRIFT_METRICS) + len(GRADIENT_METRICS)  # per measured layer and step

FIT_MARGIN = 0.25  # fit_range widens the first step's span by this much on each side
DEFAULT_METRICS = ("loss", "acc", "grad_norm")  # what the loss/accuracy charts load


def hist_range(site: str, activation: str | None = None) -> tuple[float, float]:
    """The (low, high) histogram range used for ``site`` (and ``activation`` at post_act)."""
    if site == "post_act" and activation in ACT_HIST_RANGES:
        return ACT_HIST_RANGES[activation]
    return HIST_RANGES[site]


def unit_metric(unit: int, q: int) -> str:
    """The metric name of unit ``unit``'s ``q``-th percentile: ``u7_p50``."""
    return f"u{unit}_p{q}"


def unit_picks(units: int) -> list[int]:
    """The fixed units whose exact percentiles are recorded: the first, middle and last."""
    return sorted({0, units // 2, units - 1}) if units >= 1 else []


def fit_range(low: float, high: float, site: str,
              activation: str | None = None) -> tuple[float, float]:
    """The histogram range of a run's layer, from the values (``low`` .. ``high``) of its
    first recorded step: widened by ``FIT_MARGIN`` of the span on each side (room to
    move; ReLU/GELU outputs, never far below 0, get only 5% below), then rounded out so
    that the bin width is a power of two and the edges are multiples of it: edges exact
    in binary, so a value on an edge falls in the bin above it, as numpy's. Sigmoid/tanh
    outputs keep their bounded range."""
    if site == "post_act" and activation in ("sigmoid", "tanh"):
        return ACT_HIST_RANGES[activation]
    if not (np.isfinite(low) and np.isfinite(high)):
        return hist_range(site, activation)
    span = high - low
    if span <= 0:
        span = max(abs(high), 1.0)
    below = 0.05 if site == "post_act" and activation in ("relu", "gelu") else FIT_MARGIN
    lo, hi = low - below * span, high + FIT_MARGIN * span
    width = 2.0 ** np.ceil(np.log2((hi - lo) / HIST_BINS))
    while True:
        start = np.floor(lo / width) * width
        if start + HIST_BINS * width >= hi:
            return float(start), float(start + HIST_BINS * width)
        width *= 2


def hist_edges(site: str, activation: str | None = None) -> np.ndarray:
    """The HIST_BINS + 1 bin edges of ``site``'s histogram (bin i is [edge i, edge i+1))."""
    lo, hi = hist_range(site, activation)
    return np.linspace(lo, hi, HIST_BINS + 1)


@dataclass
class RecordBatch:
    """Measurements of several steps: ``values[i, j]`` is series ``keys[j]`` at ``steps[i]``.

    ``keys`` are (layer, site, metric) triples; NaN marks "not measured at this step"
    (validation metrics exist only every eval interval).
    """

    steps: np.ndarray  # (S,) int64
    keys: list[tuple[str, str, str]]  # K series
    values: np.ndarray  # (S, K) float64

    def __len__(self) -> int:
        return len(self.steps)

    def to_frame(self, run: str | None = None) -> pd.DataFrame:
        """Tidy rows (see module docstring), NaN entries dropped."""
        S, K = self.values.shape
        mask = ~np.isnan(self.values)  # (S, K)
        rows_s, rows_k = np.nonzero(mask)
        layers = np.array([k[0] for k in self.keys], dtype=object)
        sites = np.array([k[1] for k in self.keys], dtype=object)
        metrics = np.array([k[2] for k in self.keys], dtype=object)
        frame = pd.DataFrame(
            {
                "run": run,
                "step": self.steps[rows_s].astype(np.int64),
                "layer": layers[rows_k],
                "site": sites[rows_k],
                "metric": metrics[rows_k],
                "value": self.values[rows_s, rows_k],
            },
            columns=COLUMNS,
        )
        return frame if run is not None else frame.drop(columns="run")

    @staticmethod
    def concat(batches: list["RecordBatch"]) -> "RecordBatch":
        """One batch from several with possibly different key sets (union of keys)."""
        keys: list[tuple[str, str, str]] = []
        index: dict[tuple[str, str, str], int] = {}
        for b in batches:
            for k in b.keys:
                if k not in index:
                    index[k] = len(keys)
                    keys.append(k)
        steps = np.concatenate([b.steps for b in batches]) if batches else np.zeros(0, np.int64)
        values = np.full((len(steps), len(keys)), np.nan)
        row = 0
        for b in batches:
            first = index[b.keys[0]] if b.keys else 0
            if b.keys == keys[first:first + len(b.keys)]:  # a run of columns: a slice
                values[row : row + len(b), first:first + len(b.keys)] = b.values
            else:
                values[row : row + len(b), [index[k] for k in b.keys]] = b.values
            row += len(b)
        return RecordBatch(steps.astype(np.int64), keys, values)
