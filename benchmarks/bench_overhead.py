"""Probe overhead: the instrumented trainer against a bare PyTorch loop, in one process.

Same model (built by normlab from the same config), data, seed and batch order; one torch
thread. The trainer records every probe at record interval 1. For reference it also times
the common alternative: TensorBoard-style histograms of every layer's activations and
gradients each step (``torch.histc`` per tensor plus a ``.tolist()`` per histogram, which
is what ``SummaryWriter.add_histogram`` does before writing; no tensorboard install needed).

Usage: python benchmarks/bench_overhead.py [--steps 2000] [--repeats 3]
The last line printed is ``probe overhead X.XXx`` (best trainer time / best bare time).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import bare
from normlab.config import RunConfig
from normlab.models import build_model
from normlab.train import Trainer, load_for, make_optimizer


def tensorboard_style(cfg: RunConfig, data) -> float:
    """Bare loop + a 64-bin histogram of every module output and parameter gradient."""
    torch.manual_seed(cfg.seed)
    x_train = data.view(data.x_train, cfg.model)
    model = build_model(cfg, tuple(data.input_shape), data.num_classes)
    opt = make_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.y_train)
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
               for m in model.modules() if not list(m.children())]
    start = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        loss = F.cross_entropy(model(x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        loss.item()
        for t in outputs + [p.grad for p in model.parameters()]:
            lo, hi = t.min().item(), t.max().item()  # one sync per value, as add_histogram does
            torch.histc(t.float(), bins=64, min=lo, max=hi).tolist()
            t.float().pow(2).sum().item()
        outputs.clear()
    elapsed = time.perf_counter() - start
    for h in handles:
        h.remove()
    return elapsed


def instrumented(cfg: RunConfig, data) -> float:
    trainer = Trainer(cfg, data)
    start = time.perf_counter()
    for _ in trainer.batches(flush_seconds=1.0):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(dataset="digits", model="mlp", depth=3, width=100, activation="sigmoid",
                    norm="batch", batch_size=64, steps=args.steps, record_interval=1,
                    eval_interval=args.steps, seed=0)
    data = load_for(cfg)
    instrumented(cfg.replace(steps=50), data)  # warm-up: torch's lazy imports, allocator
    bare(cfg.replace(steps=50), data)
    times = {"bare": [], "trainer": [], "tensorboard": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        times["bare"].append(bare(cfg, data))
        times["trainer"].append(instrumented(cfg, data))
    times["tensorboard"].append(tensorboard_style(cfg.replace(steps=args.steps // 10), data) * 10)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:12s} {v:7.3f}s  ({v / args.steps * 1e6:7.1f} us/step)")
    print(f"tensorboard-style histograms {best['tensorboard'] / best['bare']:.1f}x bare "
          f"(timed on {args.steps // 10} steps, scaled)")
    print(f"probe overhead {best['trainer'] / best['bare']:.2f}x")


if __name__ == "__main__":
    main()
