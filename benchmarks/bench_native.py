"""Native speed: each method's NormLab model step against the torch.nn model a person writes.

For every method and model kind — MLP (digits, 3×100 sigmoid, batch 64) and CNN (digits,
3 conv blocks of width 32, ReLU, batch 64) — NormLab's model (``build_model``, no probes)
and the torch.nn model for the same config (``benchmarks/common.py``: ``nn.BatchNorm1d/2d``,
``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.InstanceNorm2d(affine=True)``, ``nn.RMSNorm``,
``parametrizations.weight_norm``) train with the same data, seed and batches, in one
process, one torch thread. They advance in alternating segments of ~``--segment`` seconds
(which one goes first alternates too), so a slow second of this shared machine slows both
alike. A repeat is ``--segments`` segments of each; its ratio is NormLab time / torch.nn
time. Each repeat's ratio is printed, then the median.

Methods torch has no layer for (``batch_renorm``, ``cosine``, ``whiten``) are timed against
the ``nn.BatchNorm`` model, marked ``vs batch``; they are not in the worst ratio.

Usage: python benchmarks/bench_native.py [--repeats 5] [--segments 4] [--segment 0.05]
       [--methods batch,layer] [--models mlp,cnn]
The last line is ``worst ratio X.XXx (method, model)`` over the methods with a torch.nn
counterpart; the target is ≤ 1.05×.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from common import COUNTERPARTS, counterpart, native_model, step_segments  # noqa: E402
from normlab.methods.registry import NORM_NAMES, NORMS
from normlab.training.config import RunConfig
from normlab.training.models import build_model
from normlab.training.trainer import load_for

CONFIGS = {
    "mlp": RunConfig(dataset="digits", model="mlp", depth=3, width=100, activation="sigmoid",
                     batch_size=64, seed=0),
    "cnn": RunConfig(dataset="digits", model="cnn", depth=3, width=32, activation="relu",
                     batch_size=64, seed=0),
}


def compare(cfg: RunConfig, data, repeats: int, segments: int, segment: float
            ) -> tuple[list[float], float, float]:
    """(each repeat's NormLab/torch.nn time ratio, NormLab µs/step, torch.nn µs/step)."""
    ours = step_segments(cfg, data, build_model)
    native = step_segments(cfg.replace(norm=counterpart(cfg.norm)), data, native_model)
    next(ours)
    next(native)
    ours.send(20)  # warm-up: allocator, lazy imports
    native.send(20)
    per_step = ours.send(10) / 10  # sizes the segments
    k = max(2, round(segment / per_step))
    ratios, t_ours, t_native, steps = [], 0.0, 0.0, 0
    for _ in range(repeats):
        a = b = 0.0
        for s in range(segments):
            if s % 2 == 0:
                a += ours.send(k)
                b += native.send(k)
            else:
                b += native.send(k)
                a += ours.send(k)
        ratios.append(a / b)
        t_ours, t_native, steps = t_ours + a, t_native + b, steps + k * segments
    return ratios, t_ours / steps * 1e6, t_native / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", type=int, default=4, help="segments of each per repeat")
    parser.add_argument("--segment", type=float, default=0.05, help="seconds per segment")
    parser.add_argument("--methods", default=",".join(NORM_NAMES))
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst = (0.0, "", "")
    print(f"{'method':13s} {'model':5s} {'vs':6s} {'NormLab':>9s} {'torch.nn':>9s} "
          f"{'median':>7s}  each repeat")
    for model in args.models.split(","):
        base = CONFIGS[model]
        data = load_for(base)
        for name in args.methods.split(","):
            if name not in NORMS:
                raise SystemExit(f"unknown method {name!r}; choose from {', '.join(NORM_NAMES)}")
            if model not in NORMS[name].models:
                continue
            ratios, us_ours, us_native = compare(base.replace(norm=name), data, args.repeats,
                                                 args.segments, args.segment)
            median = statistics.median(ratios)
            vs = "own" if name in COUNTERPARTS else "batch"
            print(f"{name:13s} {model:5s} {vs:6s} {us_ours:7.0f}us {us_native:7.0f}us "
                  f"{median:6.2f}x  " + " ".join(f"{r:.3f}" for r in ratios), flush=True)
            if vs == "own" and median > worst[0]:
                worst = (median, name, model)
    print(f"worst ratio {worst[0]:.2f}x ({worst[1]}, {worst[2]})")


if __name__ == "__main__":
    main()
