"""Activation-space normalization layers, each a choice in ``h = g · (x − μ) / σ + b``.

A method is fixed by where μ and σ come from (this batch, running averages, or 0 for no
centring), which axes they reduce over, and the shapes of g and b. Each ``forward`` is one
of PyTorch's fused operators that computes exactly that function (``F.batch_norm``,
``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``): one C++ kernel forward and one
backward instead of a dozen small eager operations, so a NormLab model trains as fast as
the same model written with ``torch.nn`` layers (``benchmarks/bench_native.py``).

The readable form — one moments helper (mean and biased variance over the axes) and a few
lines per method — is :mod:`normlab.methods.reference`; the tests check every module here
against it (forward, gradients, running statistics, eval) and against its ``torch.nn``
counterpart. Inputs are (B, C) (an MLP layer) or (B, C, L) / (B, C, H, W) (a CNN layer);
``num_features`` = C always comes first.

Cites: Ioffe & Szegedy 2015 (BatchNorm), Ba, Kiros & Hinton 2016 (LayerNorm), Ulyanov,
Vedaldi & Lempitsky 2016 (InstanceNorm), Wu & He 2018 (GroupNorm), Zhang & Sennrich 2019
(RMSNorm), Ioffe 2017 (Batch Renormalization).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.methods.specs import clipped_divisor


def _check_config(num_features: int, eps: float, momentum: float | None = None) -> None:
    if not (isinstance(num_features, int) and num_features >= 1):
        raise ValueError(f"num_features must be a positive integer (got {num_features!r})")
    if not eps > 0:
        raise ValueError(f"eps must be positive (got {eps}); the usual value is 1e-5")
    if momentum is not None and not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1] (got {momentum}); the usual value is 0.1")


def _group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None,
                eps: float) -> Tensor:
    """``F.group_norm`` without its Python-side check, which refuses one value per group
    (an MLP layer with C groups of one feature, or a batch of one): there the function
    is defined (x − μ = 0, so h = b) and the references compute it, so this does too."""
    return torch.group_norm(x, groups, weight, bias, eps, False)


class _Norm(nn.Module):
    """Shared plumbing: ``num_features``, ``eps``, per-channel g (``weight``) and b (``bias``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 bias: bool = True):
        super().__init__()
        _check_config(num_features, eps)
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine and bias else None

    def _check(self, x: Tensor) -> None:
        """A clear error for an input whose dimension 1 is not ``num_features``."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input (B, "
                             f"{self.num_features}) or (B, {self.num_features}, *spatial); got "
                             f"{tuple(x.shape)}: set num_features to the layer's width")

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        """The broadcast shape of a per-channel vector for ``x``: (1, C, 1, ...)."""
        self._check(x)
        return (1, self.num_features) + (1,) * (x.dim() - 2)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class NoNorm(nn.Identity):
    """The identity: the no-normalization baseline.

    Paper: none (the control every method is compared with).
    Formula: ``h = x`` (μ = 0, σ = 1, no g or b).
    Reduction: none. Train vs eval: identical.
    Args: num_features (C), kept only so every norm is built the same way.
    Shapes: any input; the output is the input itself.
    Example (equivalence): ``BatchNorm(C, affine=False)`` in eval mode with fresh running
    statistics (mean 0, var 1) is this up to the factor 1 / sqrt(1 + eps).
    """

    def __init__(self, num_features: int, *args, **kwargs):
        super().__init__()
        self.num_features = num_features

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class BatchNorm(_Norm):
    """Standardize each feature over the mini-batch.

    Paper: Ioffe & Szegedy 2015, "Batch Normalization".
    Formula: ``h = g · (x − μ_B) / sqrt(σ²_B + eps) + b``.
    Reduction: per channel over B (MLP) or B and space (CNN); σ²_B biased (÷ n).
    Train vs eval: train normalizes with batch statistics and updates ``running_mean`` and
    ``running_var`` (unbiased, ÷ (n − 1)) as ``r ← (1 − momentum) · r + momentum · stat``;
    eval normalizes with the running statistics. Matches ``nn.BatchNorm1d/2d``.
    Computed by ``F.batch_norm`` (which makes the running update itself).
    Args: num_features (C), eps, momentum (running-average rate in (0, 1]), affine
    (learn g, b per channel).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same. Train needs > 1 value per channel.
    Example (invariance): in train mode the output ignores a per-channel shift and positive
    scale of the input, ``bn(3 * x + 1) ≈ bn(x)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__(num_features, eps, affine)
        _check_config(num_features, eps, momentum)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _check_batch(self, x: Tensor) -> None:
        """Training needs more than one value per channel (else σ²_B is 0/0)."""
        self._check(x)
        if x.numel() <= self.num_features:  # values per channel = numel / C
            raise ValueError(f"{type(self).__name__} needs more than one value per channel in "
                             f"training, got input {tuple(x.shape)}: use a batch of at least 2 "
                             "examples, or call .eval() to use the running statistics")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            self._check(x)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        self._check_batch(x)
        self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"


class LayerNorm(_Norm):
    """Standardize each example over all its features (and positions).

    Paper: Ba, Kiros & Hinton 2016, "Layer Normalization".
    Formula: ``h = g · (x − μ) / sqrt(σ² + eps) + b``.
    Reduction: per example over C (MLP) or C and space (CNN); σ² biased. g, b per channel
    (C,), broadcast over space.
    Train vs eval: identical (no running statistics).
    Computed by ``F.layer_norm`` over C on (B, C), and by ``F.group_norm`` with one group
    on (B, C, *spatial) (the same statistics, with g and b per channel, not per position).
    Args: num_features (C), eps, affine.
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same.
    Example (equivalence): on (B, C) it is ``nn.LayerNorm(C)``; on (B, C, H, W) it is
    ``nn.GroupNorm(1, C)`` (and :class:`GroupNorm` with one group).
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.dim() == 2:
            return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)
        return _group_norm(x, 1, self.weight, self.bias, self.eps)


class InstanceNorm(_Norm):
    """Standardize each channel of each example over its spatial positions (CNN only).

    Paper: Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization".
    Formula: ``h = g · (x − μ) / sqrt(σ² + eps) + b``.
    Reduction: per example per channel over L or H, W; σ² biased. g, b per channel.
    Train vs eval: identical (no running statistics; torch's ``track_running_stats=False``).
    Computed by ``F.group_norm`` with one group per channel: the same function as
    ``F.instance_norm`` (which reshapes to a (1, B·C) batch norm and repeats g, b per
    example), and about twice as fast on CPU.
    Args: num_features (C), eps, affine.
    Shapes: (B, C, L) or (B, C, H, W) → same; a (B, C) input is an error.
    Example (equivalence): ``nn.InstanceNorm2d(C, affine=True)``, and :class:`GroupNorm`
    with ``num_groups = C``.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.dim() < 3:
            raise ValueError(f"InstanceNorm normalizes each channel over its spatial positions, "
                             f"and input {tuple(x.shape)} has none: use it in a CNN (input "
                             "(B, C, L) or (B, C, H, W)), or choose 'layer' or 'group'")
        return _group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class GroupNorm(_Norm):
    """Standardize each example within groups of channels: LayerNorm per channel group.

    Paper: Wu & He 2018, "Group Normalization".
    Formula: ``h = g · (x − μ_G) / sqrt(σ²_G + eps) + b``.
    Reduction: per example per group over its C/G channels (and space); σ² biased. g, b
    per channel. Groups used: G = min(num_groups, num_features), which must divide
    num_features (a ValueError suggests the largest divisor ≤ G).
    Train vs eval: identical (no running statistics). Computed by ``F.group_norm``.
    Args: num_features (C), num_groups (G), eps, affine.
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same.
    Example (equivalence): one group is :class:`LayerNorm`; C groups on a CNN input is
    :class:`InstanceNorm`.
    """

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__(num_features, eps, affine)
        self.num_groups = clipped_divisor("num_groups", num_groups, num_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return _group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, "
                f"affine={self.affine}")


class RMSNorm(_Norm):
    """Rescale each example by the root mean square of its features: LayerNorm without centring.

    Paper: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
    Formula: ``h = g · x / sqrt(mean(x²) + eps)`` (μ = 0, no b).
    Reduction: per example over C (MLP) or C and space (CNN). g per channel.
    Train vs eval: identical (no running statistics).
    Computed by ``F.rms_norm`` over C (MLP) or over C and space, then g per channel (CNN).
    Args: num_features (C), eps, affine (learn g).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same.
    Example (equivalence/invariance): on (B, C) it is ``nn.RMSNorm(C, eps=eps)``; the output
    ignores a positive rescaling of each example, ``rms(3 * x) ≈ rms(x)``, but not a shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps, affine, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            self._check(x)
            return F.rms_norm(x, (self.num_features,), self.weight, self.eps)
        shape = self._shape(x)
        h = F.rms_norm(x, x.shape[1:], None, self.eps)  # over C and space
        return h if self.weight is None else h * self.weight.view(shape)


class BatchRenorm(BatchNorm):
    """BatchNorm corrected toward its running statistics, so train and eval outputs agree.

    Paper: Ioffe 2017, "Batch Renormalization".
    Formula (train): ``h = g · ((x − μ_B) / σ_B · r + d) + b`` with
    ``r = clip(σ_B / σ_run, 1/rmax, rmax)``, ``d = clip((μ_B − μ_run) / σ_run, −dmax, dmax)``,
    σ = sqrt(σ² + eps); r and d are constants for the gradient (detached) and use the running
    statistics from before this step's update. Eval: ``h = g · (x − μ_run) / σ_run + b``.
    Reduction: as :class:`BatchNorm` (per channel over B and space, biased σ²_B); running
    statistics updated exactly as BatchNorm's (unbiased running variance).
    Computed as ``F.batch_norm`` with g·r and g·d + b in place of g and b: μ_B, σ_B for
    r and d come from one ``torch.var_mean`` without gradient, before the fused call
    updates the running statistics.
    Train vs eval: when r and d are not clipped, the train output equals the eval output;
    rmax = 1, dmax = 0 is plain BatchNorm.
    Args: num_features (C), eps, momentum, rmax (≥ 1), dmax (≥ 0), affine.
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same. Train needs > 1 value per channel.
    Example (equivalence): ``BatchRenorm(C, rmax=1, dmax=0)`` in train mode is ``BatchNorm(C)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 rmax: float = 3.0, dmax: float = 5.0, affine: bool = True):
        super().__init__(num_features, eps, momentum, affine)
        if not rmax >= 1:
            raise ValueError(f"rmax must be at least 1 (got {rmax}); rmax = 1 is BatchNorm")
        if not dmax >= 0:
            raise ValueError(f"dmax must be zero or positive (got {dmax}); dmax = 0 is BatchNorm")
        self.rmax, self.dmax = float(rmax), float(dmax)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_batch(x)
        with torch.no_grad():  # r, d: no gradient, from the running statistics before update
            dims = (0, *range(2, x.dim()))  # B and space
            var, mean = torch.var_mean(x, dims, correction=0)  # (C,)
            run_std = torch.sqrt(self.running_var + self.eps)  # (C,)
            r = (torch.sqrt(var + self.eps) / run_std).clamp_(1.0 / self.rmax, self.rmax)
            d = ((mean - self.running_mean) / run_std).clamp_(-self.dmax, self.dmax)
        # g · (x̂ · r + d) + b = (g · r) · x̂ + (g · d + b): the fused op with a corrected affine
        weight = r if self.weight is None else self.weight * r
        bias = d if self.weight is None else self.weight * d
        if self.bias is not None:
            bias = bias + self.bias
        self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias,
                            True, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rmax={self.rmax}, dmax={self.dmax}"
