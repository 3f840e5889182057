"""Activation-space normalization layers, each a choice in ``h = g · (x − μ) / σ + b``.

A method is fixed by where μ and σ come from (this batch, running averages, or 0 for no
centring), which axes they reduce over, and the shapes of g and b. All the arithmetic is
one private helper, :func:`_moments` (mean and biased variance over given axes, variance
clamped at 0); each ``forward`` is a few lines around it. Inputs are (B, C) (an MLP layer)
or (B, C, L) / (B, C, H, W) (a CNN layer); ``num_features`` = C always comes first.

Cites: Ioffe & Szegedy 2015 (BatchNorm), Ba, Kiros & Hinton 2016 (LayerNorm), Ulyanov,
Vedaldi & Lempitsky 2016 (InstanceNorm), Wu & He 2018 (GroupNorm), Zhang & Sennrich 2019
(RMSNorm), Ioffe 2017 (Batch Renormalization). Each matches its ``torch.nn`` counterpart
(see ``tests/test_norms.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.methods.specs import clipped_divisor


def _moments(x: Tensor, dims: tuple[int, ...], center: bool = True) -> tuple[Tensor, Tensor]:
    """(μ, σ²) of ``x`` over ``dims``, kept for broadcasting; σ² biased (÷ n), clamped at 0.

    Two passes (mean, then mean of squared deviations): no cancellation when |μ| ≫ σ, and on
    CPU faster than ``torch.var_mean`` (measured ~3x, forward + backward). ``center=False`` returns
    (0, mean of x²): the second moment about zero (RMSNorm).
    """
    if not center:
        return x.new_zeros(()), x.square().mean(dim=dims, keepdim=True)  # (…, 1, …)
    mean = x.mean(dim=dims, keepdim=True)  # (…, 1, …)
    var = (x - mean).square().mean(dim=dims, keepdim=True)  # (…, 1, …)
    return mean, var.clamp_min(0.0)


def _check_config(num_features: int, eps: float, momentum: float | None = None) -> None:
    if not (isinstance(num_features, int) and num_features >= 1):
        raise ValueError(f"num_features must be a positive integer (got {num_features!r})")
    if not eps > 0:
        raise ValueError(f"eps must be positive (got {eps}); the usual value is 1e-5")
    if momentum is not None and not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1] (got {momentum}); the usual value is 0.1")


class _Norm(nn.Module):
    """Shared plumbing: ``num_features``, ``eps``, per-channel g (``weight``) and b (``bias``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 bias: bool = True):
        super().__init__()
        _check_config(num_features, eps)
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine and bias else None

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        """The broadcast shape of a per-channel vector for ``x``: (1, C, 1, ...)."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input (B, "
                             f"{self.num_features}) or (B, {self.num_features}, *spatial); got "
                             f"{tuple(x.shape)}: set num_features to the layer's width")
        return (1, self.num_features) + (1,) * (x.dim() - 2)

    def _affine(self, h: Tensor, shape: tuple[int, ...]) -> Tensor:
        """g · h + b with g, b (C,) broadcast over batch and space."""
        if self.weight is not None and self.bias is not None:
            return torch.addcmul(self.bias.view(shape), h, self.weight.view(shape))
        if self.weight is not None:
            return h * self.weight.view(shape)
        return h

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

    def _batch_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Batch (μ, σ²) per channel, shaped (1, C, 1, ...); updates the running statistics."""
        dims = (0, *range(2, x.dim()))  # B and space
        n = x.numel() // self.num_features  # values per channel
        if n < 2:
            raise ValueError(f"{type(self).__name__} needs more than one value per channel in "
                             f"training, got input {tuple(x.shape)}: use a batch of at least 2 "
                             "examples, or call .eval() to use the running statistics")
        mean, var = _moments(x, dims)  # (1, C, 1, ...)
        with torch.no_grad():
            self.running_mean.lerp_(mean.flatten(), self.momentum)  # (C,)
            self.running_var.lerp_(var.flatten() * (n / (n - 1)), self.momentum)  # (C,)
            self.num_batches_tracked += 1
        return mean, var

    def _per_channel(self, x: Tensor, scale: Tensor, shift: Tensor,
                     shape: tuple[int, ...]) -> Tensor:
        """``g · (x · scale + shift) + b`` for per-channel scale, shift (1, C, 1, ...).

        The affine map is folded into the (small) scale and shift first, so the full-size
        input is touched by a single ``addcmul``: one output, no full-size intermediates.
        """
        if self.weight is not None:
            scale, shift = scale * self.weight.view(shape), shift * self.weight.view(shape)
        if self.bias is not None:
            shift = shift + self.bias.view(shape)
        return torch.addcmul(shift, x, scale)

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        if self.training:
            mean, var = self._batch_moments(x)  # (1, C, 1, ...)
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        inv_std = torch.rsqrt(var + self.eps)  # (x − μ) / σ = x · inv_std − μ · inv_std
        return self._per_channel(x, inv_std, -mean * inv_std, shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"


class LayerNorm(_Norm):
    """Standardize each example over all its features (and positions).

    Paper: Ba, Kiros & Hinton 2016, "Layer Normalization".
    Formula: ``h = g · (x − μ) / sqrt(σ² + eps) + b``.
    Reduction: per example over C (MLP) or C and space (CNN); σ² biased. g, b per channel
    (C,), broadcast over space.
    Train vs eval: identical (no running statistics).
    Args: num_features (C), eps, affine.
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same.
    Example (equivalence): on (B, C) it is ``nn.LayerNorm(C)``; on (B, C, H, W) it is
    ``nn.GroupNorm(1, C)`` (and :class:`GroupNorm` with one group).
    """

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        mean, var = _moments(x, tuple(range(1, x.dim())))  # (B, 1, 1, ...)
        return self._affine((x - mean) * torch.rsqrt(var + self.eps), shape)


class InstanceNorm(_Norm):
    """Standardize each channel of each example over its spatial positions (CNN only).

    Paper: Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization".
    Formula: ``h = g · (x − μ) / sqrt(σ² + eps) + b``.
    Reduction: per example per channel over L or H, W; σ² biased. g, b per channel.
    Train vs eval: identical (no running statistics; torch's ``track_running_stats=False``).
    Args: num_features (C), eps, affine.
    Shapes: (B, C, L) or (B, C, H, W) → same; a (B, C) input is an error.
    Example (equivalence): ``nn.InstanceNorm2d(C, affine=True)``, and :class:`GroupNorm`
    with ``num_groups = C``.
    """

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        if x.dim() < 3:
            raise ValueError(f"InstanceNorm normalizes each channel over its spatial positions, "
                             f"and input {tuple(x.shape)} has none: use it in a CNN (input "
                             "(B, C, L) or (B, C, H, W)), or choose 'layer' or 'group'")
        mean, var = _moments(x, tuple(range(2, x.dim())))  # (B, C, 1, ...)
        return self._affine((x - mean) * torch.rsqrt(var + self.eps), shape)


class GroupNorm(_Norm):
    """Standardize each example within groups of channels: LayerNorm per channel group.

    Paper: Wu & He 2018, "Group Normalization".
    Formula: ``h = g · (x − μ_G) / sqrt(σ²_G + eps) + b``.
    Reduction: per example per group over its C/G channels (and space); σ² biased. g, b
    per channel. Groups used: G = min(num_groups, num_features), which must divide
    num_features (a ValueError suggests the largest divisor ≤ G).
    Train vs eval: identical (no running statistics).
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
        shape = self._shape(x)
        B = x.shape[0]
        xg = x.reshape(B, self.num_groups, -1)  # (B, G, C//G · spatial)
        mean, var = _moments(xg, (2,))  # (B, G, 1)
        h = ((xg - mean) * torch.rsqrt(var + self.eps)).view(x.shape)  # (B, C, *spatial)
        return self._affine(h, shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, "
                f"affine={self.affine}")


class RMSNorm(_Norm):
    """Rescale each example by the root mean square of its features: LayerNorm without centring.

    Paper: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
    Formula: ``h = g · x / sqrt(mean(x²) + eps)`` (μ = 0, no b).
    Reduction: per example over C (MLP) or C and space (CNN). g per channel.
    Train vs eval: identical (no running statistics).
    Args: num_features (C), eps, affine (learn g).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same.
    Example (equivalence/invariance): on (B, C) it is ``nn.RMSNorm(C, eps=eps)``; the output
    ignores a positive rescaling of each example, ``rms(3 * x) ≈ rms(x)``, but not a shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps, affine, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        _, mean_sq = _moments(x, tuple(range(1, x.dim())), center=False)  # (B, 1, 1, ...)
        return self._affine(x * torch.rsqrt(mean_sq + self.eps), shape)


class BatchRenorm(BatchNorm):
    """BatchNorm corrected toward its running statistics, so train and eval outputs agree.

    Paper: Ioffe 2017, "Batch Renormalization".
    Formula (train): ``h = g · ((x − μ_B) / σ_B · r + d) + b`` with
    ``r = clip(σ_B / σ_run, 1/rmax, rmax)``, ``d = clip((μ_B − μ_run) / σ_run, −dmax, dmax)``,
    σ = sqrt(σ² + eps); r and d are constants for the gradient (detached) and use the running
    statistics from before this step's update. Eval: ``h = g · (x − μ_run) / σ_run + b``.
    Reduction: as :class:`BatchNorm` (per channel over B and space, biased σ²_B); running
    statistics updated exactly as BatchNorm's (unbiased running variance).
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
        shape = self._shape(x)
        with torch.no_grad():  # r, d: no gradient, from the running statistics before update
            run_mean = self.running_mean.view(shape).clone()  # (1, C, 1, ...)
            run_std = torch.sqrt(self.running_var.view(shape) + self.eps)  # (1, C, 1, ...)
        mean, var = self._batch_moments(x)  # (1, C, 1, ...)
        std = torch.sqrt(var + self.eps)
        r = (std.detach() / run_std).clamp(1.0 / self.rmax, self.rmax)
        d = ((mean.detach() - run_mean) / run_std).clamp(-self.dmax, self.dmax)
        scale = r / std  # (x − μ_B) / σ_B · r + d = x · scale + (d − μ_B · scale)
        return self._per_channel(x, scale, d - mean * scale, shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rmax={self.rmax}, dmax={self.dmax}"
