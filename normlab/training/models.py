"""Models that take a normalization *name*: an MLP and a small CNN built from blocks.

A block is ``layer → norm → activation`` (or ``layer → activation → norm`` with
``norm_position="after"``), built through :func:`normlab.methods.registry.build_norm`, so every
method applies to every layer, weight-space ones included. Blocks have stable, readable
names — ``hidden1``, ``hidden2``, ... (MLP) and ``conv1``, ``conv2``, ... (CNN); the
head is ``out`` — and these names appear in every chart.

Inits (applied to the raw layer before any weight-space wrapping): ``default`` (torch's),
``xavier`` (Glorot & Bengio 2010, gain of the activation), ``kaiming`` (He et al. 2015),
``normal`` (N(0, 1)); every init's standard deviation is multiplied by ``init_scale``, so a
badly scaled network — where normalization matters most — is one setting away.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from normlab.training.config import RunConfig
from normlab.methods.registry import build_norm

ACTIVATION_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
_GAIN_NAMES = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "gelu": "relu"}


def init_layer(layer: nn.Module, scheme: str, scale: float, activation: str) -> None:
    """Initialize ``layer.weight`` (and zero the bias, except for torch's default)."""
    w = layer.weight
    with torch.no_grad():
        if scheme == "xavier":
            nn.init.xavier_normal_(w, gain=nn.init.calculate_gain(_GAIN_NAMES[activation]))
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif scheme == "normal":
            nn.init.normal_(w, 0.0, 1.0)
        elif scheme != "default":
            raise ValueError(f"unknown init {scheme!r}; choose default, xavier, kaiming or normal")
        w.mul_(scale)
        if scheme != "default" and layer.bias is not None:
            layer.bias.zero_()


class Block(nn.Module):
    """``layer → norm → act`` (position "before") or ``layer → act → norm`` ("after")."""

    def __init__(self, layer: nn.Module, norm: nn.Module, act: nn.Module, position: str):
        super().__init__()
        self.layer, self.norm, self.act = layer, norm, act
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # submodules read from ``_modules`` directly (as ``nn.Sequential`` does): the same
        # modules as ``self.layer`` etc., without nn.Module's ``__getattr__`` per access
        modules = self._modules
        z = modules["layer"](x)
        if self.position == "before":
            return modules["act"](modules["norm"](z))
        return modules["norm"](modules["act"](z))

    def extra_repr(self) -> str:
        return f"norm {self.position} activation"


def _block(cfg: RunConfig, layer: nn.Module, features: int, conv: bool) -> Block:
    init_layer(layer, cfg.init, cfg.init_scale, cfg.activation)
    layer, norm = build_norm(cfg.norm, layer, features, conv=conv, options=cfg.norm_options())
    return Block(layer, norm, ACTIVATION_MODULES[cfg.activation](), cfg.norm_position)


class MLP(nn.Module):
    """input → ``depth`` blocks of ``width`` units → linear head ``out``."""

    def __init__(self, cfg: RunConfig, in_features: int, num_classes: int):
        super().__init__()
        self.block_names: list[str] = []  # blocks are direct children, so names stay "hidden1"
        features = in_features
        for i in range(1, cfg.depth + 1):
            self.block_names.append(f"hidden{i}")
            self.add_module(f"hidden{i}", _block(cfg, nn.Linear(features, cfg.width), cfg.width,
                                                 False))
            features = cfg.width
        self.out = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, F)
        modules = self._modules  # see Block.forward
        for name in self.block_names:
            x = modules[name](x)
        return modules["out"](x)


class CNN(nn.Module):
    """``depth`` conv blocks (3-wide kernels, ``width`` channels), 2× max-pooling after a
    block while the spatial size is at least 4, global average pooling, linear head ``out``.
    1-D convs for signals (input (B, 1, L)), 2-D convs for images (B, 1, H, W)."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"a CNN needs (channels, length) or (channels, H, W) inputs, got "
                             f"per-example shape {input_shape}; use model 'mlp'")
        dims = len(input_shape) - 1
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        pool_cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.block_names: list[str] = []
        self.pools: dict[str, nn.Module] = {}  # parameter-free, so not registered
        channels, size = input_shape[0], min(input_shape[1:])
        for i in range(1, cfg.depth + 1):
            name = f"conv{i}"
            conv = conv_cls(channels, cfg.width, kernel_size=3, padding=1)
            self.block_names.append(name)
            self.add_module(name, _block(cfg, conv, cfg.width, True))
            channels = cfg.width
            if size >= 4:
                self.pools[name] = pool_cls(2)
                size //= 2
        self.out = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = self._modules  # see Block.forward
        for name in self.block_names:
            x = modules[name](x)
            if name in self.pools:
                x = self.pools[name](x)
        return modules["out"](x.flatten(2).mean(2))  # (B, C, *S) → (B, C) → (B, classes)


def build_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model a config describes, for examples of ``input_shape`` (per example)."""
    if cfg.model == "mlp":
        return MLP(cfg, math.prod(input_shape), num_classes)
    if cfg.model == "cnn":
        return CNN(cfg, input_shape, num_classes)
    raise ValueError(f"unknown model {cfg.model!r}; choose mlp or cnn")
