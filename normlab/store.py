"""The run store: every comparison, run and measurement of NormLab in one SQLite file.

The dashboard and the CLI create comparisons and read results; worker processes claim
queued runs, append metrics and report progress. Several processes write at once, so the
file is in WAL mode (readers never block writers) and every write is one short
``BEGIN IMMEDIATE`` transaction. A committed transaction survives a crash of its process,
even ``kill -9`` (``synchronous=NORMAL`` in WAL mode only risks the last commits on a power
cut or OS crash); a killed writer loses at most the batch it was writing.

Tables (schema version ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older files on
open, one function per version step):

* ``comparisons`` — runs submitted together: name, base config and grid JSON, notes, tags.
* ``runs`` — one training run: config JSON (its identity, see :mod:`normlab.config`), the
  fields charts group by (norm, seed, dataset, model), status, progress, worker, control.
* ``chunks`` — metrics. A series (run, layer, site, metric) is stored in chunks, one row
  per :meth:`Store.append` and series, with its steps (int32) and values (float64) as raw
  little-endian numpy bytes and its step range. Reading a few thousand blobs and joining
  them is much faster than one SQL row per value (``benchmarks/bench_store.py``). What
  callers see is always the tidy rows of :mod:`normlab.schema`; NaN ("not measured") is
  never stored.

Run lifecycle: ``queued -> running <-> paused -> done | diverged | failed | cancelled |
interrupted``. The worker's side::

    claimed = store.claim_run(os.getpid())      # (run_id, config) or None
    for batch in trainer.batches():
        store.append(run_id, batch)             # one transaction
        store.progress(run_id, step, steps_per_sec)   # also the heartbeat
        match store.control(run_id):            # the desired state, set by request()
            case "cancel": store.finish(run_id, "cancelled", step); break
            case "pause": store.set_status(run_id, "paused"); wait until control() is None,
                          then store.set_status(run_id, "running")
    store.finish(run_id, "done", step=step)

A run deleted while it trains makes these calls raise :class:`NotFound`: the worker stops.
Export and import live in :mod:`normlab.exchange`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normlab.schema import COLUMNS, RecordBatch

STATUSES = ("queued", "running", "paused", "done", "diverged", "failed", "cancelled",
            "interrupted")
FINISHED = frozenset({"done", "diverged", "failed", "cancelled", "interrupted"})
ACTIVE = ("running", "paused")  # statuses whose run holds a worker process
ACTIONS = ("cancel", "pause", "resume")
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another writer's transaction
STEP_DTYPE = np.dtype("<i4")
VALUE_DTYPE = np.dtype("<f8")
MAX_STEP = np.iinfo(np.int32).max
RUN_FIELDS = ("id", "comparison_id", "position", "name", "status", "control", "step",
              "total_steps", "steps_per_sec", "norm", "seed", "dataset", "model", "error",
              "worker_pid", "created_at", "started_at", "finished_at", "heartbeat_at",
              "tags", "notes", "config")
COMPARISON_FIELDS = ("id", "name", "created_at", "base", "grid", "notes", "tags")
_INT_FIELDS = ("position", "step", "total_steps", "seed", "worker_pid")
_FLOAT_FIELDS = ("steps_per_sec", "created_at", "started_at", "finished_at", "heartbeat_at")
_JSON_FIELDS = ("config", "base", "grid", "tags")


class NotFound(KeyError):
    """No run or comparison has the id; ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(RuntimeError):
    """The store file cannot be used (not SQLite, or written by a newer NormLab)."""


def default_store_path() -> Path:
    """``$NORMLAB_STORE`` if set, else ``~/.normlab/normlab.sqlite``."""
    env = os.environ.get("NORMLAB_STORE")
    return Path(env).expanduser() if env else Path.home() / ".normlab" / "normlab.sqlite"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------- schema and migrations

_V1 = [
    """CREATE TABLE comparisons (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,          -- unix seconds, strictly increasing
        base TEXT,                         -- JSON config the grid varies, or NULL
        grid TEXT,                         -- JSON {field: [values]}, or NULL
        notes TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]'    -- JSON list of strings
    )""",
    "CREATE INDEX comparisons_created ON comparisons(created_at)",
    f"""CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        comparison_id TEXT NOT NULL REFERENCES comparisons(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,         -- index in the comparison
        config TEXT NOT NULL,              -- JSON RunConfig.to_dict()
        norm TEXT, seed INTEGER, dataset TEXT, model TEXT,
        status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN {STATUSES}),
        control TEXT CHECK (control IN ('cancel', 'pause')),  -- desired state, or NULL
        step INTEGER NOT NULL DEFAULT 0,   -- last reported step
        total_steps INTEGER,
        steps_per_sec REAL,
        error TEXT,
        worker_pid INTEGER,
        created_at REAL NOT NULL,
        started_at REAL, finished_at REAL, heartbeat_at REAL,
        name TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        notes TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX runs_comparison ON runs(comparison_id, position)",
    "CREATE INDEX runs_status ON runs(status, comparison_id)",
    """CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the incremental-read watermark
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        layer TEXT NOT NULL, site TEXT NOT NULL, metric TEXT NOT NULL,
        step_lo INTEGER NOT NULL, step_hi INTEGER NOT NULL,
        n INTEGER NOT NULL,                -- points in the chunk
        steps BLOB NOT NULL,               -- n little-endian int32
        "values" BLOB NOT NULL             -- n little-endian float64
    )""",
    "CREATE INDEX chunks_series ON chunks(run_id, metric, site, layer, step_lo)",
    "CREATE INDEX chunks_steps ON chunks(run_id, step_hi)",
]


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


# MIGRATIONS[i] upgrades a file from version i to i + 1 inside one transaction (which also
# sets user_version, so a failed step changes nothing). Append a function to change the
# schema; never edit one that has shipped. foreign_keys is ON: a step that rebuilds a table
# must keep every reference valid.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path | str = "store") -> int:
    """Bring the file behind ``conn`` to ``len(MIGRATIONS)``; returns the version found."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        target = len(MIGRATIONS)
        if found > target:
            raise StoreError(f"{path} has schema version {found}, newer than this NormLab's "
                             f"{target}; upgrade NormLab or use another NORMLAB_STORE file")
        for step in MIGRATIONS[found:]:
            step(conn)
        if found != target:
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced."""


# Connections inherited through fork: kept open and unused (closing one in the child could
# disturb the parent's locks), one per fork at most.
_INHERITED: list[sqlite3.Connection] = []


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=_Connection)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{path} cannot use WAL mode (journal_mode is {mode!r}); put the "
                             "store on a local disk, not a network share")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.row_factory = sqlite3.Row
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path} is not a NormLab store ({e}); set NORMLAB_STORE to another "
                         "file") from None
    return conn


# ---------------------------------------------------------------- small helpers

def _new_id(conn: sqlite3.Connection, table: str, prefix: str) -> str:
    """``prefix`` + 8 hex digits (uuid4), unused in ``table``."""
    while True:
        candidate = prefix + uuid.uuid4().hex[:8]
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (candidate,)).fetchone() is None:
            return candidate


def _as_list(x: str | Iterable[str] | None) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return list(dict.fromkeys(x))  # distinct, order kept


def _qmarks(items: list) -> str:
    return ",".join("?" * len(items))


def _clean_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, got the string {tags!r}; "
                        f"write [{tags!r}]")
    out = [str(t).strip() for t in tags]
    return list(dict.fromkeys(t for t in out if t))


def _config_dict(config: Any, position: int) -> dict[str, Any]:
    data = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(data, dict):
        raise TypeError(f"config {position} is a {type(data).__name__}; pass a dict "
                        "(RunConfig.to_dict()) or a RunConfig")
    try:
        json.dumps(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config {position} cannot be stored as JSON: {e}") from None
    return data


def _default_name(configs: list[dict], grid: dict | None) -> str:
    if grid:
        return " × ".join(f"{k}: {', '.join(map(str, v))}" for k, v in grid.items())
    norms = list(dict.fromkeys(str(c.get("norm", "?")) for c in configs))
    return " vs ".join(norms) if len(norms) > 1 else f"{norms[0]} ({len(configs)} runs)"


def _record(row: sqlite3.Row) -> dict[str, Any]:
    """A runs/comparisons row as a dict, JSON columns parsed."""
    out = dict(row)
    for key in _JSON_FIELDS:
        if key in out and out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _resolve(conn: sqlite3.Connection, id: str) -> str:
    """'run' or 'comparison' for ``id``; NotFound otherwise."""
    if isinstance(id, str):
        for kind, table in (("run", "runs"), ("comparison", "comparisons")):
            if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (id,)).fetchone():
                return kind
    raise NotFound(f"no run or comparison with id {id!r}")


def _require(conn: sqlite3.Connection, kind: str, id: str) -> None:
    table = "runs" if kind == "run" else "comparisons"
    if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (id,)).fetchone() is None:
        raise NotFound(f"no {kind} with id {id!r}")


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
    for j in np.flatnonzero(measured.any(axis=0)):
        keep = measured[:, j]
        s, v = steps32[keep], values[keep, j]
        layer, site, metric = batch.keys[j]
        yield (run_id, layer, site, metric, int(s.min()), int(s.max()), len(s),
               s.tobytes(), v.astype(VALUE_DTYPE).tobytes())


_SELECT_CHUNKS = 'SELECT id, run_id, layer, site, metric, n, steps, "values" FROM chunks'
INSERT_CHUNK = ('INSERT INTO chunks (run_id, layer, site, metric, step_lo, step_hi, n, steps, '
                '"values") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')


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


# ---------------------------------------------------------------- the store

class Store:
    """The run store in one SQLite file (see the module docstring).

    Safe to share between threads (one connection per thread) and to use from several
    processes at once; a Store inherited through ``fork`` opens fresh connections.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        path = Path(path).expanduser() if path is not None else default_store_path()
        if str(path) == ":memory:":
            raise ValueError("the store must be a file that workers can open too; pass a "
                             "path (e.g. in a temporary folder) instead of ':memory:'")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._pid = os.getpid()
        migrate(self._conn(), path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __reduce__(self):  # picklable for multiprocessing: reopen by path
        return (Store, (str(self.path),))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this Store opened in this process."""
        with self._lock:
            if self._pid == os.getpid():
                for conn in list(self._conns):
                    conn.close()
            self._conns = weakref.WeakSet()
            self._pid = os.getpid()
        self._local = threading.local()

    # -- connections and transactions

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a new thread, or a forked child
            if self._pid != os.getpid():  # forked: never touch the parent's connections
                _INHERITED.extend(self._conns)
                self._conns, self._pid = weakref.WeakSet(), os.getpid()
            if getattr(local, "conn", None) is not None:
                _INHERITED.append(local.conn)
            local.conn = connect(self.path)
            local.pid = os.getpid()
            with self._lock:
                self._conns.add(local.conn)  # weak: a finished thread's connection closes
        return local.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the write lock first, so read-then-write is atomic."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # -- submitting and claiming

    def create_comparison(self, configs: list[dict], name: str | None = None,
                          base: dict | None = None, grid: dict | None = None,
                          tags: Iterable[str] = ()) -> tuple[str, list[str]]:
        """Insert a comparison and one queued run per config (position = index)."""
        configs = [_config_dict(c, i) for i, c in enumerate(configs)]
        if not configs:
            raise ValueError("a comparison needs at least one config; got an empty list")
        base = _config_dict(base, -1) if base is not None else None
        tags = _clean_tags(tags)
        with self._write() as conn:
            last = conn.execute("SELECT max(created_at) FROM comparisons").fetchone()[0]
            now = time.time()
            created = now if last is None or now > last else last + 1e-6
            cid = _new_id(conn, "comparisons", "c")
            conn.execute(
                "INSERT INTO comparisons (id, name, created_at, base, grid, tags) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (cid, name or _default_name(configs, grid), created,
                 None if base is None else json.dumps(base),
                 None if grid is None else json.dumps(grid), json.dumps(tags)))
            run_ids = []
            for position, cfg in enumerate(configs):
                rid = _new_id(conn, "runs", "r")
                conn.execute(
                    "INSERT INTO runs (id, comparison_id, position, config, norm, seed, "
                    "dataset, model, total_steps, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (rid, cid, position, json.dumps(cfg), cfg.get("norm"), cfg.get("seed"),
                     cfg.get("dataset"), cfg.get("model"), cfg.get("steps"), created))
                run_ids.append(rid)
        return cid, run_ids

    def claim_run(self, pid: int) -> tuple[str, dict] | None:
        """Atomically take the next queued run and mark it running for worker ``pid``.

        Fairness: among comparisons with queued runs that are not held by a pause request,
        take from the one with the FEWEST active (running or paused) runs, so comparisons
        submitted at once by different people share the workers; ties go to the oldest
        comparison; within a comparison, the lowest position first. None when nothing is
        queued.
        """
        with self._write() as conn:
            row = conn.execute(
                "WITH active AS (SELECT comparison_id, count(*) AS n FROM runs "
                "  WHERE status IN ('running', 'paused') GROUP BY comparison_id) "
                "SELECT r.id, r.config FROM runs r JOIN comparisons c ON c.id = r.comparison_id "
                "LEFT JOIN active a ON a.comparison_id = r.comparison_id "
                "WHERE r.status = 'queued' AND r.control IS NULL "
                "ORDER BY coalesce(a.n, 0), c.created_at, c.id, r.position LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute("UPDATE runs SET status = 'running', worker_pid = ?, started_at = ?, "
                         "heartbeat_at = ?, error = NULL WHERE id = ?", (pid, now, now, row[0]))
        return row[0], json.loads(row[1])

    # -- the worker's writes

    def append(self, run_id: str, batch: RecordBatch) -> int:
        """Store a batch's measured values (one chunk per series, one transaction).

        Returns the number of values stored.
        """
        rows = list(chunk_rows(run_id, batch))
        if not rows:
            return 0
        with self._write() as conn:
            _require(conn, "run", run_id)
            conn.executemany(INSERT_CHUNK, rows)
        return sum(r[6] for r in rows)

    def _update_run(self, run_id: str, sql: str, params: tuple) -> None:
        with self._write() as conn:
            if conn.execute(f"UPDATE runs SET {sql} WHERE id = ?", (*params, run_id)).rowcount == 0:
                raise NotFound(f"no run with id {run_id!r}")

    def progress(self, run_id: str, step: int, steps_per_sec: float | None = None) -> None:
        """Report the last step taken and the speed; also the run's heartbeat."""
        self._update_run(run_id, "step = ?, steps_per_sec = ?, heartbeat_at = ?",
                         (int(step), steps_per_sec, time.time()))

    def finish(self, run_id: str, status: str, step: int | None = None,
               error: str | None = None) -> None:
        """End a run with a status from FINISHED (clears any control request)."""
        if status not in FINISHED:
            raise ValueError(f"finish status {status!r} is not a final status; use one of "
                             f"{', '.join(sorted(FINISHED))}")
        now = time.time()
        self._update_run(run_id, "status = ?, step = coalesce(?, step), error = ?, "
                         "control = NULL, finished_at = ?, heartbeat_at = ?",
                         (status, step, error, now, now))

    def set_status(self, run_id: str, status: str) -> None:
        """The worker's switch between 'running' and 'paused' (final states: finish())."""
        if status not in ACTIVE:
            raise ValueError(f"set_status takes 'running' or 'paused' (got {status!r}); "
                             "end a run with finish()")
        with self._write() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run with id {run_id!r}")
            if row[0] not in ACTIVE:
                raise ValueError(f"run {run_id!r} is {row[0]!r}; only a running or paused "
                                 f"run can be set to {status!r}")
            conn.execute("UPDATE runs SET status = ?, heartbeat_at = ? WHERE id = ?",
                         (status, time.time(), run_id))

    def control(self, run_id: str) -> str | None:
        """The pending request for a run: 'cancel', 'pause' or None (carry on)."""
        row = self._conn().execute("SELECT control FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id!r}")
        return row[0]

    # -- requests from the dashboard / CLI

    def request(self, id: str, action: str) -> list[str]:
        """Ask a run, or every unfinished run of a comparison, to cancel, pause or resume.

        cancel: a queued run becomes 'cancelled' at once; a running/paused one gets
        control 'cancel' and its worker ends it. pause: control 'pause' — a running run's
        worker pauses, a queued run is held (not claimed) until resumed. resume: clears a
        'pause' (a pending cancel stays). Finished runs are left alone. Returns the ids of
        the runs changed.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        changed = []
        with self._write() as conn:
            column = "id" if _resolve(conn, id) == "run" else "comparison_id"
            rows = conn.execute(f"SELECT id, status, control FROM runs WHERE {column} = ? AND "
                                "status IN ('queued', 'running', 'paused') ORDER BY position",
                                (id,)).fetchall()
            for rid, status, control in rows:
                if action == "cancel" and status == "queued":
                    conn.execute("UPDATE runs SET status = 'cancelled', control = NULL, "
                                 "finished_at = ? WHERE id = ?", (time.time(), rid))
                elif action == "cancel" and control != "cancel":
                    conn.execute("UPDATE runs SET control = 'cancel' WHERE id = ?", (rid,))
                elif action == "pause" and control is None:
                    conn.execute("UPDATE runs SET control = 'pause' WHERE id = ?", (rid,))
                elif action == "resume" and control == "pause":
                    conn.execute("UPDATE runs SET control = NULL WHERE id = ?", (rid,))
                else:
                    continue
                changed.append(rid)
        return changed

    def mark_interrupted(self, alive: Callable[[int], bool] | None = None) -> list[str]:
        """Runs left running/paused by a dead worker become 'interrupted'; returns their ids.

        ``alive(pid)`` defaults to :func:`pid_alive` (a live process that is not a worker,
        e.g. a reused pid, counts as alive: the run is left alone).
        """
        alive = alive or pid_alive
        marked = []
        with self._write() as conn:
            rows = conn.execute("SELECT id, worker_pid, step FROM runs WHERE status IN "
                                "('running', 'paused')").fetchall()
            for rid, pid, step in rows:
                if pid is not None and alive(pid):
                    continue
                conn.execute("UPDATE runs SET status = 'interrupted', control = NULL, "
                             "finished_at = ?, error = ? WHERE id = ?",
                             (time.time(), f"worker process {pid} died at step {step}", rid))
                marked.append(rid)
        return marked

    # -- reading

    def resolve(self, id: str) -> tuple[str, str]:
        """('run', id) or ('comparison', id); NotFound if neither."""
        return _resolve(self._conn(), id), id

    def run(self, id: str) -> dict[str, Any]:
        """One run's fields (config parsed into a dict, tags a list)."""
        row = self._conn().execute("SELECT * FROM runs WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise NotFound(f"no run with id {id!r}")
        return _record(row)

    def comparison(self, id: str) -> dict[str, Any]:
        """One comparison's fields plus ``runs`` (ids by position) and ``counts`` by status."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM comparisons WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotFound(f"no comparison with id {id!r}")
            runs = conn.execute("SELECT id, status FROM runs WHERE comparison_id = ? "
                                "ORDER BY position", (id,)).fetchall()
        out = _record(row)
        out["runs"] = [r[0] for r in runs]
        out["counts"] = {s: sum(r[1] == s for r in runs) for s in STATUSES}
        return out

    def runs(self, comparison: str | None = None, ids: str | Iterable[str] | None = None,
             status: str | Iterable[str] | None = None) -> pd.DataFrame:
        """One row per run (RUN_FIELDS; ``config`` a dict), by comparison age then position."""
        clauses, params = [], []
        statuses = _as_list(status)
        for s in statuses or ():
            if s not in STATUSES:
                raise ValueError(f"unknown status {s!r}; use one of {', '.join(STATUSES)}")
        with self._read() as conn:
            if comparison is not None:
                _require(conn, "comparison", comparison)
                clauses.append("r.comparison_id = ?")
                params.append(comparison)
            if (ids := _as_list(ids)) is not None:
                self._require_runs(conn, ids)
                clauses.append(f"r.id IN ({_qmarks(ids)})")
                params += ids
            if statuses is not None:
                clauses.append(f"r.status IN ({_qmarks(statuses)})")
                params += statuses
            where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
            rows = conn.execute("SELECT r.* FROM runs r JOIN comparisons c ON c.id = "
                                f"r.comparison_id{where} ORDER BY c.created_at, c.id, "
                                "r.position", params).fetchall()
        frame = pd.DataFrame([_record(r) for r in rows], columns=list(RUN_FIELDS))
        return frame.astype({**{f: "Int64" for f in _INT_FIELDS},
                             **{f: "float64" for f in _FLOAT_FIELDS}})

    def comparisons(self) -> pd.DataFrame:
        """One row per comparison, newest first, with ``n_runs`` and a count per status."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM comparisons ORDER BY created_at DESC, id DESC"
                                ).fetchall()
            counts = conn.execute("SELECT comparison_id, status, count(*) FROM runs "
                                  "GROUP BY comparison_id, status").fetchall()
        frame = pd.DataFrame([_record(r) for r in rows], columns=list(COMPARISON_FIELDS))
        table = {(c, s): n for c, s, n in counts}
        for s in STATUSES:
            frame[s] = np.array([table.get((c, s), 0) for c in frame["id"]], dtype=np.int64)
        frame.insert(3, "n_runs", frame[list(STATUSES)].sum(axis=1).astype(np.int64))
        return frame

    @staticmethod
    def _require_runs(conn: sqlite3.Connection, ids: list[str]) -> None:
        found = {r[0] for r in conn.execute(f"SELECT id FROM runs WHERE id IN ({_qmarks(ids)})",
                                            ids)}
        for rid in ids:
            if rid not in found:
                raise NotFound(f"no run with id {rid!r}")

    def _run_selection(self, conn, runs, comparison) -> tuple[list[str], bool]:
        """(run ids in display order, whether the SQL must filter by them)."""
        if comparison is not None:
            _require(conn, "comparison", comparison)
            order = [r[0] for r in conn.execute("SELECT id FROM runs WHERE comparison_id = ? "
                                                "ORDER BY position", (comparison,))]
            if (wanted := _as_list(runs)) is not None:
                self._require_runs(conn, wanted)
                order = [r for r in order if r in set(wanted)]
            return order, True
        if (ids := _as_list(runs)) is not None:
            self._require_runs(conn, ids)
            return ids, True
        order = [r[0] for r in conn.execute("SELECT r.id FROM runs r JOIN comparisons c ON "
                                            "c.id = r.comparison_id ORDER BY c.created_at, "
                                            "c.id, r.position")]
        return order, False

    def _chunks(self, conn, run_ids: list[str] | None, query: MetricQuery,
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

    def metrics(self, runs: str | list[str] | None = None, comparison: str | None = None,
                metrics=None, layers=None, sites=None, steps: tuple[int, int] | None = None,
                every: int | None = None, since: dict[str, int] | None = None) -> pd.DataFrame:
        """Tidy rows (COLUMNS) of the chosen runs: the listed ``runs``, the runs of
        ``comparison`` (intersected with ``runs`` if both), or every run.

        ``metrics``/``layers``/``sites``: a name or list (None = all). ``steps``: inclusive
        (first, last), either may be None. ``every=k``: only steps divisible by k.
        ``since={run: step}``: only steps after ``step`` for those runs (per-run polling;
        see also :meth:`metrics_since`). run/layer/site/metric are categoricals; runs in
        the order asked (comparison position for a comparison), other categories sorted.
        Rows are grouped by run, then series, steps in the order appended.
        """
        query = MetricQuery.make(metrics, layers, sites, steps, every, since)
        with self._read() as conn:
            order, restrict = self._run_selection(conn, runs, comparison)
            rows = self._chunks(conn, order if restrict else None, query)
        return metrics_frame(rows, order, query)

    def metrics_since(self, run_ids: str | list[str] | None, after_rowid: int = 0, *,
                      comparison: str | None = None, metrics=None, layers=None, sites=None,
                      steps: tuple[int, int] | None = None, every: int | None = None
                      ) -> tuple[pd.DataFrame, int]:
        """Incremental read for live charts: rows of chunks written after ``after_rowid``.

        Start with 0, then pass back the returned watermark: every row is returned
        exactly once over successive calls (chunk ids only grow, and writers commit in id
        order). Filters as in :meth:`metrics`.
        """
        query = MetricQuery.make(metrics, layers, sites, steps, every)
        with self._read() as conn:
            order, restrict = self._run_selection(conn, run_ids, comparison)
            rows = self._chunks(conn, order if restrict else None, query, int(after_rowid))
            top = conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0]
        return metrics_frame(rows, order, query), max(int(after_rowid), top)

    # -- editing

    def delete(self, id: str) -> list[str]:
        """Delete a run, or a comparison with all its runs, and their metrics.

        Returns the deleted run ids. A worker still training a deleted run gets NotFound.
        """
        with self._write() as conn:
            if _resolve(conn, id) == "run":
                conn.execute("DELETE FROM runs WHERE id = ?", (id,))
                return [id]
            runs = [r[0] for r in conn.execute("SELECT id FROM runs WHERE comparison_id = ? "
                                               "ORDER BY position", (id,))]
            conn.execute("DELETE FROM comparisons WHERE id = ?", (id,))
        return runs

    def _set(self, id: str, column: str, value: Any) -> None:
        with self._write() as conn:
            table = "runs" if _resolve(conn, id) == "run" else "comparisons"
            if table == "comparisons" and column == "name" and not value:
                raise ValueError(f"comparison {id!r} needs a non-empty name")
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (value, id))

    def tag(self, id: str, tags: Iterable[str]) -> None:
        """Replace the tags of a run or comparison (stripped, distinct, order kept)."""
        self._set(id, "tags", json.dumps(_clean_tags(tags)))

    def annotate(self, id: str, notes: str) -> None:
        """Replace the notes of a run or comparison."""
        self._set(id, "notes", str(notes or ""))

    def rename(self, id: str, name: str | None) -> None:
        """Rename a run (None clears it) or a comparison."""
        self._set(id, "name", None if name is None else str(name))

    # -- exchange (normlab.exchange)

    def export(self, id: str, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write a run or comparison to ``path`` as json, parquet or csv (see exchange)."""
        from normlab.exchange import export

        return export(self, id, path, format)

    def import_(self, path: str | os.PathLike) -> list[str]:
        """Load an export file; returns the ids of the runs added (see exchange)."""
        from normlab.exchange import import_file

        return import_file(self, path)
