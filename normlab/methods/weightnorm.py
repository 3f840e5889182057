"""Weight-space normalization: reparameterize a linear/conv layer instead of its output.

Both methods decouple magnitude from direction of each output unit's weight vector, the
norm running over that unit's input axes (``in`` for Linear; ``in/groups, k`` or
``in/groups, kH, kW`` for convs; axis 0, the output unit, is kept):

* :class:`WeightNorm` (Salimans & Kingma 2016): ``w = g · v / ‖v‖`` with g learnable, so the
  magnitude is a parameter of its own; :class:`MeanOnlyBatchNorm` is the paper's companion
  that only centres the layer's output, and :func:`data_dependent_init` the paper's
  initialization (section 3), without which WeightNorm computes exactly what the plain
  layer computes at the start of training.
* :class:`CosineNorm` (Luo et al. 2017, "Cosine Normalization"): the output is
  ``scale · cos(w, x)``, dividing by ‖x‖ as well, so pre-activations are bounded in
  [−scale, scale].

Supported layers: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (padding_mode 'zeros'); the
forward pass calls ``F.linear`` / ``F.conv1d`` / ``F.conv2d`` with the layer's own stride,
padding, dilation and groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_FUNCS = {nn.Linear: F.linear, nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


class _WrappedLayer(nn.Module):
    """The layer's map, minus its weight: ``self._map(x, w, bias)`` applies it with ``w``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        kind = type(layer)
        if kind not in _FUNCS:
            raise ValueError(f"{type(self).__name__} wraps nn.Linear, nn.Conv1d or nn.Conv2d, "
                             f"not {kind.__name__}; put the norm on one of those layers")
        if kind is not nn.Linear and layer.padding_mode != "zeros":
            raise ValueError(f"{type(self).__name__} supports padding_mode='zeros' only (got "
                             f"{layer.padding_mode!r}); build the conv with zero padding")
        self.kind = kind.__name__
        self._func = _FUNCS[kind]
        self._conv_args = {} if kind is nn.Linear else {
            "stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
            "groups": layer.groups}
        self.out_features = layer.weight.shape[0]
        self.keep_weight = False  # a probe sets it: the next forward keeps its weight
        self.used_weight: Tensor | None = None  # that weight, its gradient retained

    def effective_weight(self) -> Tensor:
        """The weight the layer's map is applied with (shape of the layer's weight)."""
        raise NotImplementedError

    def _used(self, w: Tensor) -> Tensor:
        """``w``; kept (gradient retained) when a probe asked for it."""
        if self.keep_weight:
            if w.requires_grad:
                w.retain_grad()
            self.used_weight = w
        return w

    def _map(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return self._func(x, w, bias, **self._conv_args)

    def _unit_norm(self, w: Tensor, eps: float = 0.0) -> Tensor:
        """sqrt(‖w‖² + eps) per output unit over its input axes, shaped (out, 1, ...)."""
        sq = w.flatten(1).square().sum(dim=1)  # (out,)
        return torch.sqrt(sq + eps).view((-1,) + (1,) * (w.dim() - 1))  # (out, 1, ...)

    def _check_input(self, x: Tensor) -> None:
        if self.kind != "Linear" and x.dim() != len(self._conv_args["stride"]) + 2:
            raise ValueError(f"{type(self).__name__} around a {self.kind} expects a batched "
                             f"input (B, C, *spatial); got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        args = "".join(f", {k}={v}" for k, v in self._conv_args.items())
        shape = "x".join(str(d) for d in self.weight.shape)
        return f"{self.kind}(weight {shape}{args})"


class WeightNorm(_WrappedLayer):
    """A linear/conv layer with ``w = g · v / ‖v‖``: decouples magnitude from direction.

    Paper: Salimans & Kingma 2016, "Weight Normalization".
    Formula: ``y = layer(x; w = g · v / ‖v‖) + bias``.
    Reduction: ‖v‖ per output unit over all its input axes (dim 0 kept); no data statistics.
    Train vs eval: identical.
    Args: layer (nn.Linear, nn.Conv1d or nn.Conv2d; its weight initializes v, its bias is
    kept). Parameters: ``v`` (shape of the layer's weight), ``g`` (out,), initialized to ‖v‖
    so the wrapped layer first computes exactly what ``layer`` did, and ``bias``;
    :func:`data_dependent_init` gives the paper's initialization instead.
    Shapes: those of ``layer``.
    Example (invariance): scaling ``v`` by any c > 0 leaves the output unchanged; the output
    equals ``torch.nn.utils.parametrizations.weight_norm(layer)``'s.
    """

    def __init__(self, layer: nn.Module):
        super().__init__(layer)
        self.v = nn.Parameter(layer.weight.detach().clone())
        self.g = nn.Parameter(self._unit_norm(self.v.detach()).flatten())  # (out,)
        self.bias = layer.bias

    @property
    def weight(self) -> Tensor:
        """The effective weight ``g · v / ‖v‖``, shaped like the layer's weight."""
        g = self.g.view((-1,) + (1,) * (self.v.dim() - 1))  # (out, 1, ...)
        # torch's fused kernel (what parametrizations.weight_norm calls): v · g / ‖v‖ with
        # ‖v‖ over every axis but 0, forward and backward in one op each
        return torch._weight_norm(self.v, g, 0)

    def effective_weight(self) -> Tensor:
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self._map(x, self._used(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"


def data_dependent_init(model: nn.Module, x: Tensor, eps: float = 1e-8) -> int:
    """Salimans & Kingma 2016, section 3: set each :class:`WeightNorm` layer's ``g`` and
    ``bias`` from one batch ``x`` so that its output starts at mean 0 and variance 1 per
    unit; returns how many layers it initialized.

    Layer by layer in forward order (each sees the already-initialized layers below it):
    ``t = layer(x; w = v / ‖v‖, no bias)``; per output unit, over the batch (and spatial
    positions for a conv), μ = mean(t) and σ = sqrt(var(t) + eps) (biased variance); then
    ``g = 1 / σ`` and ``bias = −μ / σ`` (left out if the layer has no bias). ``v`` is
    unchanged, so the direction keeps its random init. Runs in the model's current mode
    under no_grad; draws no random numbers.
    """
    layers = [m for m in model.modules() if isinstance(m, WeightNorm)]

    def init(module: WeightNorm, inputs, output):
        x_in = inputs[0]
        t = module._map(x_in, module.v / module._unit_norm(module.v), None)  # (B, out, *S)
        dims = (0, *range(2, t.dim()))
        mean = t.mean(dim=dims)  # (out,)
        std = torch.sqrt(t.var(dim=dims, unbiased=False) + eps)  # (out,)
        module.g.copy_(1.0 / std)
        if module.bias is not None:
            module.bias.copy_(-mean / std)
        return module._map(x_in, module.weight, module.bias)  # what the next layer sees

    handles = [m.register_forward_hook(init) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return len(layers)


class MeanOnlyBatchNorm(nn.Module):
    """Centre each feature over the mini-batch, then add a learnable bias; no scaling.

    Paper: Salimans & Kingma 2016, section 3 (used after a weight-normalized layer).
    Formula: ``h = x − μ_B + b``.
    Reduction: per channel over B (MLP) or B and space (CNN); mean only.
    Train vs eval: train subtracts the batch mean and updates ``running_mean``
    (``(1 − momentum) · r + momentum · μ_B``); eval subtracts the running mean.
    Args: num_features (C), momentum (in (0, 1]).
    Shapes: (B, C), (B, C, L) or (B, C, H, W) → same. Train needs > 1 value per channel.
    Example (invariance): in train mode the output ignores a per-channel shift of the input.
    """

    def __init__(self, num_features: int, momentum: float = 0.1):
        super().__init__()
        if not (isinstance(num_features, int) and num_features >= 1):
            raise ValueError(f"num_features must be a positive integer (got {num_features!r})")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1] (got {momentum}); the usual value is 0.1")
        self.num_features, self.momentum = num_features, momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"MeanOnlyBatchNorm({self.num_features}) expects input (B, "
                             f"{self.num_features}, ...); got {tuple(x.shape)}")
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        if not self.training:
            return x - (self.running_mean - self.bias).view(shape)
        if x.numel() // self.num_features < 2:
            raise ValueError(f"MeanOnlyBatchNorm needs more than one value per channel in "
                             f"training, got input {tuple(x.shape)}: use a batch of at least 2 "
                             "examples, or call .eval() to use the running mean")
        mean = x.mean(dim=(0, *range(2, x.dim())), keepdim=True)  # (1, C, 1, ...)
        with torch.no_grad():
            self.running_mean.lerp_(mean.flatten(), self.momentum)  # (C,)
        return x - mean + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class CosineNorm(_WrappedLayer):
    """A linear/conv layer whose output is ``scale · cos(w, x)``: bounded pre-activations.

    Paper: Luo et al. 2017, "Cosine Normalization: Using Cosine Similarity Instead of Dot
    Product in Neural Networks".
    Formula: ``y_j = scale · (w_j · x) / (‖w_j‖ · ‖x‖)``; the layer's bias is dropped (a bias
    would break the bound and the invariances).
    Reduction: ‖w_j‖ per output unit over its input axes; ‖x‖ over the inputs unit j sees:
    the whole input vector (Linear) or each receptive-field patch (convs: computed as
    ``sqrt(conv(x², ones) + eps)``, eps = 1e-12 so an all-zero patch gives 0, not 0/0).
    Train vs eval: identical.
    Args: layer (nn.Linear, nn.Conv1d or nn.Conv2d; its weight initializes w), scale (initial
    output scale), learn_scale (False: scale is a fixed buffer).
    Shapes: those of ``layer``; every output lies in [−|scale|, |scale|].
    Example (invariance): the output is unchanged by scaling w by c > 0 or x by c > 0.
    """

    eps = 1e-12

    def __init__(self, layer: nn.Module, scale: float = 5.0, learn_scale: bool = True):
        super().__init__(layer)
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.learn_scale = learn_scale
        scale_t = torch.tensor(float(scale), dtype=self.weight.dtype, device=self.weight.device)
        if learn_scale:
            self.scale = nn.Parameter(scale_t)
        else:
            self.register_buffer("scale", scale_t)
        if self.kind != "Linear":  # ones kernel summing x² over each patch, per conv group
            groups, in_per_group = self._conv_args["groups"], self.weight.shape[1]
            ones = torch.ones((groups, in_per_group) + tuple(self.weight.shape[2:]),
                              dtype=self.weight.dtype, device=self.weight.device)
            self.register_buffer("_ones", ones, persistent=False)  # (groups, in/groups, *k)

    def effective_weight(self) -> Tensor:
        """``scale · w / ‖w‖`` per output unit: the weight applied to ``x / ‖x‖``."""
        return self.weight * (self.scale / self._unit_norm(self.weight, self.eps))

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        w_hat = self._used(self.effective_weight())  # scale·w/‖w‖
        y = self._map(x, w_hat, None)  # (B, out) or (B, out, *spatial)
        if self.kind == "Linear":
            return y / torch.sqrt(x.square().sum(dim=-1, keepdim=True) + self.eps)  # ÷ (B, 1)
        groups = self._conv_args["groups"]
        sq = self._func(x.square(), self._ones, None, **self._conv_args)  # (B, groups, *spatial)
        y = y.unflatten(1, (groups, -1))  # (B, groups, out // groups, *spatial)
        return (y / torch.sqrt(sq + self.eps).unsqueeze(2)).flatten(1, 2)  # (B, out, *spatial)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, scale={float(self.scale.detach()):.4g}, "
                f"learn_scale={self.learn_scale}")
