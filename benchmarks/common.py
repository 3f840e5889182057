"""Shared by the benchmarks: the bare PyTorch loop every speed target is measured against."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from normlab.training.config import RunConfig
from normlab.training.models import build_model
from normlab.training.trainer import make_optimizer


def bare(cfg: RunConfig, data, setup=None) -> float:
    """The loop a person would write: no measurement at all, ``cfg.steps`` steps; returns
    their wall time. ``setup(model)``, if given, returns a per-step callback
    ``(step, loss_value)`` (used to time alternatives)."""
    segments = bare_segments(cfg, data, setup)
    next(segments)
    return segments.send(cfg.steps)


def bare_segments(cfg: RunConfig, data, setup=None):
    """:func:`bare` as a coroutine, to interleave it with another loop: ``send(k)`` runs
    the next ``k`` steps and returns their wall time (prime it with ``next``)."""
    torch.manual_seed(cfg.seed)
    x_train = data.view(data.x_train, cfg.model)
    model = build_model(cfg, tuple(data.input_shape), data.num_classes)
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
