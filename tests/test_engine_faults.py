"""Faults around the engine (issue 11, point 4; point 5's engines that outlive pytest):
the store file deleted or replaced, a kill -9 of the supervisor, a waiting caller with no
engine, paused runs holding worker slots, and engines whose starting process died."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from normlab.runs.comparisons import EngineGone, compare, wait_for
from normlab.runs.engine import engine_pid, ensure_engine, stop_engine
from normlab.runs.store import Store, pid_alive
from normlab.training.config import RunConfig
from test_engine import LONG, QUICK, _alive, until


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "runs.sqlite"
    s = Store(path)
    yield s
    stop_engine(path)
    s.close()


def _remove_store(path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def test_deleted_store_stops_the_engine(store):
    cid, (rid,) = compare(LONG, norms=["batch"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    pid = engine_pid(store.path)
    store.close()
    _remove_store(store.path)
    until(lambda: not _alive(pid), timeout=30)
    assert engine_pid(store.path) is None


def test_replaced_store_is_served_by_the_same_engine(store):
    cid, (rid,) = compare(LONG, norms=["batch"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    pid = engine_pid(store.path)
    store.close()
    _remove_store(store.path)
    with Store(store.path) as fresh:  # a new file at the same path
        _, (new,) = fresh.create_comparison([QUICK.to_dict()])
        until(lambda: fresh.run(new)["status"] == "done", timeout=60)  # no ensure_engine
        assert engine_pid(fresh.path) == pid


def test_workers_mark_their_runs_interrupted_when_the_engine_dies(store):
    cid, (rid,) = compare(LONG, norms=["layer"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    engine = engine_pid(store.path)
    os.kill(engine, signal.SIGKILL)
    until(lambda: store.run(rid)["status"] == "interrupted", timeout=30)  # no new engine
    run = store.run(rid)
    assert f"the engine (pid {engine}) died at step" in run["error"]
    until(lambda: engine_pid(store.path) is None, timeout=30)  # the worker exited too
    assert len(store.metrics(rid, metrics=["loss"])) > 0  # the records stay


def test_waiting_caller_notices_a_dead_engine(store):
    cid, (rid, queued) = compare(LONG, norms=["layer", "batch"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    os.kill(engine_pid(store.path), signal.SIGKILL)
    with pytest.raises(EngineGone, match=f"no engine serves {store.path}"):
        wait_for(cid, store=store, restart=False, timeout=60)
    notes = []
    done = {}

    def wait():
        done.update(wait_for(cid, store=store, on_notice=notes.append, timeout=120))

    waiter = threading.Thread(target=wait)
    waiter.start()
    until(lambda: notes, timeout=30)
    assert "started a new one" in notes[0]
    until(lambda: store.run(queued)["status"] == "running", timeout=60)  # the queue goes on
    store.request(cid, "cancel")
    waiter.join(60)
    assert done == {rid: "interrupted", queued: "cancelled"}


def test_paused_runs_do_not_block_queued_runs(store):
    cid, ids = compare(LONG, norms=["batch", "layer", "none"], store=store, workers=1)
    first, second, third = ids
    until(lambda: store.run(first)["step"] > 0)
    store.request(first, "pause")
    until(lambda: store.run(first)["status"] == "paused")
    until(lambda: store.run(second)["status"] == "running" and store.run(second)["step"] > 0)
    store.request(second, "pause")
    until(lambda: store.run(third)["status"] == "running")
    assert {store.run(r)["status"] for r in (first, second)} == {"paused"}
    store.request(first, "resume")
    until(lambda: store.run(first)["status"] == "running")
    store.request(cid, "cancel")
    until(lambda: all(store.run(r)["status"] == "cancelled" for r in ids))


def test_engine_started_by_a_killed_test_process_stops(tmp_path):
    path = tmp_path / "orphan.sqlite"
    script = textwrap.dedent(f"""
        import time
        from normlab.runs.engine import ensure_engine
        print(ensure_engine({str(path)!r}, workers=1), flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "NORMLAB_ENGINE_WATCH": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        engine = int(proc.stdout.readline())
        until(lambda: engine_pid(path) == engine, timeout=60)
        proc.kill()  # kill -9 of "pytest"
        proc.wait()
        until(lambda: not _alive(engine), timeout=30)
    finally:
        proc.kill()
        stop_engine(path)
