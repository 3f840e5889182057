"""The run store's SQLite file: schema, migrations, connections and small SQL helpers.

:class:`normlab.runs.store.Store` is built on this module. Several processes write the file at
once, so it is in WAL mode (readers never block writers) and every write is one short
``BEGIN IMMEDIATE`` transaction. A committed transaction survives a crash of its process,
even ``kill -9`` (``synchronous=NORMAL`` in WAL mode only risks the last commits on a power
cut or OS crash); a killed writer loses at most the batch it was writing.

Tables (schema version ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older files on
open, one function per version step):

* ``comparisons`` — runs submitted together: name, base config and grid JSON, notes, tags,
  and ``origin`` (the lab and preset that launched them, JSON, or NULL).
* ``runs`` — one training run: config JSON (its identity, see :mod:`normlab.training.config`), the
  fields charts group by (norm, seed, dataset, model), status, progress, worker, control,
  and the backend that trains it (``local`` engine or ``ray``, schema version 2).
  ``source`` says who trains it: NormLab (from its RunConfig), or a user's own loop
  (``external``, :func:`normlab.log`; never claimed; schema version 3).
* ``chunks`` — metrics, a series in chunks of raw numpy bytes (see :mod:`normlab.runs.chunks`).

:class:`Database` gives each thread its own connection and a forked child fresh ones.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "paused", "done", "diverged", "failed", "cancelled",
            "interrupted")
FINISHED = frozenset({"done", "diverged", "failed", "cancelled", "interrupted"})
ACTIVE = ("running", "paused")  # statuses whose run holds a worker process
BACKENDS = ("local", "ray")  # who trains a run: the local engine or the Ray driver
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another writer's transaction
RUN_FIELDS = ("id", "comparison_id", "position", "name", "status", "control", "step",
              "total_steps", "steps_per_sec", "norm", "seed", "dataset", "model", "error",
              "worker_pid", "created_at", "started_at", "finished_at", "heartbeat_at",
              "tags", "notes", "config", "source")
SOURCES = ("normlab", "external")  # trained by NormLab's engine, or logged by a user's loop
COMPARISON_FIELDS = ("id", "name", "created_at", "base", "grid", "notes", "tags", "origin")
_INT_FIELDS = ("position", "step", "total_steps", "seed", "worker_pid")
_FLOAT_FIELDS = ("steps_per_sec", "created_at", "started_at", "finished_at", "heartbeat_at")
_JSON_FIELDS = ("config", "base", "grid", "tags", "origin")


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


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    """Runs say which backend trains them (normlab.runs.raydriver); old runs are local."""
    conn.execute("ALTER TABLE runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local'")


# MIGRATIONS[i] upgrades a file from version i to i + 1 inside one transaction (which also
# sets user_version, so a failed step changes nothing). Append a function to change the
# schema; never edit one that has shipped. foreign_keys is ON: a step that rebuilds a table
# must keep every reference valid.
def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    """Runs get a ``source``: 'normlab' (trained from its RunConfig by a backend) or
    'external' (a user's own loop logs it through :func:`normlab.log`; never claimed)."""
    conn.execute("ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT 'normlab' "
                 "CHECK (source IN ('normlab', 'external'))")


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    """Comparisons say what launched them: ``origin`` is JSON ``{"lab": key, "preset": key}``
    for a lab's preset (:func:`normlab.views.labs.scaffold.launch`), NULL otherwise."""
    conn.execute("ALTER TABLE comparisons ADD COLUMN origin TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_v1, _migrate_to_v2,
                                                          _migrate_to_v3, _migrate_to_v4]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path | str = "store",
            migrations: list[Callable[[sqlite3.Connection], None]] | None = None) -> int:
    """Bring the file behind ``conn`` to ``len(migrations)`` (default :data:`MIGRATIONS`);
    returns the version found."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        target = len(migrations)
        if found > target:
            raise StoreError(f"{path} has schema version {found}, newer than this NormLab's "
                             f"{target}; upgrade NormLab or use another NORMLAB_STORE file")
        for step in migrations[found:]:
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


def connect(path: Path | str, autocheckpoint: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas.

    Without ``autocheckpoint`` its commits never copy the write-ahead log into the file
    (SQLite's default does, with an fsync, every ~4 MB): the engine's workers write that
    way and the engine checkpoints for them (:meth:`Database.checkpoint`)."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the store {path} ({e}); check that its folder exists "
                         "and is writable") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{path} cannot use WAL mode (journal_mode is {mode!r}); put the "
                             "store on a local disk, not a network share")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if not autocheckpoint:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.row_factory = sqlite3.Row
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(store_problem(path, e)) from None
    return conn


def store_problem(path: Path | str, error: sqlite3.Error) -> str:
    """A one-line message for an SQLite error about the store file itself."""
    text = str(error)
    if "readonly" in text or "read-only" in text:
        return (f"the store {path} is read-only ({text}); make it and its folder writable, "
                "or set NORMLAB_STORE to another file")
    if "not a database" in text or "malformed" in text:
        return f"{path} is not a NormLab store ({text}); set NORMLAB_STORE to another file"
    return f"the store {path} cannot be used ({text}); set NORMLAB_STORE to another file"


# ---------------------------------------------------------------- connections

class Database:
    """The store file open in this process: one connection per thread, explicit
    transactions. A ``Database`` inherited through ``fork`` opens fresh connections."""

    def __init__(self, path: str | os.PathLike | None = None, *, autocheckpoint: bool = True):
        path = Path(path).expanduser() if path is not None else default_store_path()
        if str(path) == ":memory:":
            raise ValueError("the store must be a file that workers can open too; pass a "
                             "path (e.g. in a temporary folder) instead of ':memory:'")
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not a store file; give a file path, e.g. "
                             f"{path / 'normlab.sqlite'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of the store {path} ({e.strerror}); "
                             "give a path in a writable folder") from None
        self.path = path
        self.autocheckpoint = autocheckpoint
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._pid = os.getpid()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the file as far as no reader needs it (PASSIVE:
        never waits for, nor blocks, the writers)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close every connection this Store opened in this process."""
        with self._lock:
            if self._pid == os.getpid():
                for conn in list(self._conns):
                    conn.close()
            self._conns = weakref.WeakSet()
            self._pid = os.getpid()
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a new thread, or a forked child
            if self._pid != os.getpid():  # forked: never touch the parent's connections
                _INHERITED.extend(self._conns)
                self._conns, self._pid = weakref.WeakSet(), os.getpid()
            if getattr(local, "conn", None) is not None:
                _INHERITED.append(local.conn)
            local.conn = connect(self.path, self.autocheckpoint)
            local.pid = os.getpid()
            with self._lock:
                self._conns.add(local.conn)  # weak: a finished thread's connection closes
        return local.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the write lock first, so read-then-write is atomic."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise StoreError(store_problem(self.path, e)) from None
        try:
            yield conn
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if "readonly" in str(e) or "disk" in str(e):
                raise StoreError(store_problem(self.path, e)) from None
            raise
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


ORIGIN_KEYS = ("lab", "preset")  # what a comparison's origin names


def _clean_origin(origin: Any) -> dict[str, str]:
    """``{"lab": key, "preset": key}``; TypeError naming anything else."""
    if not (isinstance(origin, dict) and set(origin) == set(ORIGIN_KEYS)
            and all(isinstance(v, str) and v for v in origin.values())):
        raise TypeError(f"origin must be {{'lab': key, 'preset': key}} (two non-empty "
                        f"strings), got {origin!r}")
    return {k: origin[k] for k in ORIGIN_KEYS}


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



def _require_runs(conn: sqlite3.Connection, ids: list[str]) -> None:
    found = {r[0] for r in conn.execute(f"SELECT id FROM runs WHERE id IN ({_qmarks(ids)})",
                                        ids)}
    for rid in ids:
        if rid not in found:
            raise NotFound(f"no run with id {rid!r}")


def _run_selection(conn: sqlite3.Connection, runs: str | Iterable[str] | None,
                   comparison: str | None) -> tuple[list[str], bool]:
    """(run ids in display order, whether the SQL must filter by them)."""
    if comparison is not None:
        _require(conn, "comparison", comparison)
        order = [r[0] for r in conn.execute("SELECT id FROM runs WHERE comparison_id = ? "
                                            "ORDER BY position", (comparison,))]
        if (wanted := _as_list(runs)) is not None:
            _require_runs(conn, wanted)
            order = [r for r in order if r in set(wanted)]
        return order, True
    if (ids := _as_list(runs)) is not None:
        _require_runs(conn, ids)
        return ids, True
    order = [r[0] for r in conn.execute("SELECT r.id FROM runs r JOIN comparisons c ON "
                                        "c.id = r.comparison_id ORDER BY c.created_at, "
                                        "c.id, r.position")]
    return order, False
