"""Probes: per-layer activation, gradient and weight statistics of any ``nn.Module``.

Modelled on fastai's ``callback/hook.py`` (``ActivationStats``): hooks live in a context
manager that always removes them, and store scalar summaries and small histograms, never
raw activations. The metric names and sites are defined once, in :mod:`normlab.schema`.

How layers are found (works on a user's own model too): walking ``named_modules()`` in
order, every weight layer (Linear, Conv1d/2d, or a weight-space wrapper) opens a layer; the
first normalization module after it gives the ``pre_norm`` (its input) and ``post_norm``
(its output) sites and the first activation module gives ``post_act``. A layer without a
norm module records the weight layer's output as ``pre_norm``. A layer is named after the
block holding it when that block holds only one weight layer (``hidden1``), else after
the weight layer itself (``0``, ``features.3``).

Cost: a recorded step stacks each same-sized group of captured activations into one
matrix and reduces it with a handful of ops (sums for mean/var, one foreach norm for all
gradients); percentiles and histograms are computed from a fixed random sample of at most
``sample`` positions per activation tensor (default 1,021, so the 15/50/85th
percentiles fall exactly on sample points; ``sample=None`` uses every
value), mean/var/saturation from all values. Each recorded step becomes one float64 row;
:meth:`Probe.flush` turns the rows into one :class:`~normlab.schema.RecordBatch`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from normlab import norms, weightnorm, whitening
from normlab.schema import HIST_BINS, HIST_METRICS, PERCENTILES, RecordBatch, hist_edges

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, weightnorm.WeightNorm,
                weightnorm.CosineNorm)
NORM_TYPES = (norms.NoNorm, norms.BatchNorm, norms.LayerNorm, norms.InstanceNorm,
              norms.GroupNorm, norms.RMSNorm, norms.BatchRenorm, whitening.BatchWhitening,
              weightnorm.MeanOnlyBatchNorm, nn.modules.batchnorm._NormBase, nn.LayerNorm,
              nn.GroupNorm, nn.RMSNorm)
ACT_TYPES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.GELU: "gelu",
             nn.LeakyReLU: "relu", nn.ELU: "relu", nn.SiLU: "gelu"}
SATURATED_THRESHOLD = 0.05  # "saturated": derivative below 5% of the activation's maximum
# sigmoid'(x) = y(1-y) < 5% of 1/4  <=>  y outside [a, 1-a]; tanh' = 1 - y² < 5%  <=>  |y| > b
_SIG_A = (1 - (1 - SATURATED_THRESHOLD) ** 0.5) / 2
_SATURATION_BOUNDS = {"sigmoid": (_SIG_A, 1 - _SIG_A),
                      "tanh": (-(1 - SATURATED_THRESHOLD) ** 0.5, (1 - SATURATED_THRESHOLD) ** 0.5)}
_ACT_STATS = ("mean", "var") + tuple(f"p{q}" for q in PERCENTILES) + HIST_METRICS


@dataclass
class LayerSites:
    """What the probe found for one layer."""

    name: str
    weight: nn.Module
    norm: nn.Module | None = None
    act: nn.Module | None = None
    activation: str | None = None  # "sigmoid", ... when the activation module is known
    params: list[nn.Parameter] = field(default_factory=list)  # weight params (no biases)


def find_layers(model: nn.Module) -> list[LayerSites]:
    """The layers of ``model`` in forward-registration order (see the module docstring)."""
    named = list(model.named_modules())
    weight_names = [n for n, m in named if isinstance(m, WEIGHT_TYPES)]
    layers: list[LayerSites] = []
    inside: tuple[str, ...] = ()
    for name, module in named:
        if inside and any(name.startswith(p + ".") for p in inside):
            continue  # a wrapped layer's inner modules belong to the wrapper
        if isinstance(module, WEIGHT_TYPES):
            inside = inside + (name,)
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            siblings = [w for w in weight_names if parent and w.startswith(parent + ".")]
            label = parent if parent and len(siblings) == 1 else (name or "model")
            params = [p for n, p in module.named_parameters()
                      if p.requires_grad and not n.endswith(("bias", "scale"))]
            layers.append(LayerSites(label, module, params=params))
        elif layers and isinstance(module, NORM_TYPES) and layers[-1].norm is None:
            layers[-1].norm = module
        elif layers and type(module) in ACT_TYPES and layers[-1].act is None:
            layers[-1].act = module
            layers[-1].activation = ACT_TYPES[type(module)]
    return layers


def _sample_index(n: int, size: int) -> torch.Tensor:
    """A fixed random subset of ``size`` positions out of ``n`` (own generator: the training
    RNG is never touched, so probing does not change a run)."""
    gen = torch.Generator().manual_seed(n)
    return torch.randperm(n, generator=gen)[:size].sort().values


class Probe:
    """Context manager recording per-layer statistics of ``model`` every ``every`` steps.

    Use from a training loop::

        with Probe(model, every=1) as probe:
            for step in range(steps):
                probe.arm(step)                 # capture activations if step is recorded
                loss = loss_fn(model(x), y)
                loss.backward()
                probe.after_backward()          # gradient norms
                probe.before_update()           # snapshot weights
                opt.step()
                probe.after_update(extra={...}) # update ratio, weight norms, the row
            batch = probe.flush()               # RecordBatch of the recorded steps
    """

    def __init__(self, model: nn.Module, *, every: int = 1, sample: int | None = 1021,
                 activation_sites: bool = True):
        if every < 1:
            raise ValueError(f"every must be at least 1 (got {every})")
        self.model, self.every, self.sample = model, every, sample
        self.activation_sites = activation_sites
        self.layers = find_layers(model)
        if not self.layers:
            raise ValueError("found no Linear/Conv layer to probe in "
                             f"{type(model).__name__}")
        self._handles: list = []
        self._slots: list[tuple[str, str, str | None]] = []  # (layer, site, activation)
        self._captured: list[torch.Tensor | None] = []
        self._armed = False
        self._step = -1
        self._rows: list[np.ndarray] = []
        self._steps: list[int] = []
        self._extra_keys: list[tuple[str, str, str]] | None = None
        self._samples: dict[int, torch.Tensor] = {}
        self._all_params = [p for p in model.parameters() if p.requires_grad]
        self._layer_params = [p for layer in self.layers for p in layer.params]
        self._param_owner = np.repeat(np.arange(len(self.layers)),
                                      [len(layer.params) for layer in self.layers])
        self._layer_in_all = np.array([next(j for j, q in enumerate(self._all_params) if q is p)
                                       for p in self._layer_params], dtype=np.int64)
        self._snapshot: list[torch.Tensor] | None = None
        self._grad_norms: torch.Tensor | None = None
        self._edges: list[np.ndarray] = []  # per slot: histogram bin edges
        self._sat_slots: list[int] = []  # slots at post_act with a known activation

    # -- hooks -------------------------------------------------------------------------
    def __enter__(self) -> "Probe":
        if not self.activation_sites:
            return self
        for layer in self.layers:
            if layer.norm is None and layer.act is None:
                continue  # the head: parameter metrics only
            if layer.norm is not None:
                pre = self._add_slot(layer, "pre_norm")
                post = self._add_slot(layer, "post_norm")
                self._handles.append(layer.norm.register_forward_hook(self._io_hook(pre, post)))
            else:
                pre = self._add_slot(layer, "pre_norm")
                self._handles.append(layer.weight.register_forward_hook(self._io_hook(None, pre)))
            if layer.act is not None:
                act = self._add_slot(layer, "post_act")
                self._handles.append(layer.act.register_forward_hook(self._io_hook(None, act)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._captured = [None] * len(self._captured)

    def _add_slot(self, layer: LayerSites, site: str) -> int:
        activation = layer.activation if site == "post_act" else None
        self._slots.append((layer.name, site, activation))
        self._edges.append(hist_edges(site, activation))
        if activation is not None:
            self._sat_slots.append(len(self._slots) - 1)
        self._captured.append(None)
        return len(self._slots) - 1

    def _io_hook(self, in_slot: int | None, out_slot: int):
        def hook(module, inputs, output):
            if self._armed:
                if in_slot is not None:
                    self._captured[in_slot] = inputs[0].detach()
                self._captured[out_slot] = output.detach()
        return hook

    # -- the training-loop protocol ----------------------------------------------------
    def records(self, step: int) -> bool:
        """Whether ``step`` is a recorded step."""
        return step % self.every == 0

    def arm(self, step: int) -> bool:
        """Call before the forward pass of ``step``; returns whether it is recorded."""
        self._step = step
        self._armed = self.records(step)
        return self._armed

    def after_backward(self) -> None:
        """Gradient norms of every parameter (per-layer and global norms come from them)."""
        if not self._armed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros(()) for p in self._all_params]
        self._grad_norms = torch.stack(torch._foreach_norm(grads))  # (P_all,)

    def before_update(self) -> None:
        """Snapshot the layer weights so :meth:`after_update` can measure the step taken."""
        if not self._armed:
            return
        params = [p.detach() for p in self._layer_params]
        if self._snapshot is None:
            self._snapshot = [p.clone() for p in params]
        else:
            torch._foreach_copy_(self._snapshot, params)

    def after_update(self, extra: dict[tuple[str, str, str], float] | None = None) -> None:
        """Weight norms, update ratios and activation statistics; appends the step's row.

        ``extra`` adds model-level values (loss, accuracy...) keyed (layer, site, metric);
        the key set must be the same at every recorded step.
        """
        if not self._armed:
            return
        self._armed = False
        params = [p.detach() for p in self._layer_params]
        deltas = (list(torch._foreach_sub(params, self._snapshot))
                  if self._snapshot is not None else [])
        norms = [torch.stack(torch._foreach_norm(params + deltas))]  # (P [+ P],) w and Δw
        norms.append(self._grad_norms if self._grad_norms is not None
                     else torch.full((len(self._all_params),), float("nan")))
        flat = torch.cat(norms).double().numpy()  # one transfer for every parameter norm
        P = len(params)
        w = self._by_layer(flat[:P])
        with np.errstate(invalid="ignore"):  # a diverging run's NaN weights stay NaN
            ratio = (self._by_layer(flat[P:2 * P]) / np.maximum(w, 1e-12)
                     if self._snapshot is not None else np.full(len(self.layers), np.nan))
        g_all = flat[-len(self._all_params):]
        total = np.sqrt(np.square(g_all).sum())
        g_layer = self._by_layer(g_all[self._layer_in_all])
        extra = extra or {}
        if self._extra_keys is None:
            self._extra_keys = list(extra)
        row = np.concatenate([[total], g_layer, w, ratio, self._activation_stats(),
                              [extra.get(k, np.nan) for k in self._extra_keys]])
        self._rows.append(row)
        self._steps.append(self._step)
        self._grad_norms = None
        self._captured = [None] * len(self._captured)

    def _by_layer(self, param_norms: np.ndarray) -> np.ndarray:
        """L2 norm over each layer's parameters, from the norms of its parameters."""
        return np.sqrt(np.bincount(self._param_owner, np.square(param_norms),
                                   minlength=len(self.layers)))

    # -- activation statistics ---------------------------------------------------------
    def _activation_stats(self) -> np.ndarray:
        """Per slot: mean, var, percentiles, histogram; then saturation/dead per post_act."""
        out = np.full((len(self._slots), len(_ACT_STATS)), np.nan)
        sat = np.full(len(self._slots), np.nan)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(self._captured):
            if t is not None:
                groups.setdefault(t.numel(), []).append(i)
        for n, idx in groups.items():
            X = torch.stack([self._captured[i].reshape(-1) for i in idx])  # (R, N)
            mean = X.sum(1) / n  # (R,)
            var = (X - mean[:, None]).square_().sum(1) / n  # biased, over all values
            S = X if self.sample is None or n <= self.sample else X.index_select(1, self._sample_of(n))
            S = S.numpy().copy()  # (R, m)
            S.sort(axis=1)  # percentiles, histogram and saturation all read the sorted sample
            out[idx] = np.concatenate([torch.stack([mean, var], 1).numpy(),
                                       _sorted_percentiles(S), self._histograms(S, idx)], axis=1)
            self._saturation(S, idx, sat)
        return np.concatenate([out.reshape(-1), sat[self._sat_slots]])

    def _sample_of(self, n: int) -> torch.Tensor:
        if n not in self._samples:
            self._samples[n] = _sample_index(n, self.sample)
        return self._samples[n]

    def _histograms(self, S: np.ndarray, idx: list[int]) -> np.ndarray:
        """Fraction of each row of the row-sorted ``S`` per fixed bin; the end bins also
        catch values outside the range. Sorted rows need only a binary search per edge."""
        R, m = S.shape
        bounds = np.empty((R, HIST_BINS + 1), dtype=np.int64)
        bounds[:, 0], bounds[:, -1] = 0, m
        for r, i in enumerate(idx):
            bounds[r, 1:-1] = np.searchsorted(S[r], self._edges[i][1:-1])
        return np.diff(bounds, axis=1) / m  # (R, HIST_BINS)

    def _saturation(self, S: np.ndarray, idx: list[int], sat: np.ndarray) -> None:
        """Fill ``sat`` for the post_act slots among ``idx``: sigmoid/tanh from the sorted
        sample (values beyond the saturation thresholds), dead units from the whole tensor."""
        for r, i in enumerate(idx):
            activation = self._slots[i][2]
            if activation in _SATURATION_BOUNDS:
                low, high = _SATURATION_BOUNDS[activation]
                below = np.searchsorted(S[r], low, side="left")
                above = S.shape[1] - np.searchsorted(S[r], high, side="right")
                sat[i] = (below + above) / S.shape[1]
            elif activation is not None:
                sat[i] = saturation(self._captured[i], activation)

    # -- output ------------------------------------------------------------------------
    def keys(self) -> list[tuple[str, str, str]]:
        """The (layer, site, metric) key of each column of a recorded row."""
        keys = [("model", "train", "grad_norm")]
        keys += [(layer.name, "param", "grad_norm") for layer in self.layers]
        keys += [(layer.name, "param", "weight_norm") for layer in self.layers]
        keys += [(layer.name, "param", "update_ratio") for layer in self.layers]
        keys += [(layer, site, m) for layer, site, _ in self._slots for m in _ACT_STATS]
        keys += [(self._slots[i][0], "post_act",
                  "saturated" if self._slots[i][2] in ("sigmoid", "tanh") else "dead")
                 for i in self._sat_slots]
        return keys + list(self._extra_keys or [])

    def flush(self) -> RecordBatch | None:
        """The rows recorded since the last flush as one batch (None if there are none)."""
        if not self._rows:
            return None
        batch = RecordBatch(np.asarray(self._steps, dtype=np.int64), self.keys(),
                            np.stack(self._rows))
        self._rows, self._steps = [], []
        return batch


def _sorted_percentiles(S: np.ndarray) -> np.ndarray:
    """PERCENTILES of each row of the row-sorted ``S`` (linear interpolation, as numpy)."""
    pos = np.asarray(PERCENTILES) / 100 * (S.shape[1] - 1)  # (3,)
    lo = np.floor(pos).astype(np.int64)
    if (pos == lo).all():  # e.g. the default sample of 1,021: exact order statistics
        return S[:, lo]
    hi = np.minimum(lo + 1, S.shape[1] - 1)
    return S[:, lo] + (S[:, hi] - S[:, lo]) * (pos - lo)  # (R, 3)


def saturation(y: torch.Tensor, activation: str) -> float:
    """Sigmoid/tanh: fraction of values whose derivative is below 5% of its maximum.
    ReLU/GELU: fraction of *units* (features, or channels of a conv) that are <= 0 for
    every example (and position) of the batch — dead units."""
    if activation == "sigmoid":  # σ' = y(1 − y) ≤ 0.25
        return float((y * (1 - y) < SATURATED_THRESHOLD * 0.25).float().mean())
    if activation == "tanh":  # tanh' = 1 − y² ≤ 1
        return float((1 - y * y < SATURATED_THRESHOLD).float().mean())
    alive = (y > 0).transpose(0, 1).reshape(y.shape[1], -1).any(1)  # (C,)
    return float(1.0 - alive.float().mean())
