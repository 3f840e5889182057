"""A sweep through the local engine and through Ray on this machine: wall time and ratio.

40 runs (5 methods × 2 learning rates × 4 seeds; digits, MLP 3×64, ``--steps`` steps,
record interval 10) submitted once with ``backend="local"`` and once with
``backend="ray"``, each timed from submission until every run is done and stored. Both
backends are started and warmed first (one tiny run each, not timed): the local engine's
workers and Ray's (a local Ray instance with one worker per core, or the cluster at
``--ray-address``), as the dashboard and a standing cluster would be. On one machine
parity is what to expect — the same cores, one torch thread per run; the point is that
the same sweep runs unchanged on a cluster.

The last line is ``ray/local X.XXx`` (wall time through Ray over through the engine).

Usage: python benchmarks/bench_ray.py [--steps 300] [--ray-address ADDRESS]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from normlab.runs import raydriver  # noqa: E402
from normlab.runs.comparisons import expand, submit, wait_for  # noqa: E402
from normlab.runs.engine import ensure_engine, stop_engine  # noqa: E402
from normlab.runs.store import Store  # noqa: E402
from normlab.training.config import RunConfig  # noqa: E402

METHODS = ["none", "batch", "layer", "group", "rms"]
LRS = [0.1, 0.03]
SEEDS = [0, 1, 2, 3]


def sweep(steps: int) -> list[RunConfig]:
    base = RunConfig(dataset="digits", width=64, depth=3, steps=steps, batch_size=64,
                     record_interval=10, eval_interval=100)
    return expand(base, {"norm": METHODS, "lr": LRS, "seed": SEEDS})


def timed(store: Store, configs: list[RunConfig], backend: str, address: str | None) -> dict:
    t0 = time.monotonic()
    cid, run_ids = submit(configs, store=store, backend=backend, ray_address=address)
    statuses = wait_for(cid, store=store, poll=0.1, timeout=3600)
    wall = time.monotonic() - t0
    bad = {s for s in statuses.values() if s != "done"}
    if bad:
        raise SystemExit(f"{backend}: runs ended {bad}, see {store.path}.*.log")
    return {"wall": wall, "values": len(store.metrics(comparison=cid))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ray-address", default=None,
                        help="a Ray cluster (default: a local Ray instance on this machine)")
    args = parser.parse_args()
    raydriver.require_ray()
    configs = sweep(args.steps)
    warm = [RunConfig(dataset="digits", steps=5, width=8, depth=1, eval_interval=5)] * \
        (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        store = Store(path)
        try:
            t0 = time.monotonic()
            ensure_engine(path)
            wait_for(submit(warm, store=store, backend="local")[0], store=store, poll=0.05)
            boot_local = time.monotonic() - t0
            t0 = time.monotonic()
            wait_for(submit(warm, store=store, backend="ray", ray_address=args.ray_address)[0],
                     store=store, poll=0.05)
            boot_ray = time.monotonic() - t0
            print(f"{len(configs)} runs × {args.steps} steps; warm-up: engine {boot_local:.1f} s, "
                  f"ray {boot_ray:.1f} s (not timed below)", flush=True)
            local = timed(store, configs, "local", None)
            print(f"local engine: {local['wall']:.1f} s ({local['values']:,} values)", flush=True)
            ray = timed(store, configs, "ray", args.ray_address)
            print(f"ray:          {ray['wall']:.1f} s ({ray['values']:,} values)", flush=True)
        finally:
            stop_engine(path)
            raydriver.stop_driver(path)
            store.close()
    print(f"ray/local {ray['wall'] / local['wall']:.2f}x")


if __name__ == "__main__":
    main()
