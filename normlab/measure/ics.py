"""Internal covariate shift, measured three ways on a live run (Lab 3; opt-in, site ``ics``).

Ioffe & Szegedy (2015) call the change of a layer's input distribution as the layers below
it learn *internal covariate shift* (ICS) and propose BatchNorm to reduce it; Santurkar et
al. (2018, "How Does Batch Normalization Help Optimization?") measure a gradient-based ICS
that BatchNorm does *not* reduce, and a loss landscape that it makes smoother. At every
``every``-th step :class:`IcsMeter` measures, on a private copy of the model (the run's
parameters, buffers, gradients and random numbers are never touched, so a run trains
bit-identically with or without it):

* **drift** — for each weight layer after the first (``hidden2`` …, ``out``), the
  distribution of its *input* (the block below's output) on a fixed set of training
  examples (:data:`PROBE_EXAMPLES`, drawn once from the seed; the model in training mode,
  so BatchNorm uses the set's statistics): per unit (feature or channel, values over the
  examples and positions) the 1-Wasserstein distance between its quantile functions,
  ``W1 = ∫₀¹ |F⁻¹_t(q) − F⁻¹_{t−k}(q)| dq`` (for two samples of equal size n: the mean of
  ``|a_(j) − b_(j)|`` over the sorted values), averaged over the units and divided by the
  layer's initial spread σ₀ (the root mean per-unit variance of its input at the first
  measured step). The set is split into two disjoint halves A and B. ``drift``: against
  the previous measured step (k = ``every`` steps), the same examples at both steps, the
  mean of A's and B's distances; ``drift_noise``: half their difference |d_A − d_B| / 2,
  the sampling error of ``drift`` (two independent estimates of one drift disagree by
  this much); ``drift_total``: against the first measured step (mean of A and B);
  ``drift_floor``: W1 between A and B at the same step — what two *different* samples of
  that size give with no drift at all (comparing one training batch with another would
  read this much as "drift"; ``drift`` compares the same examples, so it can fall below).
* **Santurkar et al.'s ICS** (their Definition 2.1) — for layer i, ``G`` = the gradient of
  the training loss with respect to layer i's weight-layer parameters (weight and bias;
  WeightNorm's v and g) on the step's batch, and ``G′`` = the same gradient after the
  blocks below layer i (all their parameters, norms included) take this step's optimizer
  update, layer i and above unchanged, same batch: ``ics_diff`` = ‖G − G′‖,
  ``ics_rel`` = ‖G − G′‖ / ‖G‖, ``ics_cos`` = cos(G, G′). One forward/backward pass per
  layer.
* **smoothness** (their Fig. 4, layer ``model``) — along the step's gradient g (all
  parameters, plain gradient, no momentum or decay) from the current parameters w, at step
  sizes η = lr × :data:`STEP_MULTIPLES` (0.5 … 4): ``loss_min``/``loss_max`` of L(w − ηg)
  and ``grad_change_min``/``grad_change_max`` of ‖∇L(w − ηg) − ∇L(w)‖ on the step's batch,
  and ``beta`` = max over η of ‖∇L(w − ηg) − ∇L(w)‖ / ‖ηg‖ (their "effective
  β-smoothness"). One forward/backward pass per η.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from normlab.measure.schema import (DRIFT_METRICS, GRADIENT_METRICS,  # noqa: F401
                                   ICS_LAYER_VALUES as LAYER_VALUES, SMOOTH_METRICS,
                                   RecordBatch)
#   (the names and sizes live in the schema, without torch: checking a config is cheap)

SITE = "ics"
PROBE_EXAMPLES = 1024  # fixed training examples of the drift measurement (two halves)
STEP_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # η / lr of the smoothness probe


def unit_values(t: torch.Tensor) -> torch.Tensor:
    """A layer input as (samples, units): (B, F) stays; (B, C, *S) → (B·S, C)."""
    if t.dim() == 2:
        return t
    B, C = t.shape[:2]
    return t.reshape(B, C, -1).transpose(1, 2).reshape(-1, C)  # (B·S, C)


def sorted_units(values) -> np.ndarray:
    """(n, U) samples → (U, n) float64, each unit's values sorted (its empirical quantile
    function; numpy sorts rows ~6× faster than torch here)."""
    return np.sort(np.asarray(values, dtype=np.float64).T, axis=1)


def unit_w1(a, b, *, presorted: bool = False) -> np.ndarray:
    """Per-unit 1-Wasserstein distance between two samples of equal size: ``a``, ``b`` are
    (n, U) arrays or tensors (or, ``presorted``, :func:`sorted_units` of them); returns
    (U,). With equal sizes the quantile functions are step functions on the same grid, so
    W1 = mean_j |a_(j) − b_(j)| over each unit's sorted values."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"unit_w1 needs samples of equal shape, got {tuple(np.shape(a))} "
                         f"and {tuple(np.shape(b))}")
    if not presorted:
        a, b = sorted_units(a), sorted_units(b)
    return np.abs(a - b).mean(1)


class IcsMeter:
    """The three measurements of the module docstring, for a model made of ``blocks``.

    ``blocks``: the model's layers in order, as (name, block module, weight module) — the
    block holds everything of layer i (weight layer and norm), the weight module is where
    G is taken and whose input is the layer input (for NormLab's models
    ``(hidden1, model.hidden1, model.hidden1.layer)`` …, ``(out, model.out, model.out)``).
    ``loss_fn(logits, y)`` is the training loss; ``probe_x`` the fixed drift examples.

    Per measured step: :meth:`arm` before the training forward pass (copies parameters and
    buffers), :meth:`take_gradient` after ``backward`` and before ``optimizer.step``,
    :meth:`measure` after the step (returns the step's rows).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[tuple[str, nn.Module, nn.Module]],
                 loss_fn: Callable, lr: float, probe_x: torch.Tensor,
                 step_multiples: Sequence[float] = STEP_MULTIPLES):
        if len(blocks) < 2:
            raise ValueError(f"ICS needs at least two layers (got {len(blocks)}); use a "
                             "deeper model")
        self.loss_fn, self.lr = loss_fn, float(lr)
        self.etas = [self.lr * m for m in step_multiples]
        self.probe_x = probe_x
        self.half = len(probe_x) // 2
        self.shadow = copy.deepcopy(model)  # every measurement runs here
        paths = {id(m): n for n, m in model.named_modules()}
        self.names = [name for name, _, _ in blocks]
        self._block_prefix = [paths[id(b)] + "." if paths[id(b)] else "" for _, b, _ in blocks]
        self._weight_prefix = [paths[id(w)] + "." if paths[id(w)] else "" for _, _, w in blocks]
        self._param_names = [n for n, p in model.named_parameters()]
        self._shadow_params = dict(self.shadow.named_parameters())
        self._shadow_buffers = dict(self.shadow.named_buffers())
        shadow_modules = dict(self.shadow.named_modules())
        self._inputs: dict[str, torch.Tensor] = {}
        self._capturing = False
        for (name, _, _), prefix in zip(blocks[1:], self._weight_prefix[1:]):
            module = shadow_modules[prefix[:-1]] if prefix else self.shadow
            module.register_forward_pre_hook(self._capture(name))
        self._sigma0: dict[str, float] = {}
        self._previous: dict[str, torch.Tensor] = {}  # sorted first-half inputs, last step
        self._first: dict[str, torch.Tensor] = {}  # sorted first-half inputs, first step
        self._params: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}

    def _capture(self, name: str):
        def hook(module, inputs):
            if self._capturing:
                self._inputs[name] = inputs[0].detach()
        return hook

    # -- the three calls of a measured step -------------------------------------------
    def arm(self, model: nn.Module) -> None:
        """Copy the parameters w(t) and the buffers, before the training forward pass
        changes the buffers (BatchNorm's running statistics)."""
        with torch.no_grad():
            self._params = {n: p.detach().clone() for n, p in model.named_parameters()}
            self._buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def take_gradient(self, model: nn.Module) -> None:
        """Copy the training gradient ∇L(w(t)), before the optimizer step."""
        self._grads = {n: (p.grad.detach().clone() if p.grad is not None
                           else torch.zeros_like(p)) for n, p in model.named_parameters()}

    def measure(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                step: int) -> RecordBatch:
        """The step's rows, from w(t) (armed), the gradient and w(t+1) (``model`` now)."""
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        keys: list[tuple[str, str, str]] = []
        values: list[float] = []
        for layer, metric, value in [*self._drift(), *self._gradient_shift(after, x, y),
                                     *self._smoothness(x, y)]:
            keys.append((layer, SITE, metric))
            values.append(value)
        return RecordBatch(np.array([step], dtype=np.int64), keys,
                           np.asarray([values], dtype=np.float64))

    # -- helpers -----------------------------------------------------------------------
    def _load(self, params: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self._shadow_params.items():
                p.copy_(params[n])
            for n, b in self._shadow_buffers.items():
                b.copy_(self._buffers[n])
            for p in self._shadow_params.values():
                p.grad = None

    def _loss_and_grads(self, params: dict[str, torch.Tensor], x, y
                        ) -> tuple[float, dict[str, torch.Tensor]]:
        self._load(params)
        self.shadow.train()
        loss = self.loss_fn(self.shadow(x), y)
        loss.backward()
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                 for n, p in self._shadow_params.items()}
        return float(loss.detach()), grads

    def _drift(self):
        """Per layer input: drift vs the last measured step, vs the first, and the floor."""
        self._load(self._params)
        self.shadow.train()
        self._capturing = True
        try:
            with torch.no_grad():
                self.shadow(self.probe_x)
        finally:
            self._capturing = False
        h = self.half
        for name in self.names[1:]:
            values = unit_values(self._inputs.pop(name)).numpy()  # (N·S, U) over examples
            per = values.shape[0] // len(self.probe_x)  # positions per example
            halves = (sorted_units(values[: h * per]),  # A: the first half of the examples
                      sorted_units(values[h * per: 2 * h * per]))  # B: the second
            if name not in self._sigma0:
                self._sigma0[name] = max(float(np.sqrt(values.var(0, dtype=np.float64)
                                                       .mean())), 1e-12)
                self._first[name] = halves
            s0 = self._sigma0[name]

            def w1(a, b):
                return float(unit_w1(a, b, presorted=True).mean()) / s0

            if name in self._previous:
                d = [w1(now, then) for now, then in zip(halves, self._previous[name])]
                yield name, "drift", (d[0] + d[1]) / 2
                yield name, "drift_noise", abs(d[0] - d[1]) / 2
            yield name, "drift_total", sum(w1(now, then) for now, then
                                           in zip(halves, self._first[name])) / 2
            yield name, "drift_floor", w1(*halves)
            self._previous[name] = halves

    def _gradient_shift(self, after: dict[str, torch.Tensor], x, y):
        """Santurkar et al.'s ICS per layer i ≥ 2: G from the training pass, G′ with the
        blocks below updated."""
        for i in range(1, len(self.names)):
            below = tuple(self._block_prefix[:i])
            mixed = {n: (after[n] if n.startswith(below) else self._params[n])
                     for n in self._param_names}
            _, grads = self._loss_and_grads(mixed, x, y)
            mine = [n for n in self._param_names if n.startswith(self._weight_prefix[i])]
            g = torch.cat([self._grads[n].flatten() for n in mine]).double()
            g2 = torch.cat([grads[n].flatten() for n in mine]).double()
            diff = float((g - g2).norm())
            norm, norm2 = float(g.norm()), float(g2.norm())
            yield self.names[i], "ics_diff", diff
            yield self.names[i], "ics_rel", diff / norm if norm > 0 else float("nan")
            yield self.names[i], "ics_cos", (float(g @ g2) / (norm * norm2)
                                             if norm > 0 and norm2 > 0 else float("nan"))

    def _smoothness(self, x, y):
        """Loss and gradient change along the gradient at η = lr × STEP_MULTIPLES."""
        g = self._grads
        g_all = torch.cat([g[n].flatten() for n in self._param_names]).double()
        g_norm = float(g_all.norm())
        losses, changes, betas = [], [], []
        for eta in self.etas:
            moved = {n: self._params[n] - eta * g[n] for n in self._param_names}
            loss, grads = self._loss_and_grads(moved, x, y)
            new = torch.cat([grads[n].flatten() for n in self._param_names]).double()
            change = float((new - g_all).norm())
            losses.append(loss)
            changes.append(change)
            betas.append(change / (eta * g_norm) if g_norm > 0 else float("nan"))
        yield "model", "loss_min", min(losses)
        yield "model", "loss_max", max(losses)
        yield "model", "grad_change_min", min(changes)
        yield "model", "grad_change_max", max(changes)
        yield "model", "beta", max(betas)


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """NormLab's MLP/CNN as :class:`IcsMeter` blocks: each ``hidden``/``conv`` block with
    its weight layer ``.layer``, then the head ``out``."""
    blocks = [(n, getattr(model, n), getattr(model, n).layer) for n in model.block_names]
    return blocks + [("out", model.out, model.out)]


def probe_examples(x_train: torch.Tensor, seed: int, size: int = PROBE_EXAMPLES
                   ) -> torch.Tensor:
    """The drift measurement's fixed examples: ``size`` training examples (at most the
    set's, an even number), drawn by their own generator from the seed."""
    n = len(x_train)
    take = min(size, n) // 2 * 2
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return x_train[order[:take]]
