"""Probe overhead: the instrumented trainer against the torch.nn loop a person writes.

The bare loop is the same architecture written with torch.nn layers (``nn.BatchNorm1d``;
``benchmarks/common.py``), not NormLab's model, with the same data, seed, init and batch
order, in one process; one torch thread. The trainer is NormLab's model with every probe
at record interval 1. So the ratio is everything NormLab costs over the loop a person
would write: its layers and its measurement. Target ≤ 1.15×. Two measurements:

* whole runs: the trainer's 2,000 steps and the bare loop's, alternately, ``--repeats``
  times each; best trainer time / best bare time;
* paired segments: the trainer and the bare loop advance in turns of ~0.1 s (the
  trainer yields its records every 0.1 s, then the bare loop runs as many steps), so a
  slow minute of this shared machine slows both alike; total trainer time / total bare
  time of each repeat, and their median. This is the figure the target is checked on:
  on this host whole runs minutes apart differ by up to 20%, which whole-run ratios
  inherit. The same pairing also gives the CPU-time ratio (every thread of the process):
  the probe's activation statistics run on a helper thread during the backward pass
  (``normlab.measure.probes``), so the wall ratio is what a user waits for with a second
  core free, and the CPU ratio is the work, which is what a second run on that core pays.

For reference it also times the common alternative: TensorBoard's
``SummaryWriter.add_histogram`` of every layer's output and every parameter's gradient
each step (the ``tensorboard`` package, a test-only dependency).

Usage: python benchmarks/bench_overhead.py [--steps 2000] [--repeats 3] [--record-interval 1]
       [--sample N] [--no-tensorboard]
The last line printed is ``probe overhead X.XXx`` (paired segments, median of repeats).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from common import bare, bare_segments  # noqa: E402
from normlab.training.config import RunConfig
from normlab.measure.probes import SAMPLE
from normlab.training.trainer import Trainer, load_for


def tensorboard(cfg: RunConfig, data, logdir: str) -> float:
    """Bare loop + ``SummaryWriter.add_histogram`` of every layer's output and every
    parameter's gradient each step: the common way to watch distributions."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(logdir)

    def setup(model):
        outputs: dict[str, torch.Tensor] = {}
        for name, m in model.named_modules():
            if not list(m.children()):
                m.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))

        def on_step(step, loss):
            writer.add_scalar("loss", loss, step)
            for name, out in outputs.items():
                writer.add_histogram(f"act/{name}", out, step)
            for name, p in model.named_parameters():
                writer.add_histogram(f"grad/{name}", p.grad, step)
        return on_step

    elapsed = bare(cfg, data, setup)
    writer.close()
    return elapsed


def instrumented(cfg: RunConfig, data, sample: int | None = SAMPLE) -> float:
    trainer = Trainer(cfg, data, probe_sample=sample)
    start = time.perf_counter()
    for _ in trainer.batches(flush_seconds=1.0):
        pass
    return time.perf_counter() - start


def paired(cfg: RunConfig, data, segment: float = 0.1, sample: int | None = SAMPLE
           ) -> tuple[float, float]:
    """Trainer time / bare time, the two advancing in turns of ~``segment`` seconds: the
    wall-time ratio, and the CPU-time ratio (this process's every thread: the probe's
    helper thread counts, so this is the work done, whichever core did it)."""
    trainer = Trainer(cfg, data, probe_sample=sample)
    other = bare_segments(cfg, data)
    next(other)
    trained = bare_time = trained_cpu = bare_cpu = 0.0
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in trainer.batches(flush_seconds=segment):
        trained += time.perf_counter() - start
        trained_cpu += time.process_time() - cpu
        cpu = time.process_time()
        bare_time += other.send(trainer.outcome.step - done)
        bare_cpu += time.process_time() - cpu
        done = trainer.outcome.step
        start, cpu = time.perf_counter(), time.process_time()
    trained += time.perf_counter() - start
    trained_cpu += time.process_time() - cpu
    return trained / bare_time, trained_cpu / bare_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record-interval", type=int, default=1,
                        help="probes measure every this many steps (the target is set at 1)")
    parser.add_argument("--sample", type=int, default=SAMPLE,
                        help="values per activation tensor behind percentiles and histograms "
                             f"(default {SAMPLE}: every value of an MLP layer at batch 64)")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="skip the (slow) TensorBoard reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(dataset="digits", model="mlp", depth=3, width=100, activation="sigmoid",
                    norm="batch", batch_size=64, steps=args.steps, record_interval=args.record_interval,
                    eval_interval=args.steps, seed=0)
    data = load_for(cfg)
    instrumented(cfg.replace(steps=50), data)  # warm-up: torch's lazy imports, allocator
    bare(cfg.replace(steps=50), data)
    times = {"bare": [], "trainer": [], "tensorboard": []}
    ratios = []
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        times["bare"].append(bare(cfg, data))
        times["trainer"].append(instrumented(cfg, data, args.sample))
        ratios.append(paired(cfg, data, sample=args.sample))
    if not args.no_tensorboard:
        with tempfile.TemporaryDirectory() as logdir:  # a tenth of the steps: it is slow
            times["tensorboard"].append(
                tensorboard(cfg.replace(steps=args.steps // 10), data, logdir) * 10)
    best = {k: min(v) for k, v in times.items() if v}
    for k, v in best.items():
        print(f"{k:12s} {v:7.3f}s  ({v / args.steps * 1e6:7.1f} us/step)")
    if "tensorboard" in best:
        print(f"tensorboard add_histogram every layer {best['tensorboard'] / best['bare']:.1f}x "
              f"bare (timed on {args.steps // 10} steps, scaled)")
    print(f"whole runs, best / best: {best['trainer'] / best['bare']:.2f}x")
    print("paired segments, CPU time (every thread), each repeat: "
          + ", ".join(f"{c:.3f}" for _, c in ratios)
          + f"; median {statistics.median(c for _, c in ratios):.2f}x")
    print("paired segments, wall time, each repeat: " + ", ".join(f"{r:.3f}" for r, _ in ratios))
    print(f"probe overhead {statistics.median(r for r, _ in ratios):.2f}x")


if __name__ == "__main__":
    main()
