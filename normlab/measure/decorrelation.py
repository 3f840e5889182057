"""How far a normalization layer's output is from whitened data (Lab 2, opt-in).

Whitened data are decorrelated (identity correlation) and identically distributed (every
feature has the same mean and variance). Per normalization layer this module measures
how close the norm's *input* x and its *standardized output* x̂ come to that:

* every recorded step (``RunConfig.decorrelation``), at sites ``pre_norm`` (x) and
  ``xhat`` (x̂): ``corr_offdiag`` (mean |r_ij| over all feature pairs i < j),
  ``corr_offdiag_group`` (the same over pairs inside consecutive groups of the run's
  whitening group size, ``group_size`` or its auto value, for every method, so ``whiten``
  is measured where it acts), ``mean_spread`` (std over features of the per-feature means,
  over the root mean per-feature variance) and ``var_spread`` (std over features of the
  per-feature variances, over their mean): both 0 for identically distributed features;
* at ``RunConfig.corr_snapshots`` log-spaced steps (:func:`snapshot_steps`): the
  correlation matrices of x (site ``matrix_in``) and x̂ (site ``matrix_out``) over the
  first ``F`` features (:func:`matrix_features`: at most :data:`MATRIX_FEATURES`, whole
  groups), upper triangle only, metric ``r{i:02d}_{j:02d}`` (i < j); and at
  ``matrix_out`` the eigenvalues of x̂'s covariance over those features, descending,
  ``eig{k:02d}``, and of each group's covariance pooled and sorted, ``geig{k:02d}``
  (whitened data: all 1).

x̂ is the norm's output before its learned per-feature g and b, ``(y − b) / g`` (the
module's ``weight`` and ``bias``, when it has them), so it shows what the normalization
enforces, not what the re-scaling later undoes; for ``none`` and the weight-space methods
(whose norm module is the identity) x̂ = y = x. Correlations are unchanged by g and b (up
to the sign of g).

A "feature" is a unit of an MLP layer or a channel of a conv layer; its samples are the
batch's examples (and spatial positions). Statistics use the biased (÷ n) covariance of
the training forward pass (training mode, gradients on): what the norm saw. A feature
with zero variance has no correlation (NaN, not stored; left out of the means).

Storage (bounded): per layer and snapshot, F(F − 1) + 2F values (F = 32: 1,056), at most
:data:`MAX_SNAPSHOTS` snapshots; 8 values per layer and recorded step for the curves.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from normlab.measure.schema import (CURVE_METRICS, CURVE_SITES, MATRIX_FEATURES,  # noqa: F401
                                   MATRIX_SITES, MAX_SNAPSHOTS, RecordBatch,
                                   values_per_snapshot)
#   (the names and sizes live in the schema, without torch: checking a config is cheap)
from normlab.methods.specs import largest_divisor


def corr_metric(i: int, j: int) -> str:
    """The metric name of correlation entry (i, j), i < j: ``r03_17``."""
    return f"r{i:02d}_{j:02d}"


def matrix_features(width: int, group_size: int) -> int:
    """Features in a snapshot: the largest multiple of the group size that is at most
    MATRIX_FEATURES (whole groups), or min(width, MATRIX_FEATURES) if no group fits."""
    whole = (min(width, MATRIX_FEATURES) // group_size) * group_size
    return whole if whole >= 2 else min(width, MATRIX_FEATURES)


def snapshot_steps(steps: int, n: int) -> list[int]:
    """``n`` steps of a run of ``steps`` steps, log-spaced from 0 to the last (steps − 1),
    both included: round(geomspace(1, steps, n)) − 1, repeats dropped (a short run gets
    fewer)."""
    if n <= 0 or steps <= 0:
        return []
    if n == 1:
        return [steps - 1]
    return sorted({int(round(v)) - 1 for v in np.geomspace(1, steps, n)})


# ------------------------------------------------------------------ the statistics

def features_of(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """(samples, features) float64: (B, C) as it is; (B, C, *S) with the channels as
    features and every example and position a sample."""
    x = t.detach().to(torch.float64).cpu().numpy() if isinstance(t, torch.Tensor) else \
        np.asarray(t, dtype=np.float64)
    if x.ndim == 2:
        return x
    return np.moveaxis(x.reshape(x.shape[0], x.shape[1], -1), 1, 2).reshape(-1, x.shape[1])


def covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature means (C,) and the biased covariance (C, C) of samples x (N, C)."""
    mean = x.mean(axis=0)
    xc = x - mean
    return mean, xc.T @ xc / len(x)


def correlation(cov: np.ndarray) -> np.ndarray:
    """The correlation matrix of a covariance: NaN in the rows and columns of a feature
    with zero variance (as ``np.corrcoef``)."""
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    corr[sd == 0, :] = np.nan
    corr[:, sd == 0] = np.nan
    return np.clip(corr, -1.0, 1.0)


@lru_cache(maxsize=64)
def _pairs(features: int, group: int | None) -> np.ndarray:
    """Flat indices of the pairs i < j of a (features × features) matrix (in one group)."""
    i, j = np.triu_indices(features, k=1)
    if group is not None:
        keep = i // group == j // group
        i, j = i[keep], j[keep]
    return i * features + j


def mean_abs_offdiag(corr: np.ndarray, group: int | None = None) -> float:
    """Mean |r_ij| over feature pairs i < j (only pairs in the same consecutive group of
    ``group`` features if given), NaN entries left out; NaN if there is none."""
    values = np.abs(corr.ravel()[_pairs(len(corr), group)])
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def spreads(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """(mean_spread, var_spread): std of the per-feature means over sqrt(mean variance),
    std of the per-feature variances over their mean (NaN when every variance is 0)."""
    scale = float(var.mean())
    if not scale > 0:
        return float("nan"), float("nan")
    return float(mean.std() / np.sqrt(scale)), float(var.std() / scale)


def spectrum(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a covariance, largest first."""
    return np.linalg.eigvalsh(cov)[::-1].copy()


def group_spectrum(cov: np.ndarray, group: int) -> np.ndarray:
    """Eigenvalues of each consecutive group's covariance block, pooled, largest first."""
    C = len(cov)
    blocks = [np.linalg.eigvalsh(cov[a:a + group, a:a + group]) for a in range(0, C, group)]
    return np.sort(np.concatenate(blocks))[::-1].copy()


def curve_values(x: np.ndarray, group: int) -> dict[str, float]:
    """The four over-training statistics of samples x (N, C)."""
    mean, cov = covariance(x)
    corr = correlation(cov)
    mean_spread, var_spread = spreads(mean, np.diag(cov))
    return {"corr_offdiag": mean_abs_offdiag(corr),
            "corr_offdiag_group": mean_abs_offdiag(corr, group),
            "mean_spread": mean_spread, "var_spread": var_spread}


def matrix_values(x: np.ndarray, features: int, group: int | None = None,
                  spectra: bool = False) -> dict[str, float]:
    """A snapshot of samples x (N, C) over its first ``features`` features: the upper
    triangle of the correlation (``r{i}_{j}``) and, if ``spectra``, the covariance's
    eigenvalues (``eig{k}``) and the pooled groups' (``geig{k}``)."""
    _, cov = covariance(x[:, :features])
    corr = correlation(cov)
    i, j = np.triu_indices(features, k=1)
    out = {corr_metric(a, b): float(v) for a, b, v in zip(i, j, corr[i, j])}
    if spectra:
        out.update({f"eig{k:02d}": float(v) for k, v in enumerate(spectrum(cov))})
        g = group if group and features % group == 0 else features
        out.update({f"geig{k:02d}": float(v) for k, v in enumerate(group_spectrum(cov, g))})
    return out


def standardized(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """x̂ = (y − b) / g from a norm's output y, with the module's per-feature ``bias`` b and
    ``weight`` g when it has them (shape (C,)); y itself otherwise."""
    C = y.shape[1]
    shape = (1, C) + (1,) * (y.dim() - 2)
    b, g = getattr(module, "bias", None), getattr(module, "weight", None)
    with torch.no_grad():
        if isinstance(b, torch.Tensor) and b.shape == (C,):
            y = y - b.view(shape)
        if isinstance(g, torch.Tensor) and g.shape == (C,):
            y = y / g.view(shape)
    return y


# ------------------------------------------------------------------ the probe

def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name → normalization module of NormLab's models (``block.norm`` of each block
    in ``model.block_names``); empty for a model without them."""
    return {name: getattr(model, name).norm for name in getattr(model, "block_names", [])
            if isinstance(getattr(getattr(model, name), "norm", None), nn.Module)}


class DecorrelationProbe:
    """Forward hooks on the norm modules that record this module's statistics.

    ``curves_every``: record the curves at steps divisible by it (0: never);
    ``snapshots``: the steps with matrices. Use as a context manager (the hooks are always
    removed); call :meth:`arm` before each training forward pass and :meth:`flush` for the
    rows recorded since the last flush. Only a forward pass in training mode with
    gradients on is measured (not validation, not a ``no_grad`` training-mode pass).
    """

    def __init__(self, model: nn.Module, group_size: int, curves_every: int = 1,
                 snapshots: list[int] | tuple[int, ...] = ()):
        self.modules = norm_modules(model)
        self.group_size = group_size
        self.curves_every = curves_every
        self.snapshots = frozenset(snapshots)
        self._handles: list = []
        self._step, self._curves, self._matrices = 0, False, False
        self._done: set[str] = set()
        self._rows: dict[int, dict[tuple[str, str, str], float]] = {}

    @classmethod
    def for_config(cls, model: nn.Module, cfg) -> "DecorrelationProbe | None":
        """The probe a RunConfig asks for (None when both options are off)."""
        if not cfg.decorrelation and not cfg.corr_snapshots:
            return None
        return cls(model, cfg.norm_options()["group_size"],
                   curves_every=cfg.record_interval if cfg.decorrelation else 0,
                   snapshots=snapshot_steps(cfg.steps, cfg.corr_snapshots))

    def __enter__(self) -> "DecorrelationProbe":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def arm(self, step: int) -> bool:
        """Before the forward pass of ``step``: is anything measured at it?"""
        self._step = step
        self._curves = bool(self.curves_every) and step % self.curves_every == 0
        self._matrices = step in self.snapshots
        self._done = set()
        return self._curves or self._matrices

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if (not (self._curves or self._matrices) or name in self._done
                    or not module.training or not torch.is_grad_enabled()
                    or not inputs or not isinstance(output, torch.Tensor)):
                return
            self._done.add(name)  # the first call of a step only
            self.measure(name, module, inputs[0], output)
        return hook

    def measure(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record layer ``name``'s statistics for input x and output y at the armed step."""
        xin, xhat = features_of(x), features_of(standardized(module, y))
        C = xin.shape[1]
        group = largest_divisor(C, self.group_size)
        row = self._rows.setdefault(self._step, {})
        if self._curves:
            for site, data in zip(CURVE_SITES, (xin, xhat)):
                for metric, value in curve_values(data, group).items():
                    row[(name, site, metric)] = value
        if self._matrices:
            F = matrix_features(C, group)
            for site, data, spectra in (("matrix_in", xin, False), ("matrix_out", xhat, True)):
                for metric, value in matrix_values(data, F, group, spectra).items():
                    row[(name, site, metric)] = value

    def flush(self) -> RecordBatch | None:
        """The rows recorded since the last flush (None if none)."""
        if not self._rows:
            return None
        keys: dict[tuple[str, str, str], int] = {}
        for row in self._rows.values():
            for key in row:
                keys.setdefault(key, len(keys))
        steps = sorted(self._rows)
        values = np.full((len(steps), len(keys)), np.nan)
        for s, step in enumerate(steps):
            for key, value in self._rows[step].items():
                values[s, keys[key]] = value
        self._rows = {}
        return RecordBatch(np.asarray(steps, dtype=np.int64), list(keys), values)
