"""Decorrelated BatchNorm: ZCA whitening of the batch within groups of features.

In the framework ``h = g · Σ^(−1/2) (x − μ) + b``, whitening replaces BatchNorm's per-feature
σ by the inverse square root of the batch covariance Σ of a group of features, so the group
comes out with zero mean *and* identity covariance (decorrelated), not just unit variance.
ZCA (``W = U diag(λ^(−1/2)) Uᵀ``, from ``torch.linalg.eigh``) is the whitening matrix that
moves the data least, which keeps the output aligned with the input features.

Cites: Huang, Yang, Lang & Deng 2018, "Decorrelated Batch Normalization" (CVPR); for the
inference estimator, Huang, Zhao, Zhou, Zhu, Liu & Shao 2020, "An Investigation into the
Stochasticity of Batch Whitening" (CVPR).

Inference uses *population statistics*, as DBN prescribes: a running mean μ̂ and a running
covariance Σ̂ (unbiased, like BatchNorm's running variance), and the whitening matrix
``Ŵ = (Σ̂ + eps·I)^(−1/2)`` computed from them. An earlier version kept a running *average of
the batch whitening matrices* instead (what DBN's released code does). That estimator
breaks when a group's covariance is rank-deficient (e.g. a first conv layer: 1 channel ×
kernel 3 gives rank ≤ 3 for a group of 10): every batch matrix puts 1/sqrt(eps) ≈ 316 on
its null directions, the null directions move with the weights, and the average
amplifies the eval data's components there (mnist1d CNN: validation accuracy 0.26 while
training batches reached 0.94). Averaging Σ instead gives small weight only to directions
the data actually occupies; Huang et al. 2020 compare the two estimators and report the
covariance one as the more accurate. One more step is needed for a rank-deficient group:
directions whose running variance is below ``NULL_TOL`` (1e-3) times the group's largest
hold no training data (training batches have no component there, so the training output
never depends on the gain there) but do hold the recent weight drift, so eval gives them
gain 0 (a pseudo-inverse square root) instead of up to 1/sqrt(eps). Measured on the
mnist1d CNN above: validation accuracy 0.478 with the covariance estimator alone, 0.942
with the null directions cut, 0.953 for a train-mode pass over the whole validation set.

Whitening needs more samples per group than features: with n = batch × spatial positions
below ``group_size`` the batch covariance is singular and the output cannot be
decorrelated in every direction (:func:`normlab.training.config.warnings` says so before a
run).

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


NULL_TOL = 1e-3  # eval: running variances below this × the group's largest get gain 0


def population_whitening(cov: Tensor, eps: float, null_tol: float = NULL_TOL) -> Tensor:
    """Eval-mode ZCA matrix of each population covariance (…, s, s): ``U diag(c) Uᵀ`` with
    ``c = 1/sqrt(λ + eps)`` where ``λ >= null_tol · max λ``, else 0 (see the module
    docstring: directions the data does not occupy are not amplified)."""
    lam, U = torch.linalg.eigh(cov)  # (G, s), (G, s, s)
    lam = lam.clamp_min(0.0)
    keep = lam >= null_tol * lam.amax(dim=-1, keepdim=True)  # (G, s)
    gain = torch.where(keep, torch.rsqrt(lam + eps), torch.zeros_like(lam))
    return (U * gain.unsqueeze(-2)) @ U.mT  # (G, s, s)


class BatchWhitening(nn.Module):
    """Whiten each group of features over the mini-batch: zero mean, identity covariance.

    Paper: Huang et al. 2018, "Decorrelated Batch Normalization".
    Formula: ``h = g · W (x − μ_B) + b`` per group, ``W = (Σ_B + eps·I)^(−1/2)`` (ZCA:
    ``U diag(λ^(−1/2)) Uᵀ`` from the eigendecomposition of Σ_B + eps·I).
    Reduction: features are split into consecutive groups of s = min(group_size, C) (s must
    divide C); per group, μ_B and Σ_B (s × s, biased: ÷ n) are over the n samples, i.e. B
    (MLP) or B and space (CNN: every position of every example is a sample).
    Train vs eval: train whitens with the batch's μ_B and W, gradients flowing through both,
    and updates ``running_mean`` (C,) and ``running_cov`` (C/s, s, s; unbiased, ÷ (n − 1))
    with ``momentum``; eval whitens with the running mean and
    ``running_whitening = (running_cov + eps·I)^(−1/2)`` (population statistics, Huang et
    al. 2018; the matrix is cached until the running statistics change).
    Args: num_features (C), group_size (s), eps (added to Σ's eigenvalues), momentum, affine
    (learn g, b per feature).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same. Train needs ≥ 2 samples.
    Example (equivalence): ``group_size=1`` is BatchNorm, in train mode (W = 1/sqrt(σ² + eps))
    and in eval mode (running mean and unbiased running variance).
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
        self.register_buffer("running_cov", eye)
        self._eval_whitening: tuple | None = None  # (buffer, its version, W from it)

    @property
    def running_whitening(self) -> Tensor:
        """The eval-mode whitening matrix from ``running_cov`` (:func:`population_whitening`),
    (G, s, s)."""
        cached = self._eval_whitening
        if cached is None or cached[0] is not self.running_cov or cached[1] != \
                self.running_cov._version:
            with torch.no_grad():
                W = population_whitening(self.running_cov, self.eps)
            cached = self._eval_whitening = (self.running_cov, self.running_cov._version, W)
        return cached[2]

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
                self.running_cov.lerp_(cov * (n / (n - 1)), self.momentum)  # (G, s, s), unbiased
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

