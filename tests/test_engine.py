"""The engine with real worker processes: parallel runs, live records, pause/resume/cancel,
failures kept as statuses, and a real kill -9 of a worker and of the engine."""
import os
import signal
import sqlite3
import time

import pytest

from normlab.runs.comparisons import compare, wait_for
from normlab.training.config import RunConfig
from normlab.runs.engine import WORKER_NICE, engine_pid, ensure_engine, stop_engine
from normlab.runs.store import Store

QUICK = RunConfig(steps=60, eval_interval=20, width=16, depth=2)
LONG = RunConfig(steps=1_000_000, eval_interval=1000, width=16, depth=2, record_interval=100)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "runs.sqlite"
    s = Store(path)
    yield s
    stop_engine(path)
    s.close()


def until(predicate, timeout=60.0, poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout}s")


def test_comparison_runs_in_parallel_workers(store):
    cid, runs = compare(QUICK, norms=["batch", "layer", "none", "rms"], store=store, workers=2)
    statuses = wait_for(cid, store=store, timeout=120)
    assert set(statuses.values()) == {"done"}
    table = store.runs(comparison=cid)
    assert table.worker_pid.nunique() == 2  # two workers shared the four runs
    assert (table.step == 60).all()
    frame = store.metrics(comparison=cid, metrics=["loss"], sites=["val"])
    per_run = frame.groupby("run", observed=True).step.apply(tuple)
    assert sorted(per_run.index) == sorted(runs)
    assert all(steps == (0, 20, 40, 60) for steps in per_run)
    assert engine_pid(store.path) is not None
    assert ensure_engine(store.path) == engine_pid(store.path)  # one engine per store
    # the workers train at a lower priority than the engine (the dashboard comes first)
    engine_nice = os.getpriority(os.PRIO_PROCESS, engine_pid(store.path))
    assert WORKER_NICE > 0
    for pid in table.worker_pid.unique():
        assert os.getpriority(os.PRIO_PROCESS, int(pid)) == min(19, engine_nice + WORKER_NICE)


def test_pause_resume_cancel_and_live_records(store):
    cid, (rid,) = compare(LONG, norms=["batch"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    first = store.metrics(rid, metrics=["loss"], sites=["train"])
    assert len(first) > 0  # records stream in while it trains
    store.request(rid, "pause")
    until(lambda: store.run(rid)["status"] == "paused")
    held = store.run(rid)["step"]
    time.sleep(1.0)
    assert store.run(rid)["step"] == held
    store.request(cid, "resume")
    until(lambda: store.run(rid)["status"] == "running" and store.run(rid)["step"] > held)
    store.request(cid, "cancel")
    until(lambda: store.run(rid)["status"] == "cancelled")
    assert store.run(rid)["step"] > held


def test_bad_input_inside_a_worker_ends_as_failed_with_the_message(store):
    cid, (rid,) = store.create_comparison([RunConfig(dataset="csv:/no/such/file.csv").to_dict()])
    ensure_engine(store.path, workers=1)
    until(lambda: store.run(rid)["status"] == "failed")
    assert "file.csv" in store.run(rid)["error"]


def test_diverging_run_keeps_its_records(store):
    cfg = RunConfig(norm="none", lr=1e4, init="normal", init_scale=10.0, activation="relu",
                    steps=300)
    cid, (rid,) = compare(cfg, store=store, workers=1)
    wait_for(cid, store=store, timeout=60)
    run = store.run(rid)
    assert run["status"] == "diverged" and run["error"].startswith("diverged at step")
    loss = store.metrics(rid, metrics=["loss"], sites=["train"])
    assert len(loss) == run["step"]


def test_kill_9_of_a_worker_keeps_flushed_records_and_marks_interrupted(store):
    cid, (rid, second) = compare(LONG, norms=["batch", "layer"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 200)
    pid = store.run(rid)["worker_pid"]
    flushed = store.metrics(rid)
    os.kill(pid, signal.SIGKILL)
    until(lambda: store.run(rid)["status"] == "interrupted")
    run = store.run(rid)
    assert f"worker process {pid} died" in run["error"]
    after = store.metrics(rid)
    assert len(after) >= len(flushed) > 0  # nothing flushed was lost
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    until(lambda: store.run(second)["status"] == "running")  # a new worker took over
    store.request(second, "cancel")


def test_kill_9_of_the_engine_then_restart_marks_interrupted(store):
    cid, (rid,) = compare(LONG, norms=["layer"], store=store, workers=1)
    until(lambda: store.run(rid)["step"] > 0)
    os.kill(engine_pid(store.path), signal.SIGKILL)
    worker = store.run(rid)["worker_pid"]
    until(lambda: not _alive(worker), timeout=30)  # orphaned workers stop by themselves
    until(lambda: engine_pid(store.path) is None)
    ensure_engine(store.path, workers=1)
    until(lambda: store.run(rid)["status"] == "interrupted")
    assert store.metrics(rid, metrics=["loss"]).shape[0] > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_page_runs_while_the_engine_starts_start_no_second_engine(store):
    # the entry's page run, then Home's, call ensure_engine ~0.3 s apart, before the new
    # engine holds its lock (it imports torch first): one process, not two
    first = ensure_engine(store.path, workers=1)
    assert engine_pid(store.path) is None  # still starting: the lock check alone would spawn
    assert ensure_engine(store.path, workers=1) == first
    until(lambda: engine_pid(store.path) == first)
