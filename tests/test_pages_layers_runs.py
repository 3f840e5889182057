"""AppTest smoke and interaction tests of the Layer dynamics and Runs pages.

Each test points NORMLAB_STORE at a store of its own (empty, or tiny runs trained
in-process by ``test_runtable.build``: no background engine) and clears Streamlit's caches.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from normlab.runs.store import Store
from test_runtable import build

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard.py")
LAYERS, RUNS = "pages/2_layers.py", "pages/3_runs.py"


@pytest.fixture(autouse=True)
def clean_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def empty(tmp_path, monkeypatch):
    path = tmp_path / "empty.sqlite"
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with runs, built once and copied per test (training is the slow part)."""
    path = tmp_path_factory.mktemp("pages") / "store.sqlite"
    store, info = build(path)
    store.close()
    return path, {k: v for k, v in info.items() if k != "batches"}


@pytest.fixture
def filled(template, tmp_path, monkeypatch):
    src, info = template
    path = tmp_path / "store.sqlite"
    with Store(src) as s:  # a consistent copy (WAL folded in)
        s._conn().execute(f"VACUUM INTO '{path}'")
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    return Store(path), info


def run(page: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.switch_page(page).run()


def charts(at: AppTest) -> list[dict]:
    """The charts drawn; the grids over steps are one spec (they zoom together), counted
    one by one."""
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    return [c for s in specs for c in s.get("vconcat", [s])]


def texts(elements) -> str:
    return " | ".join(e.value for e in elements)


# ------------------------------------------------------------------------ Layer dynamics
def test_layers_empty_store(empty):
    at = run(LAYERS)
    assert not at.exception
    assert "No runs yet" in texts(at.info)


def test_layers_comparison_from_url(filled):
    store, info = filled
    at = run(LAYERS, comparison=info["a"])
    assert not at.exception and not at.error
    specs = charts(at)
    assert [s["title"]["text"] if isinstance(s["title"], dict) else s["title"]
            for s in specs] == ["post_norm (activation input): 15/50/85th percentiles",
                                "post_norm histogram over time",
                                "post_norm histogram at step 19"]  # the activation's input
    first = json.loads(at.get("vega_lite_chart")[0].proto.spec)  # the grids over steps:
    zoom = [p for p in first["params"] if p["name"] == "zoom"]  # one zoom in both
    assert len(zoom) == 1 and len(zoom[0]["views"]) == 2 and len(first["vconcat"]) == 2
    buttons = [b.label for b in at.get("download_button")]
    assert len(buttons) == 7 and "Download report" in buttons  # PNG + SVG per chart; the report
    assert at.multiselect(key="layers_runs").value == info["a_ids"]
    assert dict(at.query_params) == {"comparison": [info["a"]]} or \
        at.query_params["comparison"] in (info["a"], [info["a"]])


def test_layers_widgets_site_step_zoom(filled):
    store, info = filled
    at = run(LAYERS, comparison=info["b"], site="post_act")
    assert not at.exception
    assert "post_act (activation output): 15/50/85th percentiles" in json.dumps(
        charts(at)[0]["title"])
    at.slider[0].set_value(5).run()
    assert not at.exception
    assert "post_act histogram at step 5" in json.dumps(charts(at)[-1]["title"])
    at.toggle(key="layers_zoom").set_value(False).run()
    at.toggle(key="layers_log").set_value(True).run()
    assert not at.exception
    at.button_group[0].set_value("post_norm").run()
    assert not at.exception
    assert "post_norm" in json.dumps(charts(at)[0]["title"])
    at.toggle(key="layers_units").set_value(True).run()  # exact percentiles of single units
    assert not at.exception and not at.error
    spec = json.dumps(charts(at)[0])
    assert "unit 0" in spec and "single units" in texts(at.subheader)


def test_layers_unknown_ids_in_url_are_messages(filled):
    store, info = filled
    at = run(LAYERS, runs=f"rnope,{info['a_ids'][0]}")
    assert not at.exception
    assert "rnope" in texts(at.error)
    assert len(charts(at)) == 3  # the known run is still shown
    at = run(LAYERS, comparison="cnope")
    assert not at.exception and "cnope" in texts(at.error)


def test_layers_mixed_activations_and_unfinished_runs(filled):
    store, info = filled
    picked = ",".join([info["a_ids"][0], info["b_ids"][0], *info["c_ids"]])
    at = run(LAYERS, runs=picked, site="post_act")
    assert not at.exception and not at.error
    assert "several" in texts(at.warning)  # sigmoid and relu runs: one histogram range
    assert len(charts(at)) == 3


def test_layers_only_queued_runs(filled):
    store, info = filled
    at = run(LAYERS, runs=info["c_ids"][1])
    assert not at.exception
    assert "No post_norm measurements yet" in texts(at.warning)


def test_layers_picker_change_updates_url(filled):
    store, info = filled
    at = run(LAYERS, comparison=info["a"])
    at.selectbox(key="layers_comparison").set_value(info["b"]).run()
    assert not at.exception
    assert at.multiselect(key="layers_runs").value == info["b_ids"]
    assert at.query_params["comparison"] in (info["b"], [info["b"]])
    at.multiselect(key="layers_runs").set_value(info["b_ids"][:1]).run()
    assert not at.exception
    assert at.query_params["runs"] in (info["b_ids"][0], [info["b_ids"][0]])


# --------------------------------------------------------------------------------- Runs
def test_runs_empty_store(empty):
    at = run(RUNS)
    assert not at.exception
    assert "No runs yet" in texts(at.info)
    assert at.expander and at.expander[0].label == "Import a NormLab export"


def select(at: AppTest, ids: list[str]) -> AppTest:
    at.session_state["runs_selected"] = ids
    at.session_state["_runs_table_gen"] = at.session_state["_runs_table_gen"] + 1 \
        if "_runs_table_gen" in at.session_state else 1
    return at.run()


def test_runs_table_and_filters(filled):
    store, info = filled
    at = run(RUNS)
    assert not at.exception and not at.error
    frame = at.dataframe[0].value
    assert len(frame) == 8 and "Select runs" in texts(at.info)
    method = next(m for m in at.multiselect if m.label == "Method")
    method.set_value(["batch"]).run()
    assert not at.exception
    assert set(at.dataframe[0].value["method"]) == {"batch"}


def test_runs_edit_tags_via_widgets(filled):
    store, info = filled
    rid = info["b_ids"][1]
    at = select(run(RUNS), [rid])
    assert not at.exception
    assert "1 run(s) selected" in texts(at.subheader)
    tags = next(t for t in at.text_input if t.label.startswith("Tags"))
    tags.set_value("bn, demo ,bn")
    next(t for t in at.text_area if t.label == "Notes").set_value("best run")
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception
    assert store.run(rid)["tags"] == ["bn", "demo"] and store.run(rid)["notes"] == "best run"
    assert "Saved the tags and notes" in texts(at.success)


def test_runs_delete_needs_confirmation(filled):
    store, info = filled
    rid = info["a_ids"][0]
    at = select(run(RUNS), [rid])
    delete = next(b for b in at.button if b.label == "Delete")
    delete.click().run()
    assert not at.exception
    assert "Nothing was deleted" in texts(at.error) and rid in set(store.runs()["id"])
    assert rid in texts(at.warning)  # says what would go
    next(c for c in at.checkbox if c.label.startswith("Yes, delete")).check().run()
    next(b for b in at.button if b.label == "Delete").click().run()
    assert not at.exception
    assert rid not in set(store.runs()["id"])
    assert f"Deleted 1 run(s): {rid}" in texts(at.success)
    assert len(at.dataframe[0].value) == 7


def test_runs_targets_and_multi_selection(filled):
    store, info = filled
    picked = [info["a_ids"][0], info["b_ids"][0]]
    at = select(run(RUNS), picked)
    assert not at.exception
    labels = at.selectbox[0].options
    assert labels[0] == "all 2 selected runs" and len(labels) == 5
    assert "An export holds one run" in texts(at.info)
    at.selectbox[0].set_value(labels[-1]).run()  # a whole comparison: export buttons
    assert not at.exception
    assert {b.label for b in at.get("download_button")} >= {"CSV", "PARQUET", "JSON"}
