"""Benchmark of reading a big sweep back: the final metrics of 1,000 runs (quick).

Fills a temp store with one comparison of ``--runs`` finished runs (an lr × method × seed
grid), each with 500 steps of the default metric set — train loss/acc/grad_norm every 5
steps, val loss/acc every 50 — then times what the sweep view and ``normlab show`` do:
``Store.runs`` of the comparison, ``Store.metrics`` of the validation accuracy,
:func:`normlab.views.sweep.final_values`, :func:`~normlab.views.sweep.sweep_frame` and
:func:`~normlab.views.sweep.aggregate` (best of 3). The last line is
``read finals of 1000 runs: X.XXs`` (target: under 1 s).

    python benchmarks/bench_sweep.py [--runs 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normlab.measure.schema import MODEL_LAYER, RecordBatch  # noqa: E402
from normlab.runs.store import Store  # noqa: E402
from normlab.training.config import RunConfig  # noqa: E402
from normlab.views import sweep  # noqa: E402

KEYS = [(MODEL_LAYER, "train", m) for m in ("loss", "acc", "grad_norm")] + \
       [(MODEL_LAYER, "val", m) for m in ("loss", "acc")]
STEPS, RECORD, EVAL = 500, 5, 50


def fill_store(path, n_runs: int = 1000) -> Store:
    """A store holding one finished sweep of ``n_runs`` runs (see the module docstring)."""
    store = Store(path)
    methods, seeds = ("none", "batch", "layer", "weight"), (0, 1)
    n_lr = max(1, -(-n_runs // (len(methods) * len(seeds))))
    lrs = [float(f"{v:.3g}") for v in np.geomspace(1e-3, 10, n_lr)]
    configs = [RunConfig(norm=m, lr=lr, seed=s, steps=STEPS).to_dict()
               for m in methods for lr in lrs for s in seeds][:n_runs]
    cid, ids = store.create_comparison(configs, name="bench sweep", grid={"lr": lrs})
    rng = np.random.default_rng(0)
    steps = np.arange(0, STEPS + 1, RECORD, dtype=np.int64)
    for rid in ids:
        values = rng.random((len(steps), len(KEYS)))
        values[steps % EVAL != 0, 3:] = np.nan
        store.append(rid, RecordBatch(steps, KEYS, values))
        store.finish(rid, "done", STEPS)
    return store


def read_finals(store: Store):
    """What the sweep view reads: every run's last validation accuracy, per lr and method."""
    (cid,) = store.comparisons()["id"]
    runs = store.runs(comparison=cid)
    rows = store.metrics(list(runs["id"]), metrics=["acc"], sites=["val"])
    frame = sweep.sweep_frame(runs, sweep.final_values(rows, "last"), "lr")
    sweep.aggregate(frame)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = fill_store(Path(tmp) / "bench.sqlite", args.runs)
        print(f"filled {args.runs} runs in {time.perf_counter() - t:.1f}s")
        times = []
        for _ in range(3):
            t = time.perf_counter()
            frame = read_finals(store)
            times.append(time.perf_counter() - t)
        assert len(frame) == args.runs and frame["value"].notna().all()
        print(f"read finals of {args.runs} runs: {min(times):.2f}s")
        store.close()


if __name__ == "__main__":
    main()
