"""The Ray backend: runs trained as Ray tasks on a cluster, their records written here.

Ray (https://docs.ray.io, ``python -m pip install "ray==2.60.0"``) is optional and only
this module's functions import it. A comparison submitted with ``backend="ray"`` queues
its runs with ``runs.backend = 'ray'``; the local engine never claims them, and the one
Ray driver per store (``python -m normlab engine --backend ray``, started detached by
:func:`ensure_driver`, unique through an ``flock`` on ``STORE.ray.lock``) never claims
local ones. The driver:

* connects with ``ray.init(address)`` — ``None`` starts a local Ray instance on this
  machine, ``"auto"`` or ``"HEAD:6379"`` joins a cluster (the code of :mod:`normlab` is
  shipped along; the nodes need the packages of requirements.txt). Ray Client addresses
  (``ray://``) are refused: streaming generators do not work over Ray Client;
* claims as many queued runs as the cluster has CPUs and starts each as a Ray *streaming
  generator* task (:func:`train_task`: one CPU, one torch thread, no retries) that yields
  its record batches every ``FLUSH_SECONDS`` and a last ``("end", status, step, message)``;
* alone writes the store: each batch is appended the moment it arrives, with the step
  and speed (the run's ``worker_pid`` is the driver's, so a dead driver's runs become
  ``interrupted`` at the next start of either engine, with the last step written);
* applies control requests: ``pause`` stops reading the run's stream, and Ray's
  generator backpressure (two unread batches) halts the task; ``resume`` reads on;
  ``cancel`` ends the run ``cancelled`` at its last written step and cancels the task;
* ends a run whose worker process or node died ``interrupted`` at its last written step
  (every batch yielded before the death is still delivered and written first), and a
  run whose task raised ``failed`` with the message;
* exits after ``idle_exit`` seconds with no Ray run unfinished, shutting Ray down.

Determinism is the trainer's: the same config gives bit-identical metrics on a Ray worker
and in the local engine (both at one torch thread).
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normlab.runs.engine import lock_holder, spawn, stop_holder
from normlab.runs.store import NotFound, Store, default_store_path, pid_alive

RAY_VERSION = "2.60.0"  # the version requirements-dev.txt pins and the tests run
INSTALL = f'python -m pip install "ray=={RAY_VERSION}"'
FLUSH_SECONDS = 0.5  # how often a task yields its records (as the local engine flushes)
BACKPRESSURE = 2  # unread batches after which a task waits: how a pause reaches it
POLL_SECONDS = 0.1  # the longest the driver waits for a batch before checking requests
LOCAL_OBJECT_STORE = 100 * 2**20  # bytes for a local Ray instance's object store
IDLE_EXIT_SECONDS = 900.0


class RayMissing(ImportError):
    """``--backend ray`` without Ray installed; the message says how to install it."""


def ray_available() -> bool:
    """Whether Ray is installed (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    if not ray_available():
        raise RayMissing(f"the ray backend needs Ray, which is not installed; install it "
                         f"with: {INSTALL}")


def default_backend() -> str:
    """'ray' when NORMLAB_RAY_ADDRESS points at a cluster, else 'local'."""
    return "ray" if os.environ.get("NORMLAB_RAY_ADDRESS") else "local"


def ray_address(address: str | None = None) -> str | None:
    """The address to join: ``address``, else $NORMLAB_RAY_ADDRESS, else None (local).

    Ray Client addresses (``ray://``) are refused with a ValueError: Ray's streaming
    generators, which carry the records, do not work over Ray Client."""
    address = address or os.environ.get("NORMLAB_RAY_ADDRESS") or None
    if address is not None and address.strip().lower().startswith("ray://"):
        raise ValueError(f"Ray address {address!r} is a Ray Client address, which cannot "
                         "stream records; give the cluster's GCS address instead (HEAD:6379, "
                         "or auto on a cluster node)")
    return address


def lock_path(store_path: Path) -> Path:
    return Path(f"{store_path}.ray.lock")


def log_path(store_path: Path) -> Path:
    return Path(f"{store_path}.ray.log")


def _store_path(store_path: str | os.PathLike | None) -> Path:
    return Path(store_path).expanduser().resolve() if store_path else default_store_path()


def driver_pid(store_path: str | os.PathLike | None = None) -> int | None:
    """The pid of the Ray driver serving ``store_path``, or None if none is running."""
    return lock_holder(lock_path(_store_path(store_path)))


def ensure_driver(store_path: str | os.PathLike | None = None, address: str | None = None,
                  idle_exit: float = IDLE_EXIT_SECONDS) -> int | None:
    """Start the Ray driver for ``store_path`` unless one runs; its pid. Returns at once
    (queued runs wait in the store). Raises :class:`RayMissing` without Ray."""
    require_ray()
    path = _store_path(store_path)
    pid = driver_pid(path)
    if pid is not None:
        return pid
    Store(path).close()  # create / migrate the file before the driver opens it
    cmd = [sys.executable, "-m", "normlab", "engine", "--backend", "ray", "--store", str(path),
           "--idle-exit", str(idle_exit)]
    if (address := ray_address(address)) is not None:
        cmd += ["--ray-address", address]
    return spawn(cmd, log_path(path))


def stop_driver(store_path: str | os.PathLike | None = None, timeout: float = 20.0) -> bool:
    """Stop the Ray driver (its runs become 'interrupted'); True if one was stopped."""
    return stop_holder(lock_path(_store_path(store_path)), timeout)


# -- the worker side: a Ray task that never sees the store ------------------------------


def train_task(config: dict, flush_seconds: float = FLUSH_SECONDS) -> Iterator[tuple]:
    """Train one run on a Ray worker, yielding ``("batch", RecordBatch, step, seconds)``
    (``seconds``: training time so far, waits for the reader excluded) and finally
    ``("end", status, step, message)``. Errors become a 'failed' end, as in the engine."""
    import torch

    torch.set_num_threads(1)
    from normlab.training.config import RunConfig
    from normlab.training.trainer import Trainer

    try:
        trainer = Trainer(RunConfig.from_dict(config), probe_threaded=False)  # a CPU per task
    except ValueError as exc:  # ConfigError, DatasetError: the user's input
        yield ("end", "failed", 0, str(exc))
        return
    except Exception as exc:
        yield ("end", "failed", 0, f"{type(exc).__name__}: {exc}")
        return
    busy, since = 0.0, time.monotonic()
    try:
        for batch in trainer.batches(flush_seconds=flush_seconds, first_flush_after=1):
            busy += time.monotonic() - since
            yield ("batch", batch, trainer.outcome.step, busy)
            since = time.monotonic()
    except Exception as exc:
        step = trainer.outcome.step
        yield ("end", "failed", step, f"{type(exc).__name__} at step {step}: {exc}")
        return
    outcome = trainer.outcome
    yield ("end", outcome.status, outcome.step, outcome.message)


# -- the driver process -----------------------------------------------------------------


@dataclass
class _Remote:
    run_id: str
    gen: Any  # ray.ObjectRefGenerator
    step: int = 0
    paused: bool = False
    heartbeat: float = field(default_factory=time.monotonic)


class DriverAlreadyRunning(RuntimeError):
    pass


class RayUnreachable(RuntimeError):
    """``ray.init`` failed; the queued Ray runs were ended 'failed' with this message."""


def connect(address: str | None = None) -> dict:
    """``ray.init`` for the driver: a small local instance, or the cluster at ``address``
    with NormLab's code shipped to its nodes; returns the cluster's resources."""
    import ray

    import normlab

    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                  configure_logging=False)
    if address is None:
        kwargs.update(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE)
    else:
        kwargs.update(address=address,
                      runtime_env={"py_modules": [os.path.dirname(normlab.__file__)]})
    ray.init(**kwargs)
    return ray.cluster_resources()


def serve(store_path: str | os.PathLike | None = None, address: str | None = None,
          idle_exit: float = IDLE_EXIT_SECONDS, slots: int | None = None) -> None:
    """Run the Ray driver in this process until idle for ``idle_exit`` seconds or SIGTERM.

    ``slots`` caps the runs in flight (default: the cluster's CPUs, rechecked every 5 s)."""
    require_ray()
    import ray

    path = _store_path(store_path)
    lock = open(lock_path(path), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DriverAlreadyRunning(f"a Ray driver already serves {path}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    address = ray_address(address)
    store = Store(path)
    store.mark_interrupted()  # runs of a dead driver or engine
    try:
        resources = connect(address)
    except Exception as exc:  # unreachable, refused, wrong token: say so on every run
        message = (f"could not connect to Ray at {address or 'a new local instance'}: "
                   f"{type(exc).__name__}: {exc}".splitlines()[0])
        print(message, flush=True)
        message += ("; check --ray-address / NORMLAB_RAY_ADDRESS (and RAY_AUTH_MODE=token "
                    "for a cluster with token authentication)")
        while (claimed := store.claim_run(os.getpid(), backend="ray")) is not None:
            store.finish(claimed[0], "failed", 0, message)
        store.close()
        lock.close()
        raise RayUnreachable(message) from exc
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    # after ray.init, which installs its own SIGTERM handler (that would skip the cleanup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    task = ray.remote(train_task).options(num_cpus=1, max_retries=0,
                                          _generator_backpressure_num_objects=BACKPRESSURE)
    print(f"normlab ray driver {os.getpid()}: {resources.get('CPU', 0):g} CPUs at "
          f"{address or 'a local Ray instance'} for {path}", flush=True)
    active: dict[str, _Remote] = {}
    draining: list[Any] = []  # generators of cancelled runs, read until they end
    capacity, checked = _capacity(slots), time.monotonic()
    idle_since = time.monotonic()
    try:
        while not stopping:
            if time.monotonic() - checked > 5.0:
                capacity, checked = _capacity(slots), time.monotonic()
            while len(active) + len(draining) < capacity:
                claimed = store.claim_run(os.getpid(), backend="ray")
                if claimed is None:
                    break
                rid, config = claimed
                active[rid] = _Remote(rid, task.remote(config, FLUSH_SECONDS))
            for remote in list(active.values()):
                _apply_request(store, remote, active, draining)
            _receive(store, active, draining)
            if active or store.unfinished(backend="ray"):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_exit:
                break
    finally:
        for remote in active.values():
            ray.cancel(remote.gen, force=True)
        mine = os.getpid()
        store.mark_interrupted(alive=lambda pid: pid != mine and pid_alive(pid))
        store.close()
        ray.shutdown()
        lock.close()


def _capacity(slots: int | None) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, slots) if slots else cpus)


def _apply_request(store: Store, remote: _Remote, active: dict, draining: list) -> None:
    """Carry a run's control request (cancel, pause, resume) to its task."""
    import ray

    rid = remote.run_id
    try:
        request = store.control(rid)
        if request == "cancel":
            store.finish(rid, "cancelled", remote.step)
        elif request == "pause" and not remote.paused:
            store.set_status(rid, "paused")
            remote.paused = True
        elif request is None and remote.paused:
            store.set_status(rid, "running")
            remote.paused = False
        elif remote.paused and time.monotonic() - remote.heartbeat > 1.0:
            store.progress(rid, remote.step)  # heartbeat while paused
            remote.heartbeat = time.monotonic()
    except NotFound:  # deleted meanwhile
        request = "cancel"
    if request == "cancel":
        ray.cancel(remote.gen)
        draining.append(remote.gen)
        del active[rid]


def _receive(store: Store, active: dict[str, _Remote], draining: list) -> None:
    """Wait up to POLL_SECONDS for batches; write every batch that has arrived."""
    import ray

    reading = {r.gen: r for r in active.values() if not r.paused}
    waitables = [*reading, *draining]
    if not waitables:
        time.sleep(POLL_SECONDS)
        return
    ready, _ = ray.wait(waitables, num_returns=1, timeout=POLL_SECONDS)
    if ready:
        ready, _ = ray.wait(waitables, num_returns=len(waitables), timeout=0)
    for gen in ready:
        remote = reading.get(gen)
        try:
            item = ray.get(next(gen))
        except StopIteration:
            item = ("end", "interrupted", None, "the Ray task ended without a final status")
        except ray.exceptions.RayTaskError as exc:  # raised inside the task, or cancelled
            if remote is None:
                draining.remove(gen)
                continue
            cancelled = isinstance(exc, ray.exceptions.TaskCancelledError) or \
                isinstance(exc.cause, ray.exceptions.TaskCancelledError)
            item = ("end", "interrupted" if cancelled else "failed", None,
                    f"{type(exc.cause).__name__} at step {remote.step}: {exc.cause}")
        except ray.exceptions.RayError as exc:  # the worker or its node died
            if remote is None:
                draining.remove(gen)
                continue
            item = ("end", "interrupted", None, f"Ray worker lost at step {remote.step}: "
                    f"{type(exc).__name__}")
        if remote is None:  # a cancelled run: its remaining output is dropped
            if item[0] == "end":
                draining.remove(gen)
            continue
        try:
            _write(store, remote, item)
        except NotFound:  # deleted meanwhile: stop its task
            item = ("end",)
            ray.cancel(gen)
            draining.append(gen)
        if item[0] == "end":
            del active[remote.run_id]


def _write(store: Store, remote: _Remote, item: tuple) -> None:
    if item[0] == "batch":
        _, batch, step, seconds = item
        store.append(remote.run_id, batch)  # before anything else: nothing flushed is lost
        remote.step = step
        store.progress(remote.run_id, step, step / max(seconds, 1e-9))
        return
    _, status, step, message = item
    if step is None and status == "interrupted":
        message = f"{message} (last step written: {remote.step})"
    store.finish(remote.run_id, status, remote.step if step is None else step,
                 message or None)
