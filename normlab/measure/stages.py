"""The formula's stages on a live run: ``x → x̂ = (x − μ)/σ → y = g·x̂ + b → f(y)``.

NormLab's norms compute ``y`` in one fused operator, so the standardized value ``x̂`` is
never materialized. :func:`standardize` recomputes it from the norm's input ``x`` with
the μ and σ the method actually uses (readable torch, the :mod:`normlab.methods.reference`
way), together with those μ, σ and the layer's g, b; a test checks ``g·x̂ + b`` against
the module's own output for every method. Which μ and σ (:data:`SOURCES`):

* ``batch`` — per feature over the batch (and positions) in training, the running
  statistics in eval; ``batch_renorm`` — the batch's, corrected toward the running ones:
  ``x̂ = (x − μ_B)/σ_B · r + d`` (so μ = μ_B − d·σ_B/r, σ = σ_B/r, with r, d from the
  running statistics *before* the step's update, which a pre-hook keeps);
* ``layer`` / ``group`` / ``instance`` — per example over its features (and positions) /
  its channel group / each channel; ``rms`` — μ = 0, σ = the root mean square per example;
* ``whiten`` — μ per feature over the batch, σ is a matrix (Σ^(−1/2)): x̂ = (y − b)/g, and
  no per-feature σ is recorded;
* ``none`` (the identity) has no x̂: None. In the weight-space methods the
  normalization is inside the layer (the norm module is the identity), and what plays
  x̂ is recorded: WeightNorm's ``v·x/‖v‖`` (μ = 0, σ = ‖v‖ per unit, from the weights;
  g, b = the layer's g and bias) and CosineNorm's ``cos(w, x)`` (μ = 0, σ = ‖w‖·‖x‖, not
  recorded; g = its scale, b = 0), both recovered from the layer's output. Mean-only
  BatchNorm (``mean_only_bn``) is not covered: None.

:class:`StageProbe` records, at the recorded steps of a run, per layer with a norm
(the sites and metrics are documented in :mod:`normlab.measure.schema`, "Stages"): the
distribution of x̂ (site ``norm_hat``), the summaries of the μ and σ used and of g and b,
the fraction of f's input in its near-linear region (:func:`linear_fraction`) at x̂ and
at y, and at every ``features_every`` steps per-feature mean and variance of y beside
b and g² (the check of "the output has mean b and variance g²"). It is opt-in
(``RunConfig.stages``): forward hooks on the norm modules, so only runs that ask pay.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from normlab.measure.probes import SAMPLE
from normlab.measure.handoff import sample_index as _sample_index
from normlab.measure.schema import (FEATURE_CAP, HIST_BINS, HIST_METRICS, PERCENTILES,
                                    RecordBatch, feature_metric, fit_range, hist_range)
from normlab.measure.sites import find_layers
from normlab.methods import norms, weightnorm, whitening

# Where each method's μ and σ come from, as the lab names them (training mode).
SOURCES: dict[str, tuple[str, str]] = {
    "batch": ("batch mean per feature (eval: running mean)",
              "batch std per feature (eval: running std)"),
    "batch_renorm": ("batch mean, corrected toward the running mean",
                     "batch std, corrected toward the running std"),
    "layer": ("per-example mean over features", "per-example std over features"),
    "group": ("per-example mean per channel group", "per-example std per channel group"),
    "instance": ("per-example mean per channel", "per-example std per channel"),
    "rms": ("0 (no centring)", "per-example root mean square"),
    "whiten": ("batch mean per feature", "Σ^(−1/2) of the batch covariance (a matrix)"),
    "weight": ("0 (x̂ = v·x/‖v‖)", "‖v‖ per unit (weight-derived)"),
    "cosine": ("0 (x̂ = cos(w, x))", "‖w‖·‖x‖ per unit (weights and input)"),
    "none": ("—", "— (no normalization: y = x)"),
}


def linear_fraction(values, activation: str | None) -> float:
    """The share of ``values`` (a tensor or array) in the near-linear region of
    ``activation`` (NaN if unknown).

    sigmoid, tanh: ``|v| < 1`` (there the slope stays above 79% (sigmoid) / 42% (tanh) of
    its value at 0; outside it bends toward saturation). relu, gelu: ``v > 0``: ReLU is
    piecewise linear, so "near-linear" means on its identity piece (GELU is within 0.17 of
    the identity there); a unit whose inputs all lie there computes a linear function.
    """
    v = values.detach().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if activation in ("sigmoid", "tanh"):
        return np.count_nonzero(np.abs(v) < 1) / max(v.size, 1)
    if activation in ("relu", "gelu"):
        return np.count_nonzero(v > 0) / max(v.size, 1)
    return float("nan")


@dataclass
class Standardized:
    """x̂ and what made it: ``y = g·x̂ + b`` (g, b broadcast per channel)."""

    x_hat: Tensor  # shape of x
    mu: Tensor | None  # the μ values used (any shape); None: no centring (μ = 0)
    sigma: Tensor | None  # the σ values used; None: not a per-feature scalar (whitening)
    g: Tensor  # (C,)
    b: Tensor  # (C,)


def _affine(norm: nn.Module, C: int, like: Tensor) -> tuple[Tensor, Tensor]:
    g = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    g = torch.ones(C, dtype=like.dtype) if g is None else g.detach()
    b = torch.zeros(C, dtype=like.dtype) if b is None else b.detach()
    return g, b


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (x.dim() - 2))  # (1, C, 1, ...)


def standardize(norm: nn.Module, x: Tensor, y: Tensor | None = None,
                running: tuple[Tensor, Tensor] | None = None,
                layer: nn.Module | None = None) -> Standardized | None:
    """x̂ of ``norm`` (a NormLab activation-space module) for its input ``x``, with the μ,
    σ, g and b it used; None for a module without one (identity, mean-only BN, others').

    ``y`` (the module's output) is needed for whitening only; ``running`` = (running
    mean, running var) *before* the forward pass, for BatchRenorm in training (default:
    its current buffers, which the forward pass has already updated). ``layer``: the
    weight layer in front of an identity ``norm``; for a weight-space one the layer's
    output ``x`` is already y, and x̂ is y with its g and b taken off (:func:`_weight_space`)."""
    if isinstance(norm, norms.NoNorm) and isinstance(layer, (weightnorm.WeightNorm,
                                                             weightnorm.CosineNorm)):
        return _weight_space(layer, x)
    with torch.no_grad():
        x = x.detach()
        C = x.shape[1]
        g, b = _affine(norm, C, x)
        eps = getattr(norm, "eps", 0.0)
        B = x.shape[0]
        if isinstance(norm, norms.BatchNorm):  # BatchRenorm too
            dims = (0, *range(2, x.dim()))  # B and space
            if not norm.training:
                mu, sigma = norm.running_mean, torch.sqrt(norm.running_var + eps)
                return Standardized((x - _per_channel(mu, x)) / _per_channel(sigma, x),
                                    mu.clone(), sigma, g, b)
            var, mu = torch.var_mean(x, dims, correction=0)  # (C,)
            sigma = torch.sqrt(var + eps)
            if isinstance(norm, norms.BatchRenorm):
                r_mean, r_var = running if running is not None else (norm.running_mean,
                                                                     norm.running_var)
                run_std = torch.sqrt(r_var + eps)
                r = (sigma / run_std).clamp(1.0 / norm.rmax, norm.rmax)
                d = ((mu - r_mean) / run_std).clamp(-norm.dmax, norm.dmax)
                mu, sigma = mu - d * sigma / r, sigma / r  # x̂·r + d = (x − μ')/σ'
            return Standardized((x - _per_channel(mu, x)) / _per_channel(sigma, x),
                                mu, sigma, g, b)
        if isinstance(norm, (norms.LayerNorm, norms.GroupNorm, norms.InstanceNorm)):
            groups = (1 if isinstance(norm, norms.LayerNorm) else
                      C if isinstance(norm, norms.InstanceNorm) else norm.num_groups)
            xg = x.reshape(B, groups, -1)  # (B, G, C/G · positions)
            var, mu = torch.var_mean(xg, -1, keepdim=True, correction=0)  # (B, G, 1)
            sigma = torch.sqrt(var + eps)
            return Standardized(((xg - mu) / sigma).view_as(x), mu.flatten(), sigma.flatten(),
                                g, b)
        if isinstance(norm, norms.RMSNorm):
            flat = x.reshape(B, -1)  # (B, C · positions)
            sigma = torch.sqrt(flat.square().mean(1, keepdim=True) + eps)  # (B, 1)
            return Standardized((flat / sigma).view_as(x), None, sigma.flatten(), g, b)
        if isinstance(norm, whitening.BatchWhitening) and y is not None:
            dims = (0, *range(2, x.dim()))
            x_hat = (y.detach() - _per_channel(b, x)) / _per_channel(g, x)
            return Standardized(x_hat, x.mean(dims), None, g, b)
        return None


def _weight_space(layer: nn.Module, y: Tensor) -> Standardized:
    """What plays x̂ in a weight-space layer, from its output ``y``: WeightNorm's
    y = g·(v·x)/‖v‖ + bias, so x̂ = v·x/‖v‖ = (y − bias)/g, μ = 0, σ = ‖v‖ per unit (from
    the weights); CosineNorm's y = scale·cos(w, x), so x̂ = cos(w, x) = y/scale, μ = 0,
    g = scale, b = 0, σ = ‖w‖·‖x‖ (weights and input; not recorded: None)."""
    with torch.no_grad():
        y = y.detach()
        C = y.shape[1]
        if isinstance(layer, weightnorm.WeightNorm):
            g = layer.g.detach()
            b = layer.bias.detach() if layer.bias is not None else torch.zeros_like(g)
            sigma = layer._unit_norm(layer.v.detach()).flatten()  # (C,)
            x_hat = (y - _per_channel(b, y)) / _per_channel(g, y)
            return Standardized(x_hat, None, sigma, g, b)
        scale = layer.scale.detach().reshape(())
        g = scale.expand(C).clone()
        return Standardized(y / scale, None, None, g, torch.zeros_like(g))


def feature_moments(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per feature (channel) mean and biased variance of ``y`` over the batch and positions."""
    dims = (0, *range(2, y.dim()))
    var, mean = torch.var_mean(y.detach(), dims, correction=0)  # (C,)
    return mean, var


def _summary(values: Tensor | None) -> tuple[float, float]:
    """(mean, std with ÷n) of ``values`` as floats; (0, 0) for None (μ = 0)."""
    if values is None:
        return 0.0, 0.0
    std, mean = torch.std_mean(values.detach().reshape(-1).double(), correction=0)
    return mean.item(), std.item()


def _percentiles(values: np.ndarray, qs) -> list[float]:
    """``numpy.percentile(values, qs)`` (linear interpolation) from one partition."""
    n = values.size
    ranks = [(n - 1) * q / 100 for q in qs]
    kth = sorted({int(np.floor(r)) for r in ranks} | {min(int(np.floor(r)) + 1, n - 1)
                                                       for r in ranks})
    part = np.partition(values, kth)
    out = []
    for r in ranks:
        k = int(np.floor(r))
        lo, hi = part[k], part[min(k + 1, n - 1)]
        out.append(float(lo + (hi - lo) * (r - k)))
    return out


class StageProbe:
    """Records the formula's stages of every norm module of ``model`` (see module doc).

    The protocol mirrors :class:`normlab.measure.probes.Probe`: ``with StageProbe(m) as s:``
    then per step ``s.arm(step)`` before the forward pass and ``s.after_update()`` when
    the step is complete (a step armed but never completed leaves no row), ``s.flush()``
    for the rows so far. Calls with gradients off (an evaluation pass) are not measured.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, features_every: int = 100,
                 sample: int | None = SAMPLE):
        if every < 1 or features_every < 1:
            raise ValueError(f"every ({every}) and features_every ({features_every}) must be "
                             "at least 1")
        self.every, self.features_every, self.sample = every, features_every, sample
        self.groups = [g for g in find_layers(model) if g.norm is not None]
        self._handles: list = []
        self._armed = False
        self._step = 0
        self._next_features = 0
        self._current: dict[tuple[str, str, str], float] = {}
        self._rows: list[tuple[int, dict]] = []
        self._ranges: dict[str, tuple[float, float]] = {}  # per layer: x̂ histogram range
        self._running: dict[int, tuple[Tensor, Tensor]] = {}
        self._seen: set[str] = set()

    def __enter__(self) -> "StageProbe":
        for group in self.groups:
            norm = group.norm
            self._handles.append(norm.register_forward_hook(self._hook(group)))
            if isinstance(norm, norms.BatchRenorm):
                self._handles.append(norm.register_forward_pre_hook(self._keep_running))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._armed = False

    def _keep_running(self, module, inputs) -> None:
        if self._armed and torch.is_grad_enabled():
            self._running[id(module)] = (module.running_mean.clone(), module.running_var.clone())

    def arm(self, step: int) -> bool:
        self._step, self._armed = step, step % self.every == 0
        self._current, self._seen = {}, set()
        return self._armed

    def after_update(self) -> None:
        if not self._armed:
            return
        self._armed = False
        if self._features_now():
            self._next_features = (self._step // self.features_every + 1) * self.features_every
        self._rows.append((self._step, self._current))
        self._current = {}

    def _features_now(self) -> bool:
        return self._step >= self._next_features

    def _hook(self, group):
        def hook(module, inputs, output) -> None:
            if not (self._armed and torch.is_grad_enabled()) or group.name in self._seen:
                return
            self._seen.add(group.name)  # a module called twice: its first call
            x = inputs[0] if isinstance(inputs, tuple) else inputs
            self._measure(group, module, x, output)
        return hook

    def _measure(self, group, norm: nn.Module, x: Tensor, y: Tensor) -> None:
        put, name = self._current, group.name
        with torch.no_grad():
            y = y.detach()
            put[(name, "post_norm", "linear")] = linear_fraction(y, group.activation)
            st = standardize(norm, x, y, self._running.pop(id(norm), None), group.weight)
            if st is None:
                return
            put.update(self._distribution(name, st.x_hat))
            put[(name, "norm_hat", "linear")] = linear_fraction(st.x_hat, group.activation)
            for what, values in (("mu", st.mu), ("sigma", st.sigma)):
                if values is None and what == "sigma":
                    continue
                mean, std = _summary(values)
                put[(name, "norm_hat", f"{what}_mean")] = mean
                put[(name, "norm_hat", f"{what}_std")] = std
            for what, values in (("g", st.g), ("b", st.b)):
                mean, std = _summary(values)
                put[(name, "affine", f"{what}_mean")] = mean
                put[(name, "affine", f"{what}_std")] = std
            if self._features_now():
                mean, var = feature_moments(y)
                n = min(FEATURE_CAP, len(mean))
                cols = {"mean": mean, "var": var, "g": st.g, "b": st.b}
                for kind, v in cols.items():
                    v = v[:n].double().tolist()
                    for j in range(n):
                        put[(name, "affine", feature_metric(j, kind))] = v[j]

    def _distribution(self, name: str, x_hat: Tensor) -> dict:
        """mean, var, percentiles and histogram of x̂ (fitted range per layer, first step).
        One float64 copy in numpy: mean and variance of every value; percentiles and
        histogram of the sample (every value up to ``sample``); bin i is [edge i, edge
        i+1), values below / at or above the range counted apart."""
        every = x_hat.detach().reshape(-1).double().numpy()
        n_all = every.size
        values = every if self.sample is None or n_all <= self.sample else \
            every[_sample_index(n_all, self.sample)]
        values = values[np.isfinite(values)]
        if name not in self._ranges:
            lo, hi = ((float(values.min()), float(values.max())) if values.size
                      else hist_range("norm_hat"))
            self._ranges[name] = fit_range(lo, hi, "norm_hat")
        lo, hi = self._ranges[name]
        out = {(name, "norm_hat", "mean"): float(every.mean()),
               (name, "norm_hat", "var"): float(every.var())}
        if values.size:
            for q, v in zip(PERCENTILES, _percentiles(values, PERCENTILES)):
                out[(name, "norm_hat", f"p{q}")] = float(v)
        n = max(values.size, 1)
        index = np.floor((values - lo) * (HIST_BINS / (hi - lo)))  # power-of-two bins: exact
        inside = index[(index >= 0) & (index < HIST_BINS)].astype(np.int64)
        counts = np.bincount(inside, minlength=HIST_BINS) / n
        out.update(zip(((name, "norm_hat", m) for m in HIST_METRICS), counts.tolist()))
        out[(name, "norm_hat", "hist_under")] = float((index < 0).sum()) / n
        out[(name, "norm_hat", "hist_over")] = float((index >= HIST_BINS).sum()) / n
        out[(name, "norm_hat", "hist_lo")], out[(name, "norm_hat", "hist_hi")] = lo, hi
        return out

    def flush(self) -> RecordBatch | None:
        """The rows recorded since the last flush as one batch (None if there are none)."""
        if not self._rows:
            return None
        keys: dict[tuple[str, str, str], int] = {}
        for _, row in self._rows:
            for k in row:
                keys.setdefault(k, len(keys))
        values = np.full((len(self._rows), len(keys)), np.nan)
        for i, (_, row) in enumerate(self._rows):
            values[i, [keys[k] for k in row]] = list(row.values())
        steps = np.array([s for s, _ in self._rows], dtype=np.int64)
        self._rows = []
        if not keys:
            return None
        return RecordBatch(steps, list(keys), values)
