"""Hostile imports (issue 11, point 3): a corrupted export gives one clean error and writes
nothing, or imports cleanly; either way the store stays readable by ``list``, ``show``, the
Runs table and the Layer dynamics loaders."""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normlab import cli
from normlab.runs import exchange
from normlab.runs.store import Store
from normlab.training.config import RunConfig
from normlab.views import layerview, runtable
from test_runtable import build


@pytest.fixture(scope="module")
def export_doc(tmp_path_factory):
    """A real JSON export (a finished comparison and one with a running + a queued run)."""
    folder = tmp_path_factory.mktemp("hostile")
    store, info = build(folder / "src.sqlite")
    docs = []
    for cid in (info["a"], info["c"]):
        path = exchange.export(store, cid, folder / f"{cid}.json")
        docs.append(json.loads(path.read_text()))
    store.close()
    return docs


BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["abc", "lots", "bogus", "", "NaN", "1e400", "-1", "r!@#", "5"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)
RUN_KEYS = ["id", "comparison_id", "position", "name", "status", "control", "step",
            "total_steps", "steps_per_sec", "norm", "seed", "dataset", "model", "error",
            "worker_pid", "created_at", "started_at", "finished_at", "heartbeat_at", "tags",
            "notes", "config", "series", "extra_field"]
COMP_KEYS = ["id", "name", "created_at", "base", "grid", "notes", "tags", "extra_field"]
CONFIG_KEYS = list(RunConfig.__dataclass_fields__) + ["extra_field"]
SERIES_KEYS = ["layer", "site", "metric", "steps", "values"]


@st.composite
def corruption(draw):
    """(where, key, action, value): one field of the export set, deleted or replaced."""
    where = draw(st.sampled_from(["run", "comparison", "config", "series", "top"]))
    keys = {"run": RUN_KEYS, "comparison": COMP_KEYS, "config": CONFIG_KEYS,
            "series": SERIES_KEYS, "top": ["format", "format_version", "runs",
                                           "comparisons"]}[where]
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["set", "set", "delete"]))
    value = draw(BAD_VALUES)
    return where, key, action, value, draw(st.integers(0, 10))


def _corrupt(doc: dict, where: str, key: str, action: str, value, pick: int) -> dict:
    doc = copy.deepcopy(doc)
    runs = doc["runs"]
    target = {"top": doc, "comparison": doc["comparisons"][0],
              "run": runs[pick % len(runs)], "config": runs[pick % len(runs)]["config"]}.get(where)
    if where == "series":
        series = [s for r in runs for s in r["series"]]
        if not series:
            return doc
        target = series[pick % len(series)]
    if action == "delete":
        target.pop(key, None)
    else:
        target[key] = value
    return doc


def _readable(store: Store) -> None:
    """Everything the CLI and the pages read about every run works."""
    assert cli.main(["list", "--store", str(store.path)]) == 0
    runs = store.runs()
    for rid in runs["id"]:
        assert cli.main(["show", rid, "--store", str(store.path)]) == 0
        RunConfig.from_dict(store.run(rid)["config"])
    store.comparisons()
    table = runtable.run_table(store)
    assert len(table) == len(runs)
    if len(runs):
        layerview.load_rows(store, list(runs["id"]), "post_act", "percentiles")


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), damage=corruption())
def test_corrupted_export_fails_cleanly_or_imports_cleanly(export_doc, which, damage, capsys):
    doc = _corrupt(export_doc[which], *damage)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.json"
        path.write_text(json.dumps(doc))  # NaN and Infinity written as JSON's extensions
        store_path = Path(tmp) / "store.sqlite"
        code = cli.main(["import", str(path), "--store", str(store_path)])
        err = capsys.readouterr().err
        with Store(store_path) as store:
            if code == 0:
                assert len(store.runs()) == len(doc["runs"])
            else:
                assert code == 2
                assert err.count("\n") == 1 and err.startswith("normlab import: cannot import")
                assert "Traceback" not in err
                assert store.runs().empty and store.comparisons().empty  # nothing written
            _readable(store)


@pytest.mark.parametrize("where, key, value, message", [
    ("run", "seed", "abc", None),  # the record's seed is ignored: the config's is shown
    ("config", "seed", "abc", "run 'r\\w+' field 'config': seed: 'abc' is not a valid int"),
    ("config", "steps", "lots", "field 'config': steps: 'lots' is not a valid int"),
    ("run", "tags", 5, "field 'tags': 5 is not a list of text"),
    ("run", "control", "bogus", "field 'control': 'bogus' is not empty"),
    ("comparison", "created_at", float("nan"), "field 'created_at': nan is not a finite"),
    ("run", "step", 2**70, "field 'step': \\d+ is not a whole number"),
    ("run", "position", 2**70, "field 'position': \\d+ is not a whole number"),
    ("config", "norm", [1, 2], "field 'config': norm: unknown norm"),
    ("config", "depth", 10**6, "field 'config': depth: depth 1000000 is more than 64"),
])
def test_issue_repros(export_doc, tmp_path, capsys, where, key, value, message):
    doc = _corrupt(export_doc[1], where, key, "set", value, 0)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    store_path = tmp_path / "store.sqlite"
    code = cli.main(["import", str(path), "--store", str(store_path)])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
    else:
        assert code == 2 and err.count("\n") == 1
        assert pytest.importorskip("re").search(message, err), err
    with Store(store_path) as store:
        _readable(store)


def test_imported_run_shows_the_config_that_runs(export_doc, tmp_path):
    doc = copy.deepcopy(export_doc[1])
    queued = next(r for r in doc["runs"] if r["status"] == "queued")
    queued.update(norm="batch", seed=99, dataset="moons", model="cnn", total_steps=10**6)
    queued["config"]["seed"] = "7"  # a string the config accepts: stored as the int 7
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    with Store(tmp_path / "s.sqlite") as store:
        exchange.import_file(store, path)
        run = store.run(queued["id"])
        cfg = RunConfig.from_dict(run["config"])
        assert (run["norm"], run["seed"], run["dataset"], run["model"], run["total_steps"]) \
            == (cfg.norm, 7, cfg.dataset, cfg.model, cfg.steps)
        assert run["config"]["seed"] == 7


def test_runs_page_upload_shows_one_message(export_doc):
    doc = copy.deepcopy(export_doc[1])
    doc["runs"][0]["tags"] = 5
    with tempfile.TemporaryDirectory() as tmp, Store(os.path.join(tmp, "s.sqlite")) as store:
        with pytest.raises(ValueError, match=r"^cannot import x\.json: run '\w+' field 'tags'"):
            runtable.import_bytes(store, json.dumps(doc).encode(), "x.json")
        assert store.runs().empty
