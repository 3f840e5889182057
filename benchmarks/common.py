"""Shared by the benchmarks: the torch.nn model and loop a person writes, which every speed
target is measured against.

:func:`native_model` is the same architecture as NormLab's model for a config (blocks
``layer → norm → activation``, 3-wide convs with 2× max-pooling while the size is ≥ 4,
global average pooling, linear head; the same init), written with ``torch.nn`` layers:
``nn.BatchNorm1d/2d``, ``nn.LayerNorm`` (``nn.GroupNorm(1, C)`` on conv features),
``nn.GroupNorm``, ``nn.InstanceNorm1d/2d(affine=True)``, ``nn.RMSNorm`` (over C, or C and
space), ``torch.nn.utils.parametrizations.weight_norm``. Methods torch has no layer for
(``batch_renorm``, ``cosine``, ``whiten``) get the ``nn.BatchNorm`` model: that is what they
are compared with. :func:`bare_segments` is the loop a person writes around it.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# Benchmarks time the compiled statistics kernels (compiled in the warm-up if needed), never
# the numpy fallback a fresh machine uses until they are (normlab.measure.backends); an
# engine a benchmark starts inherits this.
os.environ.setdefault("NORMLAB_KERNELS", "compiled")

from normlab.training.config import RunConfig  # noqa: E402
from normlab.training.models import ACTIVATION_MODULES, build_model, init_layer  # noqa: E402
from normlab.training.trainer import make_optimizer  # noqa: E402

COUNTERPARTS = {  # method → the torch.nn layer a person writes for it
    "none": "no norm layer",
    "batch": "nn.BatchNorm1d/2d",
    "layer": "nn.LayerNorm (MLP), nn.GroupNorm(1, C) (CNN)",
    "group": "nn.GroupNorm",
    "instance": "nn.InstanceNorm1d/2d(affine=True)",
    "rms": "nn.RMSNorm over C (MLP), over (C, H, W) (CNN)",
    "weight": "parametrizations.weight_norm",
}


def counterpart(name: str) -> str:
    """The method whose torch.nn model ``name`` is compared with (itself, or ``batch``)."""
    return name if name in COUNTERPARTS else "batch"


def _native_norm(cfg: RunConfig, channels: int, spatial: tuple[int, ...]) -> nn.Module:
    name, opts = counterpart(cfg.norm), cfg.norm_options()
    eps, dims = opts["eps"], len(spatial)
    if name in ("none", "weight"):
        return nn.Identity()
    if name == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=eps,
                                                                 momentum=opts["momentum"])
    if name == "layer":
        return nn.LayerNorm(channels, eps=eps) if dims == 0 else nn.GroupNorm(1, channels, eps)
    if name == "group":
        return nn.GroupNorm(min(opts["num_groups"], channels), channels, eps)
    if name == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm1d)(channels, eps, affine=True)
    if name == "rms":
        return nn.RMSNorm((channels, *spatial), eps=eps)
    raise AssertionError(name)


def native_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The torch.nn model a person writes for ``cfg`` (see the module docstring)."""
    act = ACTIVATION_MODULES[cfg.activation]
    wrap = weight_norm if cfg.norm == "weight" else (lambda layer: layer)
    layers: list[nn.Module] = []
    if cfg.model == "mlp":
        features = math.prod(input_shape)
        layers.append(nn.Flatten())
        for _ in range(cfg.depth):
            linear = nn.Linear(features, cfg.width)
            init_layer(linear, cfg.init, cfg.init_scale, cfg.activation)
            layers += [wrap(linear), _native_norm(cfg, cfg.width, ()), act()]
            features = cfg.width
        layers.append(nn.Linear(features, num_classes))
        return nn.Sequential(*layers)
    spatial = list(input_shape[1:])
    conv_cls = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    pool_cls = nn.MaxPool1d if len(spatial) == 1 else nn.MaxPool2d
    channels = input_shape[0]
    for _ in range(cfg.depth):
        conv = conv_cls(channels, cfg.width, kernel_size=3, padding=1)
        init_layer(conv, cfg.init, cfg.init_scale, cfg.activation)
        layers += [wrap(conv), _native_norm(cfg, cfg.width, tuple(spatial)), act()]
        channels = cfg.width
        if min(spatial) >= 4:
            layers.append(pool_cls(2))
            spatial = [s // 2 for s in spatial]
    layers += [nn.Flatten(2), _SpatialMean(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2)  # (B, C, S) → (B, C)


def normlab_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """NormLab's model for ``cfg`` (no probes)."""
    return build_model(cfg, input_shape, num_classes)


def step_segments(cfg: RunConfig, data, build=native_model, setup=None):
    """The training loop a person writes, as a coroutine to interleave with another loop:
    ``send(k)`` runs the next ``k`` steps and returns their wall time (prime it with
    ``next``). ``build(cfg, input_shape, num_classes)`` makes the model (default: the
    torch.nn one); ``setup(model)``, if given, returns a per-step callback
    ``(step, loss_value)`` (used to time alternatives). Seeded: same batches every time."""
    torch.manual_seed(cfg.seed)
    x_train = data.view(data.x_train, cfg.model)
    model = build(cfg, tuple(data.input_shape), data.num_classes)
    model.train()
    opt = make_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    on_step = setup(model) if setup else None
    n = len(data.y_train)
    step, elapsed = 0, 0.0
    while True:
        k = yield elapsed
        start = time.perf_counter()
        for i in range(k):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
            loss = F.cross_entropy(model(x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            value = loss.item()  # a person watches the loss too
            if on_step is not None:
                on_step(step + i, value)
        step += k
        elapsed = time.perf_counter() - start


def bare_segments(cfg: RunConfig, data, setup=None):
    """:func:`step_segments` with the torch.nn model: the bare loop of the targets."""
    return step_segments(cfg, data, native_model, setup)


def bare(cfg: RunConfig, data, setup=None) -> float:
    """The loop a person writes with torch.nn layers, no measurement at all: the wall time
    of its ``cfg.steps`` steps (model building not included)."""
    segments = bare_segments(cfg, data, setup)
    next(segments)
    return segments.send(cfg.steps)
