"""Decorrelated BatchNorm: ZCA whitening of the batch within groups of features.

In the framework ``h = g · Σ^(−1/2) (x − μ) + b``, whitening replaces BatchNorm's per-feature
σ by the inverse square root of the batch covariance Σ of a group of features, so the group
comes out with zero mean *and* identity covariance (decorrelated), not just unit variance.
ZCA (``W = U diag(λ^(−1/2)) Uᵀ``, from ``torch.linalg.eigh``) is the whitening matrix that
moves the data least, which keeps the output aligned with the input features.

Cites: Huang, Yang, Lang & Deng 2018, "Decorrelated Batch Normalization" (CVPR).

The backward pass of Σ ↦ Σ^(−1/2) is written out in its Daleckii–Krein form,
``dΣ = U (K ∘ Uᵀ Ḡ U) Uᵀ`` with ``K_ij = −1 / (a_i a_j (a_i + a_j))``, ``a = sqrt(λ + eps)``,
``Ḡ`` the symmetrized upstream gradient. It is the exact derivative, but unlike autograd
through ``eigh`` (whose ``1 / (λ_i − λ_j)`` terms are infinite for repeated eigenvalues,
e.g. two dead ReLU units) it is finite for any covariance.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.methods.specs import clipped_divisor
from normlab.methods.norms import _check_config


class _InvSqrtPSD(torch.autograd.Function):
    """``(Σ + eps·I)^(−1/2)`` for a batch of symmetric PSD matrices (…, s, s), via eigh."""

    @staticmethod
    def forward(ctx, cov: Tensor, eps: float) -> Tensor:
        lam, U = torch.linalg.eigh(cov)  # (G, s), (G, s, s)
        a = torch.sqrt(lam.clamp_min(0.0) + eps)  # (G, s): eigenvalues of (Σ + eps·I)^(1/2)
        ctx.save_for_backward(U, a)
        return (U / a.unsqueeze(-2)) @ U.mT  # (G, s, s) = U diag(1/a) Uᵀ

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        U, a = ctx.saved_tensors
        M = U.mT @ (0.5 * (grad + grad.mT)) @ U  # (G, s, s)
        K = -1.0 / (a.unsqueeze(-1) * a.unsqueeze(-2) * (a.unsqueeze(-1) + a.unsqueeze(-2)))
        return U @ (K * M) @ U.mT, None  # (G, s, s)


def inv_sqrt_psd(cov: Tensor, eps: float) -> Tensor:
    """ZCA whitening matrix ``(cov + eps·I)^(−1/2)`` of each symmetric PSD (…, s, s) matrix."""
    return _InvSqrtPSD.apply(cov, eps)


class BatchWhitening(nn.Module):
    """Whiten each group of features over the mini-batch: zero mean, identity covariance.

    Paper: Huang et al. 2018, "Decorrelated Batch Normalization".
    Formula: ``h = g · W (x − μ_B) + b`` per group, ``W = (Σ_B + eps·I)^(−1/2)`` (ZCA:
    ``U diag(λ^(−1/2)) Uᵀ`` from the eigendecomposition of Σ_B + eps·I).
    Reduction: features are split into consecutive groups of s = min(group_size, C) (s must
    divide C); per group, μ_B and Σ_B (s × s, biased: ÷ n) are over the n samples, i.e. B
    (MLP) or B and space (CNN: every position of every example is a sample).
    Train vs eval: train whitens with the batch's μ_B and W, gradients flowing through both,
    and updates ``running_mean`` (C,) and ``running_whitening`` (C/s, s, s) with ``momentum``;
    eval uses the running ones.
    Args: num_features (C), group_size (s), eps (added to Σ's eigenvalues), momentum, affine
    (learn g, b per feature).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same. Train needs ≥ 2 samples.
    Example (equivalence): ``group_size=1`` is BatchNorm in train mode (W = 1/sqrt(σ² + eps)).
    """

    def __init__(self, num_features: int, group_size: int = 16, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True):
        super().__init__()
        _check_config(num_features, eps, momentum)
        size = clipped_divisor("group_size", group_size, num_features)
        self.num_features, self.group_size = num_features, size
        self.num_groups = num_features // size
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        eye = torch.eye(size).expand(self.num_groups, size, size).clone()  # (G, s, s)
        self.register_buffer("running_whitening", eye)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchWhitening({self.num_features}) expects input (B, "
                             f"{self.num_features}) or (B, {self.num_features}, *spatial); got "
                             f"{tuple(x.shape)}: set num_features to the layer's width")
        B, G, s = x.shape[0], self.num_groups, self.group_size
        xg = x.reshape(B, G, s, -1)  # (B, G, s, P), P = spatial positions (1 for an MLP)
        if self.training:
            n = B * xg.shape[-1]  # samples
            if n < 2:
                raise ValueError(f"BatchWhitening needs at least 2 samples in training, got "
                                 f"input {tuple(x.shape)}: use a batch of at least 2 examples, "
                                 "or call .eval() to use the running statistics")
            mean = xg.mean(dim=(0, 3), keepdim=True)  # (1, G, s, 1)
            xc = xg - mean  # (B, G, s, P)
            cov = torch.einsum("bgip,bgjp->gij", xc, xc) / n  # (G, s, s), biased
            W = inv_sqrt_psd(cov, self.eps)  # (G, s, s)
            with torch.no_grad():
                self.running_mean.lerp_(mean.flatten(), self.momentum)  # (C,)
                self.running_whitening.lerp_(W, self.momentum)  # (G, s, s)
        else:
            xc = xg - self.running_mean.view(1, G, s, 1)  # (B, G, s, P)
            W = self.running_whitening  # (G, s, s)
        h = torch.einsum("gij,bgjp->bgip", W, xc).reshape(x.shape)  # (B, C, *spatial)
        if not self.affine:
            return h
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.bias.view(shape), h, self.weight.view(shape))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, group_size={self.group_size}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}")
