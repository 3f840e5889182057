"""The run store: every comparison, run and measurement of NormLab in one SQLite file.

The dashboard and the CLI create comparisons and read results; worker processes claim
queued runs, append metrics and report progress, several processes at once. The file, its
tables, migrations and connections are :mod:`normlab.runs.storedb`; how metrics are stored as
chunks and read back as the tidy rows of :mod:`normlab.measure.schema` is :mod:`normlab.runs.chunks`.
This module is the :class:`Store` API over both, and re-exports their public names.

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
Export and import live in :mod:`normlab.runs.exchange`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normlab.runs import schedule
from normlab.runs.chunks import INSERT_CHUNK, MetricQuery, chunk_rows, metrics_frame, select_chunks
from normlab.measure.schema import RecordBatch
from normlab.runs.storedb import (
    ACTIVE, BACKENDS, COMPARISON_FIELDS, FINISHED, MIGRATIONS, RUN_FIELDS, STATUSES, Database,
    NotFound, _as_list, _clean_origin, _clean_tags, _config_dict, _default_name, _FLOAT_FIELDS,
    _INT_FIELDS, _new_id, _qmarks, _record, _require, _require_runs, _resolve, _run_selection,
    migrate,
)

# Not used here: re-exported so that every public name of normlab.runs.store stays importable.
from normlab.runs.chunks import MAX_STEP, STEP_DTYPE, VALUE_DTYPE, empty_metrics  # noqa: F401, E402
from normlab.runs.storedb import (  # noqa: F401, E402  (store_problem is used)
    BUSY_TIMEOUT_MS, SCHEMA_VERSION, StoreError, connect, default_store_path, store_problem,
)

ACTIONS = ("cancel", "pause", "resume")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------- the store

class Store(Database):
    """The run store in one SQLite file (see the module docstring).

    Safe to share between threads (one connection per thread) and to use from several
    processes at once; a Store inherited through ``fork`` opens fresh connections.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, autocheckpoint: bool = True):
        super().__init__(path, autocheckpoint=autocheckpoint)
        # normlab.runs.store.MIGRATIONS, looked up on each open: tests extend it by monkeypatch
        try:
            migrate(self._conn(), self.path, MIGRATIONS)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise StoreError(store_problem(self.path, e)) from None

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __reduce__(self):  # picklable for multiprocessing: reopen by path
        return (Store, (str(self.path),))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


    # -- submitting and claiming

    def create_comparison(self, configs: list[dict], name: str | None = None,
                          base: dict | None = None, grid: dict | None = None,
                          tags: Iterable[str] = (), backend: str = "local",
                          origin: dict | None = None) -> tuple[str, list[str]]:
        """Insert a comparison and one queued run per config (position = index), to be
        trained by ``backend`` ('local': the engine; 'ray': :mod:`normlab.runs.raydriver`).
        ``origin``: what launched it, ``{"lab": key, "preset": key}`` for a lab's preset."""
        configs = [_config_dict(c, i) for i, c in enumerate(configs)]
        if not configs:
            raise ValueError("a comparison needs at least one config; got an empty list")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        base = _config_dict(base, -1) if base is not None else None
        tags = _clean_tags(tags)
        with self._write() as conn:
            last = conn.execute("SELECT max(created_at) FROM comparisons").fetchone()[0]
            now = time.time()
            created = now if last is None or now > last else last + 1e-6
            cid = _new_id(conn, "comparisons", "c")
            conn.execute(
                "INSERT INTO comparisons (id, name, created_at, base, grid, tags, origin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, name or _default_name(configs, grid), created,
                 None if base is None else json.dumps(base),
                 None if grid is None else json.dumps(grid), json.dumps(tags),
                 None if origin is None else json.dumps(_clean_origin(origin))))
            run_ids = []
            for position, cfg in enumerate(configs):
                rid = _new_id(conn, "runs", "r")
                conn.execute(
                    "INSERT INTO runs (id, comparison_id, position, config, norm, seed, "
                    "dataset, model, total_steps, created_at, backend) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (rid, cid, position, json.dumps(cfg), cfg.get("norm"), cfg.get("seed"),
                     cfg.get("dataset"), cfg.get("model"), cfg.get("steps"), created, backend))
                run_ids.append(rid)
        return cid, run_ids

    def create_external_run(self, name: str, config: dict | None = None, *, pid: int,
                            total_steps: int | None = None, tags: Iterable[str] = ()
                            ) -> tuple[str, str]:
        """A comparison holding one run that a user's own loop trains (process ``pid``):
        created 'running', labelled ``name`` wherever runs are shown (its method column),
        its ``config`` stored as given, never claimed by the engine. Returns (comparison
        id, run id). If ``pid`` dies first, the next engine marks the run 'interrupted'."""
        name = str(name).strip()
        if not name:
            raise ValueError("an external run needs a name (e.g. name='resnet18-bn'), "
                             "shown as its label in the dashboard")
        config = _config_dict(dict(config or {}), 0)
        seed = config.get("seed")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        text = {k: config.get(k) if isinstance(config.get(k), str) else None
                for k in ("dataset", "model")}
        with self._write() as conn:
            last = conn.execute("SELECT max(created_at) FROM comparisons").fetchone()[0]
            now = time.time()
            created = now if last is None or now > last else last + 1e-6
            cid = _new_id(conn, "comparisons", "c")
            conn.execute("INSERT INTO comparisons (id, name, created_at, tags) "
                         "VALUES (?, ?, ?, ?)", (cid, name, created,
                                                 json.dumps(_clean_tags(tags))))
            rid = _new_id(conn, "runs", "r")
            conn.execute(
                "INSERT INTO runs (id, comparison_id, position, config, norm, seed, dataset, "
                "model, total_steps, created_at, name, status, worker_pid, started_at, "
                "heartbeat_at, source) VALUES (?,?,0,?,?,?,?,?,?,?,?,'running',?,?,?,"
                "'external')",
                (rid, cid, json.dumps(config), name, seed, text["dataset"], text["model"],
                 total_steps, created, name, int(pid), now, now))
        return cid, rid

    def claim_run(self, pid: int, backend: str = "local") -> tuple[str, dict] | None:
        """Atomically take the next queued run of ``backend`` and mark it running for
        worker ``pid`` (for the Ray backend: the driver, the process that writes its records).
        Runs logged by a user's own loop (``source`` 'external') are never claimed.

        Fairness: among comparisons with queued runs that are not held by a pause request,
        take from the one with the FEWEST active (running or paused) runs, so comparisons
        submitted at once by different people share the workers; ties go to the oldest
        comparison. Within a comparison, the run expected to take longest, by the
        throughput measured on earlier runs of its method and size
        (:mod:`normlab.runs.schedule`; unknown: submission order). None when nothing is
        queued.
        """
        with self._write() as conn:
            first = conn.execute(
                "WITH active AS (SELECT comparison_id, count(*) AS n FROM runs "
                "  WHERE status IN ('running', 'paused') GROUP BY comparison_id) "
                "SELECT r.comparison_id FROM runs r JOIN comparisons c ON c.id = r.comparison_id "
                "LEFT JOIN active a ON a.comparison_id = r.comparison_id "
                "WHERE r.status = 'queued' AND r.control IS NULL AND r.backend = ? "
                "AND r.source = 'normlab' "
                "ORDER BY coalesce(a.n, 0), c.created_at, c.id, r.position LIMIT 1",
                (backend,)).fetchone()
            if first is None:
                return None
            queued = conn.execute(
                "SELECT id, config, position FROM runs WHERE comparison_id = ? AND "
                "status = 'queued' AND control IS NULL AND backend = ? AND source = 'normlab' "
                "ORDER BY position", (first[0], backend)).fetchall()
            row = queued[schedule.longest_first(conn, queued)]
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

    def unfinished(self, backend: str | None = None) -> int:
        """How many runs (of ``backend``, or all) are queued, running or paused (a cheap
        poll for the engine)."""
        sql = "SELECT count(*) FROM runs WHERE status IN ('queued', 'running', 'paused')"
        if backend is None:
            return self._conn().execute(sql).fetchone()[0]
        return self._conn().execute(sql + " AND backend = ?", (backend,)).fetchone()[0]

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
                _require_runs(conn, ids)
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

    def run_lines(self, comparison: str | None = None, status: str | None = None,
                  columns: Iterable[str] = ("id", "comparison_id", "norm", "seed", "dataset",
                                            "status", "step", "total_steps")) -> list[tuple]:
        """Plain tuples of ``columns`` per run, in :meth:`runs` order: no JSON parsing and
        no DataFrame, so ``normlab list`` stays fast with tens of thousands of runs."""
        columns = list(columns)
        bad = [c for c in columns if c not in RUN_FIELDS or c == "config"]
        if bad:
            raise ValueError(f"unknown run column(s) {', '.join(bad)}; use some of "
                             f"{', '.join(f for f in RUN_FIELDS if f != 'config')}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        clauses, params = [], []
        with self._read() as conn:
            if comparison is not None:
                _require(conn, "comparison", comparison)
                clauses.append("r.comparison_id = ?")
                params.append(comparison)
            if status is not None:
                clauses.append("r.status = ?")
                params.append(status)
            where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
            return [tuple(r) for r in conn.execute(
                f"SELECT {', '.join('r.' + c for c in columns)} FROM runs r JOIN comparisons "
                f"c ON c.id = r.comparison_id{where} ORDER BY c.created_at, c.id, r.position",
                params)]

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

    def _chunks(self, conn, run_ids: list[str] | None, query: MetricQuery,
                after_rowid: int | None = None) -> list[tuple]:
        """chunks rows (id, run_id, layer, site, metric, n, steps, values) by run and series."""
        return select_chunks(conn, run_ids, query, after_rowid)

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
            order, restrict = _run_selection(conn, runs, comparison)
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
            order, restrict = _run_selection(conn, run_ids, comparison)
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
