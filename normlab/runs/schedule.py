"""Which queued run of a comparison a free worker takes next: the longest first.

A comparison's runs finish together only if the long ones start first: with 8 runs on 2
workers, a slow method (whitening, a weight-space wrapper) claimed last runs alone while
the other worker idles. So the store's claim (:meth:`normlab.runs.store.Store.claim_run`)
picks, within the comparison whose turn it is, the queued run with the largest expected
duration ``total_steps / throughput`` (ties: lowest position, the submission order).

Throughput is what this machine measured: the median ``steps_per_sec`` of the last
:data:`HISTORY` finished (``done``) runs of the same *method and size* — the same norm,
model, dataset, depth, width and batch size. A run with no such history is given the
slowest throughput measured for any method at its size (unknown runs go early: a long one
started last is the costly mistake); with no history at its size either, every such run
gets the same throughput and the order is by steps, then position.
"""
from __future__ import annotations

import json
import sqlite3
import statistics
from collections.abc import Sequence

HISTORY = 5  # finished runs per method and size whose throughput is averaged (median)
SIZE_FIELDS = ("norm", "model", "dataset", "depth", "width", "batch_size")  # "method and size"


def size_key(config: dict) -> tuple:
    """The (method, size) a run's throughput is looked up by."""
    return tuple(config.get(f) for f in SIZE_FIELDS)


def measured_throughput(conn: sqlite3.Connection, sizes: set[tuple]) -> dict[tuple, float]:
    """Median steps/s of the last :data:`HISTORY` finished runs of each (method, size) with
    a size in ``sizes`` (a size: the key without the method) that has any."""
    found: dict[tuple, list[float]] = {}
    models = sorted({s[0] for s in sizes if s[0] is not None})
    if not models:
        return {}
    rows = conn.execute(
        "SELECT norm, model, dataset, json_extract(config, '$.depth'), "
        "json_extract(config, '$.width'), json_extract(config, '$.batch_size'), steps_per_sec "
        "FROM runs WHERE status = 'done' AND steps_per_sec > 0 AND model IN "
        f"({', '.join('?' * len(models))}) ORDER BY finished_at DESC", models)
    for row in rows:
        key, sps = tuple(row[:6]), row[6]
        if key[1:] in sizes and len(found.setdefault(key, [])) < HISTORY:
            found[key].append(sps)
    return {k: statistics.median(v) for k, v in found.items()}


def longest_first(conn: sqlite3.Connection, queued: Sequence[tuple[str, str, int]]) -> int:
    """Index into ``queued`` — (run id, config JSON, position) of one comparison's claimable
    runs — of the run expected to take longest (see the module docstring)."""
    configs = [json.loads(cfg) for _, cfg, _ in queued]
    keys = [size_key(c) for c in configs]
    known = measured_throughput(conn, {k[1:] for k in keys})
    slowest: dict[tuple, float] = {}  # per size, over every method measured at it
    for k, sps in known.items():
        slowest[k[1:]] = min(sps, slowest.get(k[1:], sps))
    expected = [(c.get("steps") or 0) / known.get(k, slowest.get(k[1:], 1.0))
                for c, k in zip(configs, keys)]
    return max(range(len(queued)), key=lambda i: (expected[i], -queued[i][2]))
