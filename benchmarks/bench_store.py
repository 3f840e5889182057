"""Benchmark of the run store's metric writes and reads (normlab.runs.store), on a temp file.

Writes 100 runs x 5,000 steps of the default metric set — train loss/acc/grad_norm every
step, val loss/acc every 100 steps — in appends of 200 steps, interleaved across runs as
concurrent workers would write them; prints the write throughput, the time to read it
all into a DataFrame with ``Store.metrics`` (best of 3), and the time to read one run's
full per-layer metrics (3 layers x 3 sites x 38 metrics x 2,000 steps). The last line is
``read 100x5000 default metrics: X.XXs`` (target: under 1 s).

    python benchmarks/bench_store.py [--runs 100] [--steps 5000] [--flush 200]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normlab.measure.schema import ACT_SITES, HIST_METRICS, MODEL_LAYER, RecordBatch  # noqa: E402
from normlab.runs.store import Store  # noqa: E402

DEFAULT_KEYS = [(MODEL_LAYER, "train", m) for m in ("loss", "acc", "grad_norm")] + \
               [(MODEL_LAYER, "val", m) for m in ("loss", "acc")]
LAYER_METRICS = ("mean", "var", "p15", "p50", "p85", *HIST_METRICS, "saturated")  # 38


def default_batch(rng: np.random.Generator, lo: int, hi: int, eval_interval: int = 100):
    steps = np.arange(lo, hi, dtype=np.int64)
    values = rng.random((len(steps), len(DEFAULT_KEYS)))
    values[steps % eval_interval != 0, 3:] = np.nan  # val metrics only every eval interval
    return RecordBatch(steps, DEFAULT_KEYS, values)


def best_of(n: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_default(store: Store, n_runs: int, n_steps: int, flush: int) -> float:
    rng = np.random.default_rng(0)
    configs = [{"norm": ("batch", "layer", "none", "group")[i % 4], "seed": i // 4,
                "steps": n_steps} for i in range(n_runs)]
    cid, run_ids = store.create_comparison(configs, name="bench")
    written = 0
    t0 = time.perf_counter()
    for lo in range(0, n_steps, flush):
        for rid in run_ids:
            written += store.append(rid, default_batch(rng, lo, min(lo + flush, n_steps)))
    dt = time.perf_counter() - t0
    appends = len(run_ids) * -(-n_steps // flush)
    print(f"write: {written:,} rows in {appends:,} appends of {flush} steps: {dt:.2f}s "
          f"= {written / dt:,.0f} rows/s, {appends / dt:,.0f} appends/s")
    seconds, frame = best_of(3, lambda: store.metrics(comparison=cid))
    assert len(frame) == written, (len(frame), written)
    print(f"read: {len(frame):,} rows, {frame.memory_usage(deep=True).sum() / 1e6:.0f} MB "
          f"frame, best of 3: {seconds:.3f}s")
    seconds_loss, loss = best_of(3, lambda: store.metrics(comparison=cid, metrics="loss",
                                                           sites="train", every=10))
    print(f"read train loss every 10th step of all runs: {len(loss):,} rows in "
          f"{seconds_loss:.3f}s")
    after = store.metrics_since(run_ids, 0)[1]
    store.append(run_ids[0], default_batch(rng, n_steps, n_steps + flush))
    seconds_poll, (new, _) = best_of(3, lambda: store.metrics_since(run_ids, after))
    print(f"incremental poll after one append: {len(new):,} rows in {seconds_poll * 1e3:.1f}ms")
    return seconds


def bench_layers(store: Store, n_steps: int = 2000, flush: int = 200) -> None:
    rng = np.random.default_rng(1)
    keys = [(f"hidden{i}", site, m) for i in (1, 2, 3) for site in ACT_SITES
            for m in LAYER_METRICS]
    _, (rid,) = store.create_comparison([{"norm": "batch", "steps": n_steps}], name="layers")
    t0 = time.perf_counter()
    for lo in range(0, n_steps, flush):
        steps = np.arange(lo, lo + flush, dtype=np.int64)
        store.append(rid, RecordBatch(steps, keys, rng.random((flush, len(keys)))))
    dt = time.perf_counter() - t0
    total = len(keys) * n_steps
    print(f"write per-layer: {total:,} rows ({len(keys)} series) in {dt:.2f}s "
          f"= {total / dt:,.0f} rows/s")
    seconds, frame = best_of(3, lambda: store.metrics(rid, sites=ACT_SITES))
    assert len(frame) == total
    print(f"read one run's per-layer metrics: {len(frame):,} rows, best of 3: {seconds:.3f}s")
    seconds, frame = best_of(3, lambda: store.metrics(rid, sites="post_act",
                                                      metrics=["p15", "p50", "p85"]))
    print(f"read one run's post_act percentiles: {len(frame):,} rows in {seconds:.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--flush", type=int, default=200, help="steps per append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        with Store(path) as store:
            seconds = bench_default(store, args.runs, args.steps, args.flush)
            bench_layers(store)
            print(f"store file: {os.path.getsize(path) / 1e6:.0f} MB")
    print(f"read {args.runs}x{args.steps} default metrics: {seconds:.2f}s")


if __name__ == "__main__":
    main()
