"""The run engine: one supervisor per store runs queued runs in warm worker processes.

The store *is* the queue. Anyone — a dashboard session, the CLI, a notebook — submits a
comparison by inserting queued runs (:func:`submit`), then makes sure the engine is up
(:func:`ensure_engine`). The engine is a detached process (``python -m normlab engine``),
one per store file, guaranteed by an exclusive ``flock`` on ``STORE.engine.lock``:

* it imports torch and runs a tiny warm-up training once (torch's lazy imports cost about
  a second), then forks ``workers`` processes (default: the number of CPU cores), each
  with one torch thread, so the machine is never oversubscribed and two people submitting
  at once share the workers through the store's fair claim order; workers run at nice
  ``WORKER_NICE``, so the dashboard drawing their curves is not starved by training;
* each worker claims a run, trains it, streams its records to the store every
  ``FLUSH_SECONDS`` (and right after the first step), reports progress, and obeys the
  run's control request between flushes: ``pause`` (sleeps holding the run), ``resume``,
  ``cancel``;
* the supervisor replaces a worker that dies and marks its run ``interrupted`` (with the
  last step); at start it marks runs left ``running`` by a dead process the same way;
* a paused run keeps its worker (its model lives there), but does not keep the slot:
  the supervisor forks one extra worker per paused run (up to ``PAUSED_ALLOWANCE``), so
  queued runs go on; after a resume, surplus workers exit once idle;
* faults around it: if the store file is deleted it stops, if it is replaced it starts
  over on the new file; a worker whose supervisor died marks its run ``interrupted`` and
  exits; with ``NORMLAB_ENGINE_WATCH=1`` in the starting process's environment (the test
  suite sets it), the engine stops when that process dies;
* it exits after ``idle_exit`` seconds with nothing queued or running.

Worker errors never escape: a bad config or dataset ends the run ``failed`` with the
message, a non-finite loss ends it ``diverged``.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from normlab.runs.store import NotFound, Store, default_store_path, pid_alive

FLUSH_SECONDS = 0.5  # how often a worker writes its records (the live view's latency)
POLL_SECONDS = 0.05  # how often an idle worker looks for queued runs
IDLE_EXIT_SECONDS = 900.0  # the engine stops after this long with nothing to do
PAUSED_ALLOWANCE = 8  # extra workers forked for paused runs, so queued runs keep going
WATCH_ENV = "NORMLAB_ENGINE_WATCH"  # "1": an engine started here stops when we exit
# Workers train at a lower CPU priority than everything else (the supervisor included):
# with a worker on every core, the dashboard's server and the browser drawing its charts
# would otherwise wait behind training for their share of a core; reniced, a view toggle
# preempts training, and training alone on the machine runs as fast as before.
WORKER_NICE = 10


def lock_path(store_path: Path) -> Path:
    return Path(f"{store_path}.engine.lock")


def log_path(store_path: Path) -> Path:
    return Path(f"{store_path}.engine.log")


def engine_pid(store_path: str | os.PathLike | None = None) -> int | None:
    """The pid of the engine serving ``store_path``, or None if none is running."""
    return lock_holder(lock_path(_store_path(store_path)))


def lock_holder(path: Path) -> int | None:
    """The pid written in lock file ``path`` while a process holds its lock (-1 when the
    holder wrote none yet), or None when no process holds it."""
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def ensure_engine(store_path: str | os.PathLike | None = None, workers: int | None = None,
                  idle_exit: float = IDLE_EXIT_SECONDS) -> int | None:
    """Start the engine for ``store_path`` unless one runs; returns its pid if known.

    Returns at once: the new engine warms up in the background, and queued runs wait in
    the store until it claims them.
    """
    path = _store_path(store_path)
    pid = engine_pid(path)
    if pid is not None:
        return pid
    started = _STARTED.get(path)
    if started is not None and started.poll() is None:
        # started here moments ago and still importing torch (~2-5 s before it holds the
        #   lock): a page run meanwhile (the entry's, then Home's) must not start a second
        #   engine, whose imports would only slow the first one down before it gives up
        return started.pid
    Store(path).close()  # create / migrate the file before the engine opens it
    cmd = [sys.executable, "-m", "normlab", "engine", "--store", str(path),
           "--idle-exit", str(idle_exit)]
    if workers:
        cmd += ["--workers", str(workers)]
    if os.environ.get(WATCH_ENV) == "1":
        cmd += ["--watch-pid", str(os.getpid())]
    _STARTED[path] = start(cmd, log_path(path))
    return _STARTED[path].pid


_STARTED: dict[Path, subprocess.Popen] = {}  # the engine this process started, per store


def engine_starting(store_path: str | os.PathLike | None = None) -> int | None:
    """The pid of an engine this process started for the store that is alive but does not
    hold the store's lock yet (it imports torch first), else None."""
    started = _STARTED.get(_store_path(store_path))
    if started is None or started.poll() is not None:
        return None
    return started.pid if engine_pid(store_path) is None else None


def spawn(cmd: list[str], log: Path) -> int:
    """Start ``cmd`` in the background, in its own session, appending to ``log``; its pid."""
    return start(cmd, log).pid


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """:func:`spawn`, returning the process."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, cwd=os.getcwd())


def stop_engine(store_path: str | os.PathLike | None = None, timeout: float = 10.0) -> bool:
    """Stop the engine (its runs become 'interrupted'); True if one was stopped."""
    return stop_holder(lock_path(_store_path(store_path)), timeout)


def stop_holder(lock: Path, timeout: float) -> bool:
    """SIGTERM the process holding ``lock`` and wait (up to ``timeout`` s) until it lets
    go; True if one was stopped."""
    pid = lock_holder(lock)
    if not pid or pid < 0:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and lock_holder(lock) is not None:
        time.sleep(0.05)
    return True


def _store_path(store_path: str | os.PathLike | None) -> Path:
    return Path(store_path).expanduser().resolve() if store_path else default_store_path()


# -- the engine process ---------------------------------------------------------------


@dataclass
class _Worker:
    pid: int
    retiring: bool = False  # asked to exit once idle (a paused run it covered resumed)


class EngineAlreadyRunning(RuntimeError):
    pass


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the store file, or None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def serve(store_path: str | os.PathLike | None = None, workers: int | None = None,
          idle_exit: float = IDLE_EXIT_SECONDS, watch_pid: int | None = None) -> None:
    """Run the engine in this process until idle for ``idle_exit`` seconds, SIGTERM, the
    store file's deletion, or (if given) the death of process ``watch_pid``."""
    path = _store_path(store_path)
    lock = open(lock_path(path), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise EngineAlreadyRunning(f"an engine already serves {path}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    n_workers = workers or os.cpu_count() or 1
    global _PROBE_THREADED  # forked workers inherit it
    _PROBE_THREADED = n_workers < (os.cpu_count() or 1)
    _warm_up()
    store = Store(path)
    identity = _identity(path)
    store.mark_interrupted()
    pool: dict[int, _Worker] = {}
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    idle_since = time.monotonic()
    print(f"normlab engine {os.getpid()}: {n_workers} workers on {path}", flush=True)
    try:
        while not stopping:
            if watch_pid is not None and not pid_alive(watch_pid):
                print(f"process {watch_pid} that started the engine is gone: stopping",
                      flush=True)
                break
            now_identity = _identity(path)
            if now_identity != identity:
                _stop_workers(pool)
                store.close()
                if now_identity is None:
                    print(f"the store {path} was deleted: stopping", flush=True)
                    break
                print(f"the store {path} was replaced: serving the new file", flush=True)
                store = Store(path)
                identity = _identity(path)
                store.mark_interrupted()
            paused = _paused_workers(store, pool)
            target = n_workers + min(len(paused), PAUSED_ALLOWANCE)
            while len(pool) < target:
                pid = _fork_worker(path)
                pool[pid] = _Worker(pid)
            if len(pool) > target:
                _retire_idle(store, pool, len(pool) - target)
            for pid in list(pool):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    del pool[pid]
                    store.mark_interrupted()  # its run, if any, becomes 'interrupted'
            store.checkpoint()  # the workers' log into the file (they never wait for it)
            if store.unfinished():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_exit:
                break
            time.sleep(0.25)
    finally:
        _stop_workers(pool)
        if _identity(path) == identity:
            store.mark_interrupted()
        store.close()
        lock.close()


def _stop_workers(pool: dict[int, _Worker]) -> None:
    for pid in list(pool):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        del pool[pid]


def _active_pids(store: Store, status: str) -> set[int]:
    return {int(p) for (p,) in store.run_lines(status=status, columns=("worker_pid",))
            if p is not None}


def _paused_workers(store: Store, pool: dict[int, _Worker]) -> set[int]:
    """The pool's workers that hold a paused run."""
    return _active_pids(store, "paused") & set(pool)


def _retire_idle(store: Store, pool: dict[int, _Worker], surplus: int) -> None:
    """Ask up to ``surplus`` idle workers to exit (SIGUSR1: they finish any run first)."""
    surplus -= sum(w.retiring for w in pool.values())  # already asked, not yet gone
    busy = _active_pids(store, "running") | _active_pids(store, "paused")
    for pid in [p for p in pool if p not in busy and not pool[p].retiring][:max(0, surplus)]:
        pool[pid].retiring = True
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass


def _warm_up() -> None:
    """Import torch and run a tiny training once, so forked workers start warm."""
    import torch

    torch.set_num_threads(1)
    from normlab.training.config import RunConfig
    from normlab.training.trainer import train

    from normlab.measure.probes import stop_statistics_thread

    train(RunConfig(dataset="moons", n_samples=64, steps=3, batch_size=8, width=4, depth=1,
                    eval_interval=3))
    stop_statistics_thread()  # the workers are forked from a single-threaded supervisor
    try:  # the quick-start dataset, in memory before the fork (10 ms from its cache)
        from normlab.training.data import load_dataset
        load_dataset("digits")
    except Exception as exc:  # a broken cache must not stop the engine
        print(f"warm-up: could not preload digits: {exc}", flush=True)


def _fork_worker(path: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, _retire)
        os.nice(WORKER_NICE)  # the UI before training (see WORKER_NICE)
        worker_loop(path, parent=os.getppid())
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


_RETIRING = False  # set in a worker by SIGUSR1: exit before claiming another run
# Probes take activation statistics on a helper thread only if a core is free for it:
# with a worker on every core the thread's extra CPU (cross-core cache traffic, wake-ups:
# ~+10% per step) would slow the comparison down.
_PROBE_THREADED = False


def _retire(signum, frame) -> None:
    global _RETIRING
    _RETIRING = True


def worker_loop(path: Path, parent: int | None = None, max_runs: int | None = None) -> None:
    """Claim and train runs until the parent dies (or ``max_runs`` are done, or the
    supervisor retires this worker). Its writes leave checkpointing to the engine
    (``parent``), off the training's critical path."""
    store = Store(path, autocheckpoint=parent is None)
    done = 0
    while max_runs is None or done < max_runs:
        if parent is not None and os.getppid() != parent:
            return  # the engine died: leave the queue for the next one
        if _RETIRING:
            return
        claimed = store.claim_run(os.getpid())
        if claimed is None:
            time.sleep(POLL_SECONDS)
            continue
        if run_one(store, *claimed, parent=parent) == "orphaned":
            return
        done += 1


def run_one(store: Store, run_id: str, config: dict, parent: int | None = None) -> str:
    """Train one claimed run to its end, writing everything to ``store``; its final status.

    Stops quietly if the run is deleted meanwhile; if the engine (``parent``) dies, marks
    the run 'interrupted' at its last step and returns 'orphaned'.
    """
    from normlab.training.config import RunConfig
    from normlab.training.trainer import Trainer

    step = 0
    try:
        trainer = Trainer(RunConfig.from_dict(config), probe_threaded=_PROBE_THREADED)
    except ValueError as exc:  # ConfigError, DatasetError: the user's input
        store.finish(run_id, "failed", 0, str(exc))
        return "failed"
    except Exception as exc:
        store.finish(run_id, "failed", 0, f"{type(exc).__name__}: {exc}")
        return "failed"
    start = time.monotonic()
    batches = trainer.batches(flush_seconds=FLUSH_SECONDS, first_flush_after=1)
    try:
        for batch in batches:
            store.append(run_id, batch)
            step = trainer.outcome.step
            store.progress(run_id, step, step / max(time.monotonic() - start, 1e-9))
            if parent is not None and os.getppid() != parent:  # records kept, then stop
                batches.close()
                return _orphaned(store, run_id, step, parent)
            request = store.control(run_id)
            if request == "pause":
                paused_at = time.monotonic()
                request = _wait_while_paused(store, run_id, parent)
                start += time.monotonic() - paused_at  # keep steps/s honest
            if request == "orphaned":
                batches.close()
                return _orphaned(store, run_id, step, parent)
            if request == "cancel":
                batches.close()
                store.finish(run_id, "cancelled", step)
                return "cancelled"
    except NotFound:  # deleted while training
        batches.close()
        return "deleted"
    except Exception as exc:
        store.finish(run_id, "failed", step, f"{type(exc).__name__} at step {step}: {exc}")
        return "failed"
    outcome = trainer.outcome
    store.finish(run_id, outcome.status, outcome.step, outcome.message or None)
    return outcome.status


def _orphaned(store: Store, run_id: str, step: int, parent: int | None) -> str:
    """The engine died under this worker: the run ends 'interrupted', nothing else lost."""
    try:
        store.finish(run_id, "interrupted", step,
                     f"the engine (pid {parent}) died at step {step}")
    except Exception:  # the store is gone too: nothing left to mark
        pass
    return "orphaned"


def _wait_while_paused(store: Store, run_id: str, parent: int | None) -> str | None:
    store.set_status(run_id, "paused")
    while (request := store.control(run_id)) == "pause":
        if parent is not None and os.getppid() != parent:
            return "orphaned"
        time.sleep(0.1)
        store.progress(run_id, store.run(run_id)["step"])  # heartbeat
    if request != "cancel":
        store.set_status(run_id, "running")
    return request
