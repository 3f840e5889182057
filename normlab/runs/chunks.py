"""Metric storage: a series of :class:`~normlab.measure.schema.RecordBatch` values as chunks of raw
bytes in the ``chunks`` table, and the filtered read back into tidy rows.

A series (run, layer, site, metric) is stored in chunks, one row per
:meth:`~normlab.runs.store.Store.append` and series, with its steps (int32) and values (float64)
as raw little-endian numpy bytes and its step range. Reading a few thousand blobs and
joining them is much faster than one SQL row per value (``benchmarks/bench_store.py``).
What callers see is always the tidy rows of :mod:`normlab.measure.schema`; NaN ("not measured")
is never stored. :class:`MetricQuery` says which rows to read: SQL narrows the chunks by
step range, a numpy mask then keeps single steps.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normlab.measure.schema import COLUMNS, RecordBatch
from normlab.runs.storedb import _as_list, _qmarks

STEP_DTYPE = np.dtype("<i4")
VALUE_DTYPE = np.dtype("<f8")
MAX_STEP = np.iinfo(np.int32).max


def chunk_rows(run_id: str, batch: RecordBatch) -> Iterator[tuple]:
    """``chunks`` rows for a batch: one per series with at least one measured value."""
    steps = np.asarray(batch.steps)
    values = np.asarray(batch.values, dtype=np.float64)
    if values.shape != (len(steps), len(batch.keys)):
        raise ValueError(f"RecordBatch values have shape {values.shape}; expected (steps, keys)"
                         f" = ({len(steps)}, {len(batch.keys)})")
    if len(steps) and (steps.min() < 0 or steps.max() > MAX_STEP):
        raise ValueError(f"steps must be in 0..{MAX_STEP}; got {steps.min()}..{steps.max()}")
    steps32 = steps.astype(STEP_DTYPE)
    if not np.array_equal(steps32, steps):
        raise ValueError("RecordBatch steps must be whole numbers")
    measured = ~np.isnan(values)
    full = measured.all(axis=0)  # most series: measured at every step of the batch
    if full.any():
        every = (int(steps32.min()), int(steps32.max()), len(steps32), steps32.tobytes())
        columns = iter(np.ascontiguousarray(values[:, full].T, dtype=VALUE_DTYPE))
    for j in np.flatnonzero(measured.any(axis=0)):
        layer, site, metric = batch.keys[j]
        if full[j]:
            yield (run_id, layer, site, metric, *every, next(columns).tobytes())
            continue
        keep = measured[:, j]
        s, v = steps32[keep], values[keep, j]
        yield (run_id, layer, site, metric, int(s.min()), int(s.max()), len(s),
               s.tobytes(), v.astype(VALUE_DTYPE).tobytes())


_SELECT_CHUNKS = 'SELECT id, run_id, layer, site, metric, n, steps, "values" FROM chunks'
INSERT_CHUNK = ('INSERT INTO chunks (run_id, layer, site, metric, step_lo, step_hi, n, steps, '
                '"values") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')


def select_chunks(conn: sqlite3.Connection, run_ids: list[str] | None, query: MetricQuery,
                  after_rowid: int | None = None) -> list[tuple]:
    """chunks rows (id, run_id, layer, site, metric, n, steps, values) by run and series."""
    where, params = query.where(run_ids, after_rowid)
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: the fast path
    if after_rowid is None:  # walk the series index in order
        return cursor.execute(f"{_SELECT_CHUNKS}{where} ORDER BY run_id, metric, site, "
                              "layer, step_lo, id", params).fetchall()
    rows = cursor.execute(f"{_SELECT_CHUNKS}{where} ORDER BY id", params).fetchall()
    return sorted(rows, key=lambda r: (r[1], r[4], r[3], r[2]))  # stable: id order kept


# ---------------------------------------------------------------- metric queries

@dataclass(frozen=True)
class MetricQuery:
    """Which tidy rows to read: each filter is None (everything) or the allowed values."""

    metrics: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    sites: tuple[str, ...] | None = None
    steps: tuple[int | None, int | None] | None = None  # inclusive (lo, hi); None = open
    every: int | None = None  # keep steps divisible by this
    since: dict[str, int] | None = None  # run -> last step seen: only later steps

    @classmethod
    def make(cls, metrics=None, layers=None, sites=None, steps=None, every=None, since=None):
        if every is not None and (int(every) != every or every < 1):
            raise ValueError(f"every must be a whole number >= 1 (got {every!r})")
        if steps is not None and len(steps) != 2:
            raise ValueError(f"steps must be a (first, last) pair (got {steps!r})")
        tup = lambda x: None if x is None else tuple(_as_list(x))  # noqa: E731
        return cls(tup(metrics), tup(layers), tup(sites),
                   None if steps is None else tuple(steps), every, since)

    def where(self, run_ids: list[str] | None, after_rowid: int | None) -> tuple[str, list]:
        """SQL conditions on ``chunks`` (chunk step ranges, not yet single steps)."""
        clauses: list[str] = []
        params: list = []
        if after_rowid is not None:  # '+run_id' below keeps the planner on the rowid range
            clauses.append("id > ?")
            params.append(after_rowid)
        if run_ids is not None:
            col = "+run_id" if after_rowid is not None else "run_id"
            clauses.append(f"{col} IN ({_qmarks(run_ids)})")
            params += run_ids
        for col, allowed in (("metric", self.metrics), ("site", self.sites),
                             ("layer", self.layers)):
            if allowed is not None:
                clauses.append(f"{col} IN ({_qmarks(allowed)})")
                params += allowed
        lo, hi = self.steps if self.steps is not None else (None, None)
        if lo is not None:
            clauses.append("step_hi >= ?")
            params.append(int(lo))
        if hi is not None:
            clauses.append("step_lo <= ?")
            params.append(int(hi))
        if self.since:
            runs = list(self.since)
            per_run = " OR ".join("(run_id = ? AND step_hi > ?)" for _ in runs)
            clauses.append(f"(run_id NOT IN ({_qmarks(runs)}) OR {per_run})")
            params += runs
            for r in runs:
                params += [r, int(self.since[r])]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def mask(self, steps: np.ndarray, runs: list[str], counts: np.ndarray) -> np.ndarray | None:
        """Per-row keep mask for the step filters, or None when every row is kept."""
        keep = None

        def both(m):
            return m if keep is None else keep & m

        lo, hi = self.steps if self.steps is not None else (None, None)
        if lo is not None:
            keep = both(steps >= lo)
        if hi is not None:
            keep = both(steps <= hi)
        if self.every is not None and self.every > 1:
            keep = both(steps % self.every == 0)
        if self.since:
            floor = np.array([self.since.get(r, -1) for r in runs], dtype=np.int64)
            keep = both(steps > np.repeat(floor, counts))
        return keep


def empty_metrics() -> pd.DataFrame:
    """A metrics frame with no rows and the usual dtypes."""
    cat = lambda: pd.Categorical([], categories=pd.Index([], dtype=str))  # noqa: E731
    return pd.DataFrame({"run": cat(), "step": np.zeros(0, np.int64), "layer": cat(),
                         "site": cat(), "metric": cat(), "value": np.zeros(0)},
                        columns=COLUMNS)


def _categorical(per_chunk: tuple[str, ...], counts: np.ndarray, keep: np.ndarray | None,
                 order: list[str] | None = None) -> pd.Categorical:
    present = set(per_chunk)
    cats = [c for c in order if c in present] if order is not None else sorted(present)
    index = {c: i for i, c in enumerate(cats)}
    codes = np.repeat(np.fromiter((index[v] for v in per_chunk), np.int32, len(per_chunk)),
                      counts)
    result = pd.Categorical.from_codes(codes if keep is None else codes[keep],
                                       categories=pd.Index(cats, dtype=str))
    return result if keep is None else result.remove_unused_categories()


def metrics_frame(rows: list[tuple], run_order: list[str], query: MetricQuery) -> pd.DataFrame:
    """Tidy rows from ``chunks`` rows (id, run_id, layer, site, metric, n, steps, values)."""
    if not rows:
        return empty_metrics()
    rank = {r: i for i, r in enumerate(run_order)}
    rows = sorted(rows, key=lambda row: rank[row[1]])  # stable: SQL's series order stays
    _, run, layer, site, metric, n, step_blobs, value_blobs = zip(*rows)
    counts = np.array(n, dtype=np.int64)
    steps = np.frombuffer(b"".join(step_blobs), STEP_DTYPE).astype(np.int64)
    values = np.frombuffer(b"".join(value_blobs), VALUE_DTYPE)
    keep = query.mask(steps, list(run), counts)
    if keep is not None:
        steps, values = steps[keep], values[keep]
    else:
        values = values.copy()  # frombuffer is read-only
    return pd.DataFrame({
        "run": _categorical(run, counts, keep, run_order),
        "step": steps,
        "layer": _categorical(layer, counts, keep),
        "site": _categorical(site, counts, keep),
        "metric": _categorical(metric, counts, keep),
        "value": values,
    }, columns=COLUMNS)
