"""The readable reference form of every activation-space norm: the framework spelled out.

Each method of :mod:`normlab.methods.norms` is ``h = g · (x − μ) / σ + b`` with μ and σ
from one private helper, :func:`_moments` (mean and biased variance over given axes,
variance clamped at 0). Here each ``forward`` is those few lines, written for reading:
which axes, whether it centres, where the running statistics come from. The modules in
:mod:`normlab.methods.norms` compute the same functions with PyTorch's fused operators;
``tests/test_reference.py`` checks each against its reference here — forward, gradients,
running statistics and eval — to float tolerance.

The classes subclass the fused ones (same constructor, validation, parameters, buffers
and ``extra_repr``) and override only ``forward``, so a state dict moves between the two
forms and :data:`REFERENCES` maps each fused class to its reference.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from normlab.methods import norms


def _moments(x: Tensor, dims: tuple[int, ...], center: bool = True) -> tuple[Tensor, Tensor]:
    """(μ, σ²) of ``x`` over ``dims``, kept for broadcasting; σ² biased (÷ n), clamped at 0.

    Two passes (mean, then mean of squared deviations): no cancellation when |μ| ≫ σ.
    ``center=False`` returns (0, mean of x²): the second moment about zero (RMSNorm).
    """
    if not center:
        return x.new_zeros(()), x.square().mean(dim=dims, keepdim=True)  # (…, 1, …)
    mean = x.mean(dim=dims, keepdim=True)  # (…, 1, …)
    var = (x - mean).square().mean(dim=dims, keepdim=True)  # (…, 1, …)
    return mean, var.clamp_min(0.0)


def _affine(module: norms._Norm, h: Tensor, shape: tuple[int, ...]) -> Tensor:
    """g · h + b with g, b (C,) broadcast over batch and space."""
    if module.weight is not None:
        h = h * module.weight.view(shape)
    if module.bias is not None:
        h = h + module.bias.view(shape)
    return h


def _standardize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """(x − μ) / sqrt(σ² + eps)."""
    return (x - mean) / torch.sqrt(var + eps)


class BatchNorm(norms.BatchNorm):
    """μ, σ² per channel over B and space (this batch in train, running in eval)."""

    def _batch_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Batch (μ, σ²) per channel, shaped (1, C, 1, ...); updates the running statistics
        with the unbiased variance, ``r ← (1 − momentum) · r + momentum · stat``."""
        self._check_batch(x)
        dims = (0, *range(2, x.dim()))  # B and space
        n = x.numel() // self.num_features  # values per channel
        mean, var = _moments(x, dims)  # (1, C, 1, ...)
        with torch.no_grad():
            self.running_mean.lerp_(mean.flatten(), self.momentum)  # (C,)
            self.running_var.lerp_(var.flatten() * (n / (n - 1)), self.momentum)  # (C,)
            self.num_batches_tracked += 1
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        if self.training:
            mean, var = self._batch_moments(x)  # (1, C, 1, ...)
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        return _affine(self, _standardize(x, mean, var, self.eps), shape)


class LayerNorm(norms.LayerNorm):
    """μ, σ² per example over C and space; g, b per channel."""

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        mean, var = _moments(x, tuple(range(1, x.dim())))  # (B, 1, 1, ...)
        return _affine(self, _standardize(x, mean, var, self.eps), shape)


class InstanceNorm(norms.InstanceNorm):
    """μ, σ² per example per channel over space."""

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        if x.dim() < 3:
            return super().forward(x)  # the fused module's error message
        mean, var = _moments(x, tuple(range(2, x.dim())))  # (B, C, 1, ...)
        return _affine(self, _standardize(x, mean, var, self.eps), shape)


class GroupNorm(norms.GroupNorm):
    """μ, σ² per example per group of C/G channels (and space)."""

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        B = x.shape[0]
        xg = x.reshape(B, self.num_groups, -1)  # (B, G, C//G · spatial)
        mean, var = _moments(xg, (2,))  # (B, G, 1)
        h = _standardize(xg, mean, var, self.eps).view(x.shape)  # (B, C, *spatial)
        return _affine(self, h, shape)


class RMSNorm(norms.RMSNorm):
    """μ = 0; σ² = mean of x² per example over C and space."""

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        zero, mean_sq = _moments(x, tuple(range(1, x.dim())), center=False)  # (B, 1, 1, ...)
        return _affine(self, _standardize(x, zero, mean_sq, self.eps), shape)


class BatchRenorm(norms.BatchRenorm, BatchNorm):
    """BatchNorm's batch μ_B, σ_B, corrected by r and d (no gradient) toward the running
    statistics from before this step's update."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return BatchNorm.forward(self, x)
        shape = self._shape(x)
        with torch.no_grad():
            run_mean = self.running_mean.view(shape).clone()  # (1, C, 1, ...)
            run_std = torch.sqrt(self.running_var.view(shape) + self.eps)  # (1, C, 1, ...)
        mean, var = self._batch_moments(x)  # (1, C, 1, ...)
        std = torch.sqrt(var + self.eps)
        r = (std.detach() / run_std).clamp(1.0 / self.rmax, self.rmax)
        d = ((mean.detach() - run_mean) / run_std).clamp(-self.dmax, self.dmax)
        return _affine(self, (x - mean) / std * r + d, shape)


REFERENCES: dict[type[nn.Module], type[nn.Module]] = {
    norms.BatchNorm: BatchNorm,
    norms.LayerNorm: LayerNorm,
    norms.InstanceNorm: InstanceNorm,
    norms.GroupNorm: GroupNorm,
    norms.RMSNorm: RMSNorm,
    norms.BatchRenorm: BatchRenorm,
}


def reference_of(module: nn.Module) -> nn.Module:
    """The reference-form twin of a fused norm module: a copy (same options, parameters and
    buffers) whose ``forward`` is the readable one."""
    twin = copy.deepcopy(module)
    twin.__class__ = REFERENCES[type(module)]
    return twin
