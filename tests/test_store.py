"""Tests of the run store (normlab.runs.store) and its export/import (normlab.runs.exchange).

Oracles: pandas filters over ``RecordBatch.to_frame`` of the very batches appended; real
subprocesses for concurrency and for ``kill -9``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab.runs.store as store_mod
from normlab.runs import exchange
from normlab.runs.exchange import csv_sidecar
from normlab.measure.schema import COLUMNS, RecordBatch
from normlab.runs.store import FINISHED, STATUSES, NotFound, Store, StoreError, default_store_path

ROOT = Path(__file__).resolve().parents[1]
KEYS = [("model", "train", "loss"), ("model", "train", "acc"), ("model", "val", "loss"),
        ("hidden1", "post_act", "mean"), ("hidden2", "post_act", "mean"),
        ("hidden1", "param", "grad_norm"), ("hidden2", "param", "weight_norm")]


def make_batch(rng, lo: int, hi: int, keys=KEYS) -> RecordBatch:
    """Steps lo..hi-1; val loss every 5 steps, grad_norm every other, weight_norm never."""
    steps = np.arange(lo, hi, dtype=np.int64)
    values = rng.normal(size=(len(steps), len(keys)))
    for j, key in enumerate(keys):
        if key == ("model", "val", "loss"):
            values[steps % 5 != 0, j] = np.nan
        elif key[2] == "grad_norm":
            values[steps % 2 == 1, j] = np.nan
        elif key[2] == "weight_norm":
            values[:, j] = np.nan
    return RecordBatch(steps, list(keys), values)


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain-typed rows in a canonical order, for comparing against a reference."""
    out = frame.astype({c: str for c in ("run", "layer", "site", "metric")})
    return out.sort_values(["run", "layer", "site", "metric", "step"]).reset_index(drop=True)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.sqlite") as s:
        yield s


def configs(*norms, steps=100):
    return [{"norm": n, "seed": i, "dataset": "digits", "model": "mlp", "steps": steps}
            for i, n in enumerate(norms)]


# ---------------------------------------------------------------- basics

def test_default_path_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_STORE", str(tmp_path / "a" / "b.sqlite"))
    assert default_store_path() == tmp_path / "a" / "b.sqlite"
    Store().close()  # parent folders are created
    assert (tmp_path / "a" / "b.sqlite").is_file()
    monkeypatch.delenv("NORMLAB_STORE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_path() == tmp_path / ".normlab" / "normlab.sqlite"


def test_pragmas(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_a_writer_without_autocheckpoint_leaves_the_log_to_checkpoint(tmp_path):
    """The engine's workers: their commits stay in the write-ahead log (no fsync on the
    training's path) until the engine's checkpoint copies them into the file."""
    path = tmp_path / "store.sqlite"
    worker, engine = Store(path, autocheckpoint=False), Store(path)
    assert worker._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert engine._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0
    _, (run,) = worker.create_comparison(configs("batch"))
    keys = [("l", "s", f"m{i}") for i in range(300)]
    for i in range(12):  # ~8 MB of log: past SQLite's 1,000-page autocheckpoint
        worker.append(run, RecordBatch(np.arange(i * 300, (i + 1) * 300), keys,
                                       np.random.default_rng(i).normal(size=(300, 300))))
    size = path.stat().st_size
    assert (tmp_path / "store.sqlite-wal").stat().st_size > 4 * 2**20
    engine.checkpoint()
    assert path.stat().st_size > size + 4 * 2**20  # now in the file itself
    assert len(Store(path).metrics(run)) == 12 * 300 * 300
    worker.close(), engine.close()


def test_statuses():
    assert set(FINISHED) == {"done", "diverged", "failed", "cancelled", "interrupted"}
    assert set(FINISHED) < set(STATUSES) and len(STATUSES) == 8


def test_ids_are_short_and_unique(store):
    cid, rids = store.create_comparison(configs(*["batch"] * 50))
    assert re.fullmatch(r"c[0-9a-f]{8}", cid)
    assert all(re.fullmatch(r"r[0-9a-f]{8}", r) for r in rids)
    assert len(set(rids)) == 50
    assert store.resolve(cid) == ("comparison", cid) and store.resolve(rids[0]) == ("run", rids[0])


def test_not_found_messages(store):
    with pytest.raises(NotFound) as e:
        store.request("x", "cancel")
    assert isinstance(e.value, KeyError)
    assert str(e.value) == "no run or comparison with id 'x'"
    for call in (lambda: store.resolve("x"), lambda: store.delete("x"),
                 lambda: store.tag("x", ["a"])):
        with pytest.raises(NotFound, match="no run or comparison with id 'x'"):
            call()
    for call in (lambda: store.run("x"), lambda: store.progress("x", 1),
                 lambda: store.metrics("x"), lambda: store.control("x"),
                 lambda: store.append("x", make_batch(np.random.default_rng(0), 0, 3))):
        with pytest.raises(NotFound, match="no run with id 'x'"):
            call()
    with pytest.raises(NotFound, match="no comparison with id 'x'"):
        store.comparison("x")


def test_lifecycle(store):
    cid, (r0, r1) = store.create_comparison(configs("batch", "layer"), name="bn vs ln",
                                            tags=["lecture 3"])
    assert store.runs(comparison=cid)["status"].tolist() == ["queued", "queued"]
    run_id, cfg = store.claim_run(4242)
    assert (run_id, cfg) == (r0, configs("batch", "layer")[0])
    rec = store.run(r0)
    assert rec["status"] == "running" and rec["worker_pid"] == 4242
    assert rec["started_at"] is not None and rec["heartbeat_at"] is not None
    assert store.append(r0, make_batch(np.random.default_rng(0), 0, 10)) > 0
    store.progress(r0, 9, 123.0)
    rec = store.run(r0)
    assert (rec["step"], rec["steps_per_sec"]) == (9, 123.0)
    store.finish(r0, "done", step=10)
    rec = store.run(r0)
    assert (rec["status"], rec["step"], rec["error"]) == ("done", 10, None)
    assert rec["finished_at"] >= rec["started_at"]
    assert store.claim_run(4243)[0] == r1
    store.finish(r1, "diverged", error="diverged at step 3")
    assert store.run(r1)["error"] == "diverged at step 3"
    assert store.claim_run(4244) is None
    with pytest.raises(ValueError, match="not a final status"):
        store.finish(r1, "running")
    comp = store.comparison(cid)
    assert comp["name"] == "bn vs ln" and comp["tags"] == ["lecture 3"]
    assert comp["runs"] == [r0, r1] and comp["counts"]["done"] == 1


def test_runs_and_comparisons_frames(store):
    c1, r1 = store.create_comparison(configs("batch", "layer"))
    c2, r2 = store.create_comparison(configs("none"), grid={"norm": ["none"]},
                                     base={"norm": "none", "lr": 0.1})
    store.claim_run(1)
    runs = store.runs()
    assert runs["id"].tolist() == r1 + r2
    assert runs.loc[0, "config"] == configs("batch", "layer")[0]
    assert runs["norm"].tolist() == ["batch", "layer", "none"]
    assert runs["seed"].tolist() == [0, 1, 0] and runs["total_steps"].tolist() == [100] * 3
    assert store.runs(status="queued")["id"].tolist() == r1[1:] + r2
    assert store.runs(comparison=c2, ids=r2)["id"].tolist() == r2
    comps = store.comparisons()
    assert comps["id"].tolist() == [c2, c1]  # newest first
    assert comps.set_index("id").loc[c1, ["n_runs", "running", "queued"]].tolist() == [2, 1, 1]
    assert comps.set_index("id").loc[c2, "grid"] == {"norm": ["none"]}
    assert store.comparison(c2)["base"] == {"norm": "none", "lr": 0.1}
    with pytest.raises(ValueError, match="unknown status 'runing'"):
        store.runs(status="runing")


def test_bad_inputs(store):
    with pytest.raises(ValueError, match="at least one config"):
        store.create_comparison([])
    with pytest.raises(TypeError, match="config 0 is a list"):
        store.create_comparison([[1, 2]])
    _, (rid,) = store.create_comparison(configs("batch"))
    bad = RecordBatch(np.arange(3), KEYS[:2], np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"shape \(3, 3\); expected .* \(3, 2\)"):
        store.append(rid, bad)
    with pytest.raises(ValueError, match="steps must be in"):
        store.append(rid, RecordBatch(np.array([-1]), KEYS[:1], np.zeros((1, 1))))
    with pytest.raises(ValueError, match="every must be"):
        store.metrics(rid, every=0)
    with pytest.raises(ValueError, match="':memory:'"):
        Store(":memory:")


def test_not_a_store_file(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a NormLab store"):
        Store(path)


# ---------------------------------------------------------------- claiming

def test_claim_fairness_fewest_running_then_oldest_then_position(store):
    a, (a0, a1, a2) = store.create_comparison(configs("batch", "layer", "none"))
    b, (b0, b1) = store.create_comparison(configs("group", "rms"))
    order = [store.claim_run(1)[0] for _ in range(5)]
    assert order == [a0, b0, a1, b1, a2]
    assert store.claim_run(1) is None


def test_claim_fairness_counts_only_active_runs(store):
    a, (a0, a1) = store.create_comparison(configs("batch", "layer"))
    b, (b0, b1) = store.create_comparison(configs("group", "rms"))
    assert store.claim_run(1)[0] == a0
    store.finish(a0, "done")  # a has no active run again: a is older, so a goes first
    assert store.claim_run(1)[0] == a1
    c, (c0,) = store.create_comparison(configs("none"))
    store.set_status(a1, "paused")  # a paused run still holds a worker
    assert [store.claim_run(1)[0] for _ in range(2)] == [b0, c0]


def test_claim_skips_held_runs(store):
    a, (a0, a1) = store.create_comparison(configs("batch", "layer"))
    b, (b0,) = store.create_comparison(configs("group"))
    assert store.request(a, "pause") == [a0, a1]
    assert store.claim_run(1)[0] == b0
    assert store.claim_run(1) is None
    assert store.request(a1, "resume") == [a1]
    assert store.claim_run(1)[0] == a1


def test_claim_is_atomic_across_threads(store):
    _, rids = store.create_comparison(configs(*["batch"] * 60))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(pid):
        while (got := store.claim_run(pid)) is not None:
            with lock:
                claimed.append(got[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(rids)


CLAIM_SCRIPT = """
import os, sys, time
from normlab.runs.store import Store
store = Store(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # start together
    time.sleep(0.001)
while (got := store.claim_run(os.getpid())) is not None:
    print(got[0], flush=True)
"""


def test_claim_is_atomic_across_processes(store, tmp_path):
    _, rids = store.create_comparison(configs(*["batch"] * 300))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_SCRIPT, str(store.path), str(go)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    assert all(p.stdout.readline() == "ready\n" for p in procs)
    go.touch()
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(sum(outs, [])) == sorted(rids)
    pids = set(store.runs()["worker_pid"])
    assert pids <= {p.pid for p in procs}


# ---------------------------------------------------------------- metrics

@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A store with three runs of irregular batches, and the pandas reference rows."""
    rng = np.random.default_rng(7)
    s = Store(tmp_path_factory.mktemp("filled") / "store.sqlite")
    cid, rids = s.create_comparison(configs("batch", "layer", "none"))
    frames = []
    for i, rid in enumerate(rids):
        keys = KEYS if i != 2 else KEYS[:3]
        lo = 0
        for size in (7, 13, 1, 20, 9, 30)[: 6 - i]:
            batch = make_batch(rng, lo, lo + size, keys)
            s.append(rid, batch)
            frames.append(batch.to_frame(rid))
            lo += size
    yield s, cid, rids, pd.concat(frames, ignore_index=True)
    s.close()


def reference(ref, runs=None, metrics=None, layers=None, sites=None, steps=None, every=None):
    keep = np.ones(len(ref), bool)
    for col, allowed in (("run", runs), ("metric", metrics), ("layer", layers),
                         ("site", sites)):
        if allowed is not None:
            keep &= ref[col].isin([allowed] if isinstance(allowed, str) else allowed)
    if steps is not None:
        keep &= ref["step"].between(*steps)
    if every is not None:
        keep &= ref["step"] % every == 0
    return tidy(ref[keep])


def test_metrics_all_rows_and_dtypes(filled):
    s, cid, rids, ref = filled
    got = s.metrics(comparison=cid)
    assert list(got.columns) == COLUMNS
    assert [str(got[c].dtype) for c in COLUMNS] == ["category", "int64", "category",
                                                    "category", "category", "float64"]
    assert list(got["run"].cat.categories) == rids  # runs in comparison order
    pd.testing.assert_frame_equal(tidy(got), reference(ref))
    pd.testing.assert_frame_equal(tidy(s.metrics()), reference(ref))


def test_nan_entries_are_not_stored(filled):
    s, cid, rids, ref = filled
    conn = s._conn()
    stored = conn.execute("SELECT sum(n) FROM chunks").fetchone()[0]
    assert stored == len(ref)  # to_frame drops NaN: the reference has only measured values
    assert conn.execute("SELECT count(*) FROM chunks WHERE metric = 'weight_norm'"
                        ).fetchone()[0] == 0
    assert not s.metrics()["value"].isna().any()


@pytest.mark.parametrize("kw", [
    {"metrics": "loss"},
    {"metrics": ["loss", "grad_norm"], "sites": ["train", "param"]},
    {"layers": "hidden1"},
    {"sites": "val"},
    {"steps": (10, 29)},
    {"steps": (13, 13)},
    {"every": 4},
    {"every": 10, "metrics": "loss", "steps": (5, 60)},
    {"metrics": "nope"},
])
def test_metrics_filters_match_pandas(filled, kw):
    s, cid, rids, ref = filled
    pd.testing.assert_frame_equal(tidy(s.metrics(comparison=cid, **kw)), reference(ref, **kw))
    pd.testing.assert_frame_equal(tidy(s.metrics(rids[1], **kw)),
                                  reference(ref, runs=rids[1], **kw))


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(-5, 90), width=st.integers(0, 90), every=st.none() | st.integers(1, 12),
       pick=st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=3, unique=True),
       metrics=st.none() | st.lists(st.sampled_from(["loss", "acc", "mean", "grad_norm"]),
                                    min_size=1, unique=True))
def test_metrics_filters_property(filled, lo, width, every, pick, metrics):
    s, cid, rids, ref = filled
    runs = [rids[i] for i in pick]
    kw = dict(metrics=metrics, steps=(lo, lo + width), every=every)
    got = s.metrics(runs, **kw)
    pd.testing.assert_frame_equal(tidy(got), reference(ref, runs=runs, **kw))
    assert [r for r in runs if r in set(got["run"])] == list(got["run"].cat.categories)


def test_metrics_since_per_run_steps(filled):
    s, cid, rids, ref = filled
    got = s.metrics(comparison=cid, since={rids[0]: 40, rids[1]: 10})
    floor = ref["run"].map({rids[0]: 40, rids[1]: 10}).fillna(-1)
    pd.testing.assert_frame_equal(tidy(got), tidy(ref[ref["step"] > floor]))


def test_metrics_since_rowid_returns_each_row_once(store):
    rng = np.random.default_rng(3)
    _, (r0, r1, r2) = store.create_comparison(configs("batch", "layer", "none"))
    frame, mark = store.metrics_since([r0, r1], 0)
    assert frame.empty and list(frame.columns) == COLUMNS and mark == 0
    seen, expected = [], []
    for lo in range(0, 60, 12):
        for rid in (r2, r0, r1):  # a watched run writes last: a stale watermark would show
            batch = make_batch(rng, lo, lo + 12)
            store.append(rid, batch)
            if rid != r2:
                expected.append(batch.to_frame(rid))
        new, new_mark = store.metrics_since([r0, r1], mark)
        assert new_mark > mark
        seen.append(new)
        mark = new_mark
    again, same = store.metrics_since([r0, r1], mark)
    assert again.empty and same == mark
    pd.testing.assert_frame_equal(tidy(pd.concat(seen)), tidy(pd.concat(expected)))
    loss, _ = store.metrics_since(r0, 0, metrics="loss", sites="train", every=2)
    assert set(loss["metric"]) == {"loss"} and (loss["step"] % 2 == 0).all()
    assert len(loss) == 30


def test_concurrent_appends_from_threads(store):
    _, rids = store.create_comparison(configs(*["batch"] * 4))

    def write(rid, seed):
        rng = np.random.default_rng(seed)
        for lo in range(0, 200, 10):
            store.append(rid, make_batch(rng, lo, lo + 10))

    threads = [threading.Thread(target=write, args=(r, i)) for i, r in enumerate(rids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = store.metrics(rids).groupby("run", observed=True).size()
    one_run = make_batch(np.random.default_rng(0), 0, 200).to_frame("x")
    assert counts.tolist() == [len(one_run)] * 4


# ---------------------------------------------------------------- requests

def test_request_cancel_pause_resume(store):
    cid, (r0, r1, r2) = store.create_comparison(configs("batch", "layer", "none"))
    assert store.claim_run(11)[0] == r0
    assert store.request(r1, "cancel") == [r1]  # queued: cancelled at once
    assert store.run(r1)["status"] == "cancelled" and store.run(r1)["finished_at"]
    assert store.request(r0, "pause") == [r0]
    assert store.run(r0)["status"] == "running" and store.control(r0) == "pause"
    store.set_status(r0, "paused")  # the worker acknowledges
    assert store.request(r0, "pause") == []  # already asked
    assert store.request(r0, "resume") == [r0] and store.control(r0) is None
    store.set_status(r0, "running")
    assert store.request(cid, "cancel") == [r0, r2]  # r1 is already finished
    assert store.control(r0) == "cancel" and store.run(r0)["status"] == "running"
    assert store.run(r2)["status"] == "cancelled"
    assert store.request(r0, "resume") == []  # resume does not undo a cancel
    store.finish(r0, "cancelled", step=5)
    assert store.control(r0) is None and store.run(r0)["status"] == "cancelled"
    assert store.request(cid, "cancel") == []
    with pytest.raises(ValueError, match="unknown action 'stop'"):
        store.request(r0, "stop")
    with pytest.raises(ValueError, match="only a running or paused run"):
        store.set_status(r0, "running")
    with pytest.raises(ValueError, match="set_status takes"):
        store.set_status(r0, "done")


def test_mark_interrupted(store):
    _, (r0, r1, r2) = store.create_comparison(configs("batch", "layer", "none"))
    store.claim_run(101), store.claim_run(102)
    store.progress(r0, 37, 10.0)
    store.set_status(r1, "paused")
    assert store.mark_interrupted(alive=lambda pid: pid == 102) == [r0]
    rec = store.run(r0)
    assert rec["status"] == "interrupted" and rec["step"] == 37
    assert rec["error"] == "worker process 101 died at step 37"
    assert store.run(r1)["status"] == "paused" and store.run(r2)["status"] == "queued"
    assert store.mark_interrupted(alive=lambda pid: False) == [r1]
    store.claim_run(os.getpid())  # we are alive: the default check keeps the run
    assert store.mark_interrupted() == []


# ---------------------------------------------------------------- editing

def test_delete_cascades(store):
    rng = np.random.default_rng(0)
    c1, (a, b) = store.create_comparison(configs("batch", "layer"))
    c2, (c,) = store.create_comparison(configs("none"))
    for rid in (a, b, c):
        store.append(rid, make_batch(rng, 0, 10))
    chunks = lambda rid: store._conn().execute(  # noqa: E731
        "SELECT count(*) FROM chunks WHERE run_id = ?", (rid,)).fetchone()[0]
    assert chunks(a) > 0
    assert store.delete(a) == [a]
    assert chunks(a) == 0 and chunks(b) > 0
    with pytest.raises(NotFound):
        store.run(a)
    with pytest.raises(NotFound):  # the worker of a deleted run learns it
        store.append(a, make_batch(rng, 10, 20))
    assert store.delete(c1) == [b]
    assert chunks(b) == 0 and chunks(c) > 0
    assert store.runs()["id"].tolist() == [c]
    assert store.comparisons()["id"].tolist() == [c2]


def test_tag_annotate_rename(store):
    cid, (rid,) = store.create_comparison(configs("batch"))
    store.tag(rid, [" week 2", "bn", "bn", ""])
    store.annotate(rid, "the saturated one")
    store.rename(rid, "BN, lr 0.1")
    rec = store.run(rid)
    assert (rec["tags"], rec["notes"], rec["name"]) == (["week 2", "bn"], "the saturated one",
                                                        "BN, lr 0.1")
    store.tag(cid, ["lecture"])
    store.annotate(cid, "shown in class")
    store.rename(cid, "BN or not")
    comp = store.comparison(cid)
    assert (comp["tags"], comp["notes"], comp["name"]) == (["lecture"], "shown in class",
                                                           "BN or not")
    store.rename(rid, None)
    assert store.run(rid)["name"] is None
    with pytest.raises(ValueError, match="non-empty name"):
        store.rename(cid, "")
    with pytest.raises(TypeError, match=r"write \['bn'\]"):
        store.tag(rid, "bn")


# ---------------------------------------------------------------- export / import

@pytest.fixture
def exported(store):
    """A comparison with metadata and awkward values, ready to export."""
    rng = np.random.default_rng(5)
    cid, rids = store.create_comparison(configs("batch", "layer", "none"), name="bn, ln & none",
                                        grid={"norm": ["batch", "layer", "none"]},
                                        base={"lr": 0.1}, tags=["lecture"])
    for rid in rids[:2]:
        store.claim_run(1)
        for lo in range(0, 300, 100):
            store.append(rid, make_batch(rng, lo, lo + 100))
        big = RecordBatch(np.array([300, 301]), [("model", "train", "loss")],
                          np.array([[np.inf], [1e-310]]))
        store.append(rid, big)
        store.progress(rid, 301, 55.5)
    store.finish(rids[0], "done", step=301)
    store.finish(rids[1], "diverged", step=301, error="diverged at step 301")
    store.annotate(rids[0], 'notes with "quotes", commas\nand a newline')
    store.tag(rids[0], ["keep"])
    return cid, rids


def same_runs(a: Store, b: Store, ids) -> None:
    cols = ["id", "comparison_id", "position", "name", "status", "step", "total_steps", "norm",
            "seed", "error", "created_at", "finished_at", "tags", "notes", "config"]
    pd.testing.assert_frame_equal(a.runs(ids=ids)[cols], b.runs(ids=ids)[cols])


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv"])
def test_export_import_roundtrip(store, exported, tmp_path, fmt):
    cid, rids = exported
    path = exchange.export(store, cid, tmp_path / f"out.{fmt}")
    with Store(tmp_path / "fresh.sqlite") as fresh:
        assert exchange.import_file(fresh, path) == rids
        pd.testing.assert_frame_equal(fresh.metrics(comparison=cid),
                                      store.metrics(comparison=cid))
        same_runs(store, fresh, rids)
        a, b = store.comparison(cid), fresh.comparison(cid)
        assert a == b
        with pytest.warns(UserWarning, match="skipped 3 run"):  # twice: nothing added
            assert exchange.import_file(fresh, path) == []
        assert len(fresh.runs()) == 3


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv"])
def test_export_import_single_run(store, exported, tmp_path, fmt):
    cid, rids = exported
    path = exchange.export(store, rids[1], tmp_path / "run.data", format=fmt)
    with Store(tmp_path / "fresh.sqlite") as fresh:
        assert exchange.import_file(fresh, path) == [rids[1]]
        pd.testing.assert_frame_equal(fresh.metrics(rids[1]), store.metrics(rids[1]))
        assert fresh.comparison(cid)["runs"] == [rids[1]]
        with pytest.warns(UserWarning, match=f"skipped 1 run.*{rids[1]}"):
            assert exchange.import_file(fresh, exchange.export(store, cid, tmp_path / "all.json")) == [rids[0], rids[2]]
        assert fresh.comparison(cid)["runs"] == rids  # joined the same comparison


def test_import_gives_new_ids_to_different_runs_with_taken_ids(store, exported, tmp_path):
    cid, rids = exported
    path = exchange.export(store, cid, tmp_path / "out.json")
    doc = json.loads(path.read_text())
    doc["comparisons"][0]["created_at"] += 1  # another comparison that happens to share ids
    for run in doc["runs"]:
        run["created_at"] += 1
    path.write_text(json.dumps(doc))
    new = exchange.import_file(store, path)
    assert len(new) == 3 and not set(new) & set(rids)
    new_cid = store.run(new[0])["comparison_id"]
    assert new_cid != cid and store.comparison(new_cid)["runs"] == new
    pd.testing.assert_frame_equal(
        tidy(store.metrics(new).assign(run=lambda f: f["run"].map(dict(zip(new, rids))))),
        tidy(store.metrics(rids)))


def test_import_of_a_running_run_is_interrupted(store, tmp_path):
    _, (rid,) = store.create_comparison(configs("batch"))
    store.claim_run(1)
    store.progress(rid, 12)
    path = exchange.export(store, rid, tmp_path / "live.parquet")
    with Store(tmp_path / "fresh.sqlite") as fresh:
        exchange.import_file(fresh, path)
        rec = fresh.run(rid)
        assert rec["status"] == "interrupted" and rec["worker_pid"] is None
        assert rec["error"] == "imported while running at step 12"


def _write_bad(tmp_path, case, good_json):
    path = tmp_path / "bad.json"
    doc = json.loads(good_json.read_text())
    if case == "not json":
        path.write_text("{not json")
    elif case == "not normlab":
        path.write_text(json.dumps({"hello": 1}))
    elif case == "newer version":
        path.write_text(json.dumps({**doc, "format_version": 99}))
    elif case == "no config":
        del doc["runs"][0]["config"]
        path.write_text(json.dumps(doc))
    elif case == "bad status":
        doc["runs"][0]["status"] = "exploded"
        path.write_text(json.dumps(doc))
    elif case == "length mismatch":
        doc["runs"][0]["series"][0]["values"].pop()
        path.write_text(json.dumps(doc))
    elif case == "fractional step":
        doc["runs"][0]["series"][0]["steps"][0] = 0.5
        path.write_text(json.dumps(doc))
    elif case == "csv without sidecar":
        path = tmp_path / "bad.csv"
        path.write_text("run,step,layer,site,metric,value\nr1,0,model,train,loss,1.0\n")
    elif case == "csv unknown run":
        path = tmp_path / "bad.csv"
        path.write_text("run,step,layer,site,metric,value\nrzzz,0,model,train,loss,1.0\n")
        header = {k: v for k, v in doc.items()}
        header["runs"] = [{k: v for k, v in r.items() if k != "series"} for r in doc["runs"]]
        csv_sidecar(path).write_text(json.dumps(header))
    elif case == "csv wrong columns":
        path = tmp_path / "bad.csv"
        path.write_text("run,step,value\nrzzz,0,1.0\n")
        csv_sidecar(path).write_text(json.dumps({**doc, "runs": []}))
    elif case == "parquet without metadata":
        path = tmp_path / "bad.parquet"
        pd.DataFrame({"a": [1]}).to_parquet(path)
    elif case == "truncated parquet":
        path = tmp_path / "bad.parquet"
        pd.DataFrame({"a": [1]}).to_parquet(path)
        path.write_bytes(path.read_bytes()[:20])
    return path


@pytest.mark.parametrize("case, message", [
    ("not json", "not valid JSON"),
    ("not normlab", "not a NormLab export"),
    ("newer version", "format_version 99"),
    ("no config", "field 'config': None is not a config object"),
    ("bad status", "field 'status': 'exploded' is not one of"),
    ("length mismatch", "steps but"),
    ("fractional step", "whole numbers"),
    ("csv without sidecar", r"bad.csv.runs.json are missing"),
    ("csv unknown run", "runs the file has no record of: rzzz"),
    ("csv wrong columns", "expected \\['run', 'step'"),
    ("parquet without metadata", "no 'normlab' entry"),
    ("truncated parquet", "not a readable Parquet file"),
])
def test_malformed_import(store, exported, tmp_path, case, message):
    cid, _ = exported
    good = exchange.export(store, cid, tmp_path / "good.json")
    path = _write_bad(tmp_path, case, good)
    with Store(tmp_path / "fresh.sqlite") as fresh:
        with pytest.raises(ValueError, match=message) as e:
            exchange.import_file(fresh, path)
        assert str(path) in str(e.value)
        assert fresh.runs().empty  # nothing written


def test_export_format_errors(store, exported, tmp_path):
    cid, _ = exported
    with pytest.raises(ValueError, match="cannot tell the export format"):
        exchange.export(store, cid, tmp_path / "out.xlsx")
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        exchange.export(store, cid, tmp_path / "out.json", format="xml")


# ---------------------------------------------------------------- migrations

def test_migration_of_a_current_file(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    version = store_mod.SCHEMA_VERSION
    with Store(path) as old:
        cid, (rid,) = old.create_comparison(configs("batch"))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == version
    calls = []

    def v2_add_colour(conn):
        calls.append(1)
        conn.execute("ALTER TABLE runs ADD COLUMN colour TEXT DEFAULT 'blue'")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, v2_add_colour])
    with Store(path) as new:
        assert new._conn().execute("PRAGMA user_version").fetchone()[0] == version + 1
        assert new.run(rid)["colour"] == "blue" and new.run(rid)["config"]["norm"] == "batch"
    with Store(path):
        pass
    assert calls == [1]  # applied once


def test_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    Store(path).close()

    def broken(conn):
        conn.execute("ALTER TABLE runs ADD COLUMN half_done TEXT")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="boom"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert "half_done" not in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]


def test_newer_file_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store(path)


# ---------------------------------------------------------------- crash safety

WRITER_SCRIPT = """
import os, sys
import numpy as np
from normlab.measure.schema import RecordBatch
from normlab.runs.store import Store
store = Store(sys.argv[1])
run_id, _ = store.claim_run(os.getpid())
keys = [("model", "train", m) for m in ("loss", "acc", "grad_norm")] + [
    (f"hidden{i}", "post_act", f"hist_{j:02d}") for i in range(3) for j in range(32)]
i = 0
while True:
    steps = np.arange(i * 50, (i + 1) * 50)
    values = steps[:, None] + np.arange(len(keys))[None, :] / 1000.0
    store.append(run_id, RecordBatch(steps, keys, values))
    store.progress(run_id, int(steps[-1]), 100.0)
    print(i, flush=True)
    i += 1
"""


def test_kill_9_of_a_writer_loses_no_committed_batch(store):
    _, (rid,) = store.create_comparison(configs("batch"))
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(store.path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    last = -1
    deadline = time.monotonic() + 30
    try:
        while last < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            last = int(line)
        time.sleep(0.005)  # land inside a later append, not between two
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last >= 40, "the writer was too slow"
    with Store(store.path) as after:
        conn = after._conn()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        frame = after.metrics(rid)
        n_keys = 3 + 3 * 32
        assert len(frame) % (50 * n_keys) == 0  # whole batches only
        batches = len(frame) // (50 * n_keys)
        assert batches >= last + 1  # every batch reported as committed is there
        key_index = {k: j for j, k in enumerate(
            [("model", "train", m) for m in ("loss", "acc", "grad_norm")]
            + [(f"hidden{i}", "post_act", f"hist_{j:02d}") for i in range(3) for j in range(32)])}
        j = np.array([key_index[k] for k in zip(frame["layer"], frame["site"], frame["metric"])])
        np.testing.assert_array_equal(frame["value"].to_numpy(), frame["step"] + j / 1000.0)
        assert sorted(set(frame["step"])) == list(range(batches * 50))
        rec = after.run(rid)
        assert rec["status"] == "running" and rec["worker_pid"] == proc.pid
        assert rec["step"] >= last * 50 + 49
        assert after.mark_interrupted() == [rid]
        rec = after.run(rid)
        assert rec["status"] == "interrupted"
        assert rec["error"] == f"worker process {proc.pid} died at step {rec['step']}"


def test_unfinished_counts_queued_running_paused(tmp_path):
    from normlab.training.config import RunConfig
    from normlab.runs.store import Store

    store = Store(tmp_path / "u.sqlite")
    assert store.unfinished() == 0
    cid, (a, b, c) = store.create_comparison([RunConfig().to_dict()] * 3)
    assert store.unfinished() == 3
    rid, _ = store.claim_run(1)
    store.finish(rid, "done", 10)
    assert store.unfinished() == 2
    store.request(cid, "cancel")
    assert store.unfinished() == 0
