"""Longest-first claiming (normlab.runs.schedule through Store.claim_run): within a
comparison, the run expected to take longest by the throughput measured on earlier runs of
the same method and size; unknown runs by the slowest known throughput; no history: the
submission order."""
from __future__ import annotations

import heapq

import pytest

from normlab.runs.schedule import HISTORY
from normlab.runs.store import Store


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "store.sqlite") as s:
        yield s


def cfg(norm, steps=1000, width=100, **kw):
    return {"norm": norm, "dataset": "digits", "model": "mlp", "depth": 3, "width": width,
            "batch_size": 64, "steps": steps, **kw}


def history(store, config, steps_per_sec, status="done"):
    """A finished earlier run of ``config`` that measured ``steps_per_sec``."""
    _, (rid,) = store.create_comparison([config])
    assert store.claim_run(1)[0] == rid
    store.progress(rid, config["steps"], steps_per_sec)
    store.finish(rid, status, config["steps"])


def claim_all(store):
    order = []
    while (got := store.claim_run(1)) is not None:
        order.append(got[1]["norm"] if "tag" not in got[1] else got[1]["tag"])
    return order


def test_no_history_is_submission_order(store):
    store.create_comparison([cfg(n) for n in ("none", "batch", "whiten", "layer")])
    assert claim_all(store) == ["none", "batch", "whiten", "layer"]


def test_slowest_measured_method_first(store):
    for norm, sps in [("none", 900.0), ("batch", 600.0), ("whiten", 150.0), ("layer", 500.0)]:
        history(store, cfg(norm), sps)
    store.create_comparison([cfg(n) for n in ("none", "batch", "whiten", "layer")])
    assert claim_all(store) == ["whiten", "layer", "batch", "none"]


def test_expected_time_is_steps_over_throughput(store):
    history(store, cfg("batch"), 600.0)
    history(store, cfg("whiten"), 200.0)
    # batch 3,000 steps at 600/s = 5 s; whiten 800 at 200/s = 4 s; whiten 1,200 = 6 s
    store.create_comparison([cfg("whiten", steps=800), cfg("batch", steps=3000),
                             cfg("whiten", steps=1200)])
    assert [c[1]["steps"] for c in iter(lambda: store.claim_run(1), None)] == [1200, 3000, 800]


def test_history_of_another_size_or_unfinished_runs_is_not_used(store):
    history(store, cfg("whiten", width=8), 10.0)  # another width
    history(store, cfg("whiten", model="cnn"), 10.0)  # another model
    history(store, cfg("whiten"), 10.0, status="failed")  # not a measured, finished run
    store.create_comparison([cfg("none"), cfg("whiten")])
    assert claim_all(store) == ["none", "whiten"]


def test_unknown_method_gets_the_slowest_known_throughput(store):
    history(store, cfg("batch"), 1000.0)
    history(store, cfg("layer"), 200.0)
    # whiten unknown: assumed 200/s like the slowest known, so it ties with layer
    # (position breaks the tie) and goes before batch
    store.create_comparison([cfg("batch"), cfg("layer"), cfg("whiten")])
    assert claim_all(store) == ["layer", "whiten", "batch"]


def test_throughput_is_the_median_of_the_last_runs(store):
    history(store, cfg("layer"), 10.0)  # old and slow: beyond the last HISTORY runs
    for _ in range(HISTORY):
        history(store, cfg("layer"), 900.0)
    history(store, cfg("batch"), 500.0)
    store.create_comparison([cfg("layer"), cfg("batch")])
    assert claim_all(store) == ["batch", "layer"]


def test_fairness_between_comparisons_is_kept(store):
    history(store, cfg("whiten"), 100.0)
    history(store, cfg("batch"), 1000.0)
    store.create_comparison([cfg("batch"), cfg("whiten")])
    store.create_comparison([cfg("batch", tag="b-batch"), cfg("whiten", tag="b-whiten")])
    assert claim_all(store) == ["whiten", "b-whiten", "batch", "b-batch"]


def _makespan(store, durations: dict[str, float], workers: int = 2) -> float:
    """Simulate ``workers`` claiming runs that take ``durations[norm]`` seconds each."""
    free = [(0.0, w) for w in range(workers)]
    end = 0.0
    while (got := store.claim_run(1)) is not None:
        t, w = heapq.heappop(free)
        t += durations[got[1]["norm"]]
        end = max(end, t)
        heapq.heappush(free, (t, w))
    return end


def test_longest_first_shortens_a_comparison(tmp_path):
    """8 methods on 2 workers, the slow ones submitted last: in submission order the
    slowest runs alone at the end; longest-first finishes sooner."""
    sps = {"none": 1000.0, "batch": 800.0, "layer": 800.0, "group": 800.0, "rms": 900.0,
           "batch_renorm": 600.0, "weight": 500.0, "whiten": 150.0}
    durations = {n: 1000 / v for n, v in sps.items()}
    spans = {}
    for measured in (False, True):
        with Store(tmp_path / f"{measured}.sqlite") as store:
            if measured:
                for norm, v in sps.items():
                    history(store, cfg(norm), v)
            store.create_comparison([cfg(n) for n in sps])
            spans[measured] = _makespan(store, durations)
    bound = max(sum(durations.values()) / 2, max(durations.values()))  # no schedule beats it
    assert spans[True] <= 4 / 3 * bound  # Graham's bound for longest-first
    assert spans[True] < 0.85 * spans[False]
