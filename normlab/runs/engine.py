"""The run engine: one supervisor per store runs queued runs in warm worker processes.

The store *is* the queue. Anyone — a dashboard session, the CLI, a notebook — submits a
comparison by inserting queued runs (:func:`submit`), then makes sure the engine is up
(:func:`ensure_engine`). The engine is a detached process (``python -m normlab engine``),
one per store file, guaranteed by an exclusive ``flock`` on ``STORE.engine.lock``:

* it imports torch and runs a tiny warm-up training once (torch's lazy imports cost about
  a second), then forks ``workers`` processes (default: the number of CPU cores), each
  with one torch thread, so the machine is never oversubscribed and two people submitting
  at once share the workers through the store's fair claim order;
* each worker claims a run, trains it, streams its records to the store every
  ``FLUSH_SECONDS`` (and right after the first step), reports progress, and obeys the
  run's control request between flushes: ``pause`` (sleeps holding the run), ``resume``,
  ``cancel``;
* the supervisor replaces a worker that dies and marks its run ``interrupted`` (with the
  last step); at start it marks runs left ``running`` by a dead process the same way;
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

from normlab.runs.store import NotFound, Store, default_store_path

FLUSH_SECONDS = 0.5  # how often a worker writes its records (the live view's latency)
POLL_SECONDS = 0.05  # how often an idle worker looks for queued runs
IDLE_EXIT_SECONDS = 900.0  # the engine stops after this long with nothing to do


def lock_path(store_path: Path) -> Path:
    return Path(f"{store_path}.engine.lock")


def log_path(store_path: Path) -> Path:
    return Path(f"{store_path}.engine.log")


def engine_pid(store_path: str | os.PathLike | None = None) -> int | None:
    """The pid of the engine serving ``store_path``, or None if none is running."""
    path = lock_path(_store_path(store_path))
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
    Store(path).close()  # create / migrate the file before the engine opens it
    cmd = [sys.executable, "-m", "normlab", "engine", "--store", str(path),
           "--idle-exit", str(idle_exit)]
    if workers:
        cmd += ["--workers", str(workers)]
    with open(log_path(path), "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=os.getcwd())
    return proc.pid


def stop_engine(store_path: str | os.PathLike | None = None, timeout: float = 10.0) -> bool:
    """Stop the engine (its runs become 'interrupted'); True if one was stopped."""
    pid = engine_pid(store_path)
    if not pid or pid < 0:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and engine_pid(store_path) is not None:
        time.sleep(0.05)
    return True


def _store_path(store_path: str | os.PathLike | None) -> Path:
    return Path(store_path).expanduser().resolve() if store_path else default_store_path()


# -- the engine process ---------------------------------------------------------------


@dataclass
class _Worker:
    pid: int


class EngineAlreadyRunning(RuntimeError):
    pass


def serve(store_path: str | os.PathLike | None = None, workers: int | None = None,
          idle_exit: float = IDLE_EXIT_SECONDS) -> None:
    """Run the engine in this process until idle for ``idle_exit`` seconds or SIGTERM."""
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
    _warm_up()
    store = Store(path)
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
            while len(pool) < n_workers:
                pid = _fork_worker(path)
                pool[pid] = _Worker(pid)
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
        for pid in pool:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        store.mark_interrupted()
        store.close()
        lock.close()


def _warm_up() -> None:
    """Import torch and run a tiny training once, so forked workers start warm."""
    import torch

    torch.set_num_threads(1)
    from normlab.training.config import RunConfig
    from normlab.training.trainer import train

    train(RunConfig(dataset="moons", n_samples=64, steps=3, batch_size=8, width=4, depth=1,
                    eval_interval=3))
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
        worker_loop(path, parent=os.getppid())
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def worker_loop(path: Path, parent: int | None = None, max_runs: int | None = None) -> None:
    """Claim and train runs until the parent dies (or ``max_runs`` are done). Its writes
    leave checkpointing to the engine (``parent``), off the training's critical path."""
    store = Store(path, autocheckpoint=parent is None)
    done = 0
    while max_runs is None or done < max_runs:
        if parent is not None and os.getppid() != parent:
            return  # the engine died: leave the queue for the next one
        claimed = store.claim_run(os.getpid())
        if claimed is None:
            time.sleep(POLL_SECONDS)
            continue
        if run_one(store, *claimed, parent=parent) == "orphaned":
            return
        done += 1


def run_one(store: Store, run_id: str, config: dict, parent: int | None = None) -> str:
    """Train one claimed run to its end, writing everything to ``store``; its final status.

    Stops quietly if the run is deleted meanwhile, or if the engine (``parent``) dies —
    then the run stays 'running' until the next engine marks it 'interrupted'.
    """
    from normlab.training.config import RunConfig
    from normlab.training.trainer import Trainer

    step = 0
    try:
        trainer = Trainer(RunConfig.from_dict(config))
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
            if parent is not None and os.getppid() != parent:
                batches.close()
                return "orphaned"
            store.append(run_id, batch)
            step = trainer.outcome.step
            store.progress(run_id, step, step / max(time.monotonic() - start, 1e-9))
            request = store.control(run_id)
            if request == "pause":
                paused_at = time.monotonic()
                request = _wait_while_paused(store, run_id, parent)
                start += time.monotonic() - paused_at  # keep steps/s honest
            if request == "orphaned":
                batches.close()
                return "orphaned"
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
