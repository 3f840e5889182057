"""Lab 2's opt-in measurements: their cost per layer and recorded step, against the model
step they ride on (MLP 3×64 sigmoid + BatchNorm, batch 64, one torch thread).

    python benchmarks/bench_decorrelation.py

Prints the best and the median of 7 repeats of 20 calls of
:meth:`normlab.measure.decorrelation.DecorrelationProbe.measure` for one 64-unit layer —
the over-training statistics (``decorrelation``, every recorded step), a snapshot
(``corr_snapshots``, a few steps per run), both — and of 50 training steps of the model.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from normlab.measure.decorrelation import DecorrelationProbe
from normlab.training.config import RunConfig
from normlab.training.models import build_model


def best_and_median(fn, calls: int, repeats: int = 7) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times), float(np.median(times))


def main() -> None:
    torch.set_num_threads(1)
    cfg = RunConfig(width=64, depth=3, norm="batch")
    model = build_model(cfg, (64,), 10)
    x, y = torch.randn(64, 64), torch.randn(64, 64)
    norm = model.hidden1.norm
    for label, curves, snaps in (("curves", 1, ()), ("snapshot", 0, (0,)), ("both", 1, (0,))):
        probe = DecorrelationProbe(model, 16, curves_every=curves, snapshots=snaps)
        probe.arm(0)
        best, median = best_and_median(lambda: probe.measure("hidden1", norm, x, y), 20)
        probe.flush()
        print(f"{label:9s} {best * 1e6:7.0f} µs per layer (median {median * 1e6:.0f})")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xb, yb = torch.randn(64, 64), torch.randint(0, 10, (64,))

    def step():
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    best, median = best_and_median(step, 50)
    print(f"model step {best * 1e6:6.0f} µs (median {median * 1e6:.0f})")


if __name__ == "__main__":
    main()
