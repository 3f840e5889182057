"""Engine throughput: a comparison through the engine against bare sequential PyTorch.

(a) 8 methods × 1,000 steps (digits, MLP 3×100 sigmoid, batch 64, every probe at record
    interval 1) submitted to the engine, timed from submission until every run is done
    and stored — the engine already up (the dashboard starts it when it starts), so this
    includes each run's start-up in a worker (data, model, store writes) but not the
    one-off engine boot, which is reported separately;
(b) the same 8 runs one after another in one process: the torch.nn loop a person writes
    (``benchmarks/common.py``: each method's torch.nn layer, ``nn.BatchNorm1d`` for the
    methods torch has none for), no probes, no store, model building included.

The two alternate, ``--repeats`` times each (the engine stays up, idle, while (b) runs:
its two workers poll the queue 20 times a second each).

Also printed: time from submission to the first stored point, store write throughput
and the engine's cold boot. The last line is ``engine/bare-sequential X.XXx``; the target
is ≤ 0.6×.

Usage: python benchmarks/bench_compare.py [--steps 1000] [--workers N] [--repeats 2]
       [--record-interval 1]   (best of --repeats on each side, the sides interleaved)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from common import bare  # noqa: E402
from normlab.runs.comparisons import submit
from normlab.training.config import RunConfig
from normlab.runs.engine import engine_pid, ensure_engine, stop_engine
from normlab.runs.store import Store
from normlab.training.trainer import load_for

METHODS = ["none", "batch", "layer", "group", "rms", "batch_renorm", "weight", "cosine"]


def wait_until(predicate, timeout=300.0, poll=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError("benchmark condition not met")


def through_engine(store: Store, configs: list[RunConfig]) -> dict[str, float]:
    t0 = time.monotonic()
    cid, run_ids = submit(configs, store=store)
    first = wait_until(lambda: store.metrics_since(run_ids, 0, metrics=["loss"])[0].shape[0] > 0)
    # poll gently: this process shares the two cores with the workers it is timing
    done = wait_until(lambda: store.unfinished() == 0, poll=0.05)
    runs = store.runs(comparison=cid)
    values = len(store.metrics(comparison=cid))
    busy = (runs.finished_at - runs.started_at).sum()
    return {"wall": done - t0, "first": first - t0, "values": values, "busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2, help="best of this many, each side")
    parser.add_argument("--record-interval", type=int, default=1,
                        help="probes measure every this many steps (the target is set at 1)")
    args = parser.parse_args()
    base = RunConfig(dataset="digits", model="mlp", depth=3, width=100, activation="sigmoid",
                     batch_size=64, steps=args.steps, record_interval=args.record_interval, eval_interval=100)
    configs = [base.replace(norm=m) for m in METHODS]
    torch.set_num_threads(1)
    data = load_for(base)
    engine_runs, sequential_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        store = Store(path)
        t0 = time.monotonic()
        ensure_engine(path, workers=args.workers)
        warm = through_engine(store, [base.replace(steps=5)] * args.workers)  # boot + warm-up
        boot = time.monotonic() - t0
        for _ in range(args.repeats):  # interleaved, so a slow minute hits both sides
            engine_runs.append(through_engine(store, configs))
            start = time.perf_counter()
            for cfg in configs:
                bare(cfg, data)
            sequential_runs.append(time.perf_counter() - start)
        assert engine_pid(path) is not None
        stop_engine(path)
    engine = min(engine_runs, key=lambda r: r["wall"])
    sequential = min(sequential_runs)

    print(f"engine cold boot (start + warm-up + {args.workers} tiny runs): {boot:.2f}s "
          f"(first tiny run's point after {warm['first']:.2f}s)")
    print(f"(a) engine, {len(configs)} methods x {args.steps} steps, {args.workers} workers: "
          f"{engine['wall']:.2f}s wall; first point after {engine['first']:.2f}s")
    print(f"    stored {engine['values']:,} values: {engine['values'] / engine['wall']:,.0f} values/s")
    print(f"(b) bare sequential, single process: {sequential:.2f}s")
    print("each repeat, engine/bare: " + ", ".join(
        f"{e['wall']:.2f}/{b:.2f}s = {e['wall'] / b:.2f}" for e, b in zip(engine_runs, sequential_runs)))
    print(f"engine/bare-sequential {engine['wall'] / sequential:.2f}x")


if __name__ == "__main__":
    main()
