"""AppTest smoke tests of the Home and Compare pages, through the router (dashboard.py).

Every test uses its own store file (NORMLAB_STORE) and no engine: ``ensure_engine`` is a
no-op here, so submitted runs stay queued and results come from runs trained in-process
(normlab.training.trainer + Store.append/finish). Checked: no exception element, the key texts, and
the store's content after a launch.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import normlab.runs.comparisons
import normlab.ui.common
from normlab.views import compareview as views, keptslots
from normlab.training.config import RunConfig
from normlab.runs import exchange
from normlab.runs.engine import stop_engine
from normlab.methods.registry import NORM_NAMES, norms_for
from normlab.runs.store import Store
from normlab.training.trainer import train

APP = str(Path(__file__).resolve().parents[1] / "dashboard.py")
TINY = RunConfig(steps=40, width=8, depth=2, eval_interval=10, batch_size=32)
METHODS, SEEDS = ("none", "batch", "layer"), (0, 1)
TIMEOUT = 60


def fill(store: Store, base: RunConfig, methods, seeds, train_first: int | None = None):
    """A comparison whose first ``train_first`` runs (default all) are trained and stored;
    the others stay queued."""
    configs = views.configs_for(base, methods, seeds)
    cid, ids = store.create_comparison([c.to_dict() for c in configs], base=base.to_dict(),
                                       grid={"norm": list(methods), "seed": list(seeds)})
    for rid, cfg in list(zip(ids, configs))[:train_first]:
        batch, outcome = train(cfg)
        store.append(rid, batch)
        store.finish(rid, outcome.status, outcome.step)
    return cid, ids


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    for module in (normlab.ui.common, normlab.runs.comparisons):
        monkeypatch.setattr(module, "ensure_engine", lambda *a, **k: None)
    st.cache_data.clear()
    st.cache_resource.clear()
    s = Store(path)
    yield s
    s.close()
    stop_engine(path)  # in case anything started one anyway
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory):
    """A store file with one finished comparison (3 methods × 2 seeds), made once."""
    path = tmp_path_factory.mktemp("trained") / "runs.sqlite"
    s = Store(path)
    cid, ids = fill(s, TINY, METHODS, SEEDS)
    s.close()
    return path, cid, ids


@pytest.fixture
def trained(trained_file, store):
    """``store`` holding a copy of the trained comparison."""
    path, cid, ids = trained_file
    exchange.import_file(store, _export(path, cid, store.path.parent))
    return store, cid, list(store.comparison(cid)["runs"])


def _export(path: Path, cid: str, folder: Path) -> Path:
    with Store(path) as s:
        return exchange.export(s, cid, folder / "c.json")


def app(**params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at


def compare(**params) -> AppTest:
    """The Compare page opened with ``params`` as its query (a link)."""
    return app(**params).switch_page("pages/1_compare.py").run()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "markdown", "info", "warning", "error", "caption",
                                  "subheader", "header") for e in getattr(at, kind)]
    parts += [p.proto.text for p in at.progress]
    parts += [e.label for e in at.expander]
    return "\n".join(map(str, parts))


def slot_of(spec: dict) -> str | None:
    """The page slot a Compare tab's spec is bound to (normlab.views.keptslots), else None."""
    for param in spec.get("params") or []:
        element = (param.get("bind") or {}).get("element", "") \
            if isinstance(param.get("bind"), dict) else ""
        if "--" in element:
            return element.split("--", 1)[1]
    return None


def shown_slot(at: AppTest) -> str | None:
    """The slot the page shows: the open chart tab in the chosen layout (the others are
    kept in the page, hidden by the browser)."""
    from normlab.views.keptslots import Slot

    state = at.session_state
    group = state["chart_group"] if "chart_group" in state else None
    layout = state["view_layout"] if "view_layout" in state else "overlay"
    group = group or next(iter(views.CHART_GROUPS))
    return Slot(group, layout or "overlay").name if group in views.CHART_GROUPS else None


def specs(at: AppTest, everything: bool = False) -> list[dict]:
    """The specs the page shows (``everything``: also the hidden slots' kept ones)."""
    import json

    out = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    if everything:
        return out
    shown = shown_slot(at)
    return [s for s in out if slot_of(s) in (None, shown)]


def charts(at: AppTest, everything: bool = False) -> list:
    """The charts shown: a tab's charts are one spec (views.linked), counted one by one."""
    return [c for spec in specs(at, everything) for row in spec.get("vconcat", [spec])
            for c in row.get("hconcat", [row])]


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


# ------------------------------------------------------------------------------ Home
def test_home_on_an_empty_store(store):
    at = ok(app().run())
    assert at.title[0].value == "NormLab"
    assert "g \\cdot" in at.latex[0].value
    table = at.table[0].value
    assert list(table["name"]) == list(NORM_NAMES) and "BatchNorm" in set(table.index)
    assert any(b.label == "Compare all methods on digits" for b in at.button)
    assert len(charts(at)) == 2  # the formula's chart (normlab.views.home): two panels
    # the Compare page's element code, imported by a script in the sidebar (in view)
    from normlab.ui.preload import COMPARE_ELEMENTS, modules_of
    (script,) = [e.proto.body for e in at.sidebar.get("html")]
    files = modules_of()
    assert len(files) >= len(COMPARE_ELEMENTS)  # each element's module, in this Streamlit
    assert all(any(f.startswith(e + ".") for f in files) for e in COMPARE_ELEMENTS)
    assert all(f'"{f}"' in script for f in files) and "import('./static/js/' + f)" in script


def test_quick_start_launches_and_opens_compare(store):
    at = app().run()
    next(b for b in at.button if b.label == "Compare all methods on digits").click()
    at = ok(at.run())
    assert at.title[0].value == "Compare normalization methods"
    (cid,) = store.comparisons()["id"]
    runs = store.runs(comparison=cid)
    assert list(runs["norm"]) == norms_for("mlp")
    assert {c["dataset"] for c in runs["config"]} == {"digits"}
    assert at.query_params["comparison"] == cid
    assert "0 of 9 runs finished" in texts(at) and "9 queued" in texts(at)
    assert at.number_input(key="cfg_steps").value == views.QUICK_START.steps


# --------------------------------------------------------------------------- Compare
def test_compare_on_an_empty_store(store):
    at = ok(compare())
    assert "Nothing to show yet" in texts(at)
    assert not charts(at)
    assert any(b.label == "Launch 9 runs" and not b.disabled for b in at.button)


def test_compare_shows_a_finished_comparison_in_every_tab_and_layout(trained):
    store, cid, ids = trained
    at = ok(compare(comparison=cid).run())
    assert "6 of 6 runs finished" in texts(at)
    assert len(charts(at)) == 4  # loss & accuracy, train and val
    assert at.number_input(key="cfg_steps").value == TINY.steps  # the stored setup
    assert at.multiselect(key="cfg_methods").value == list(METHODS)
    assert at.text_input(key="cfg_seeds").value == "0, 1"
    assert len(specs(at)) == 1  # ... in one spec, zoomed together
    # every chart tab is in the page in both layouts (kept: a switch shows it at once)
    slots = sorted(slot_of(spec) for spec in specs(at, everything=True))
    assert slots == sorted(s.name for s in keptslots.slots(list(views.CHART_GROUPS)))
    # the options the browser applies do not change a spec (a kept chart is not drawn
    #   anew for them: the bridge carries the server's values)
    before = specs(at)
    at.toggle(key="view_log").set_value(False)
    at.selectbox(key="view_site").set_value("pre_norm")
    assert specs(ok(at.run())) == before
    at.toggle(key="view_log").set_value(True)
    at.selectbox(key="view_site").set_value("post_act")
    ok(at.run())
    for group, n in (("Gradients", 4), ("Activations", 3), ("Explore", 1)):
        at.session_state["chart_group"] = group
        assert len(charts(ok(at.run()))) == n, group
    series = at.multiselect(key=f"explore_{cid}")
    assert series.value == ["update_ratio · param · hidden1"]
    assert "weight_norm · param · hidden2" in series.options
    assert not [o for o in series.options if o.startswith("hist_")]
    series.set_value(["update_ratio · param · hidden1", "var · post_norm · hidden2"])
    assert len(charts(ok(at.run()))) == 2
    at.session_state["chart_group"] = "Activations"
    at.segmented_control(key="view_layout").set_value("side")
    at.toggle(key="view_log").set_value(False)
    at.slider(key="view_smooth").set_value(0.5)
    at.segmented_control(key="view_band").set_value("std")
    at.selectbox(key="view_site").set_value("pre_norm")
    at = ok(at.run())
    assert len(charts(at)) == 3
    assert at.query_params["layout"] == "side" and at.query_params["smooth"] == "0.5"
    at.session_state["chart_group"] = "Loss & accuracy"
    assert len(charts(ok(at.run()))) == 4


def test_compare_live_comparison_and_its_controls(store):
    cid, ids = fill(store, TINY, ("none", "batch"), (0,), train_first=1)
    at = ok(compare(comparison=cid).run())
    assert "1 of 2 runs finished" in texts(at) and "1 queued" in texts(at)
    assert charts(at)  # the finished run's curves already show
    next(b for b in at.button if b.label == "Pause all").click()
    ok(at.run())
    assert store.run(ids[1])["control"] == "pause"
    next(b for b in at.button if b.label == "Cancel all").click()
    ok(at.run())
    assert store.run(ids[1])["status"] == "cancelled"
    assert store.run(ids[0])["status"] == "done"  # finished runs are left alone


def test_compare_waits_for_first_measurements(store):
    cid, _ = fill(store, TINY, ("batch",), (0,), train_first=0)
    at = ok(compare(comparison=cid).run())
    assert "Waiting for the first measurements" in texts(at)
    assert "worker is free" in texts(at)  # why a queued run waits


def test_form_explains_bad_settings_and_blocks_launch(store):
    at = ok(compare())
    at.number_input(key="cfg_batch_size").set_value(1)
    at.multiselect(key="cfg_methods").set_value(["batch", "instance"])
    at = ok(at.run())
    errors = "\n".join(e.value for e in at.error)
    assert "**Batch size**" in errors and "at least 2 examples" in errors
    assert "**Methods**" in errors and "'instance' needs a CNN" in errors
    launch = next(b for b in at.button if b.label.startswith("Launch"))
    assert launch.disabled
    at.text_input(key="cfg_seeds").set_value("x")
    at.selectbox(key="cfg_model").set_value("cnn")
    at.selectbox(key="cfg_dataset").set_value("moons")
    at = ok(at.run())
    errors = "\n".join(e.value for e in at.error)
    assert "**Seeds**" in errors and "**Model**" in errors and "moons" in errors
    assert "**Seeds**: 'x'" in errors  # the field's name once, not "Seeds: seeds 'x'"
    assert store.comparisons().empty


def test_switching_to_cnn_offers_all_cnn_methods(store):
    at = ok(compare())
    at.selectbox(key="cfg_model").set_value("cnn")
    at = ok(at.run())
    assert at.multiselect(key="cfg_methods").value == norms_for("cnn")


def test_submitting_the_form_stores_the_runs(store):
    at = ok(compare())
    at.number_input(key="cfg_steps").set_value(30)
    at.number_input(key="cfg_width").set_value(16)
    at.multiselect(key="cfg_methods").set_value(["batch", "layer"])
    at.text_input(key="cfg_seeds").set_value("0, 4")
    at = ok(at.run())
    next(b for b in at.button if b.label == "Launch 4 runs").click()
    at = ok(at.run())
    (cid,) = store.comparisons()["id"]
    runs = store.runs(comparison=cid)
    assert list(zip(runs["norm"], runs["seed"])) == [("batch", 0), ("batch", 4),
                                                     ("layer", 0), ("layer", 4)]
    assert {(c["steps"], c["width"]) for c in runs["config"]} == {(30, 16)}
    assert at.query_params["comparison"] == cid
    # the form shows the launched comparison's setup, so the link needs only its id
    assert "methods" not in at.query_params and "steps" not in at.query_params
    assert "0 of 4 runs finished" in texts(at)


def test_a_link_with_garbage_gets_friendly_messages(store):
    at = ok(compare(comparison="cdeadbeef", lr="abc", depth="999", methods="batch,nope").run())
    text = texts(at)
    assert "no comparison 'cdeadbeef'" in text
    assert "lr 'abc' is not a number" in text and "depth '999' is outside" in text
    assert "'nope' ignored" in text
    assert "Nothing to show yet" in text
    assert at.number_input(key="cfg_lr").value == RunConfig().lr
    assert at.multiselect(key="cfg_methods").value == ["batch"]
    next(b for b in at.button if b.label == "Dismiss").click()
    assert "could not be used" not in texts(ok(at.run()))


def test_a_link_reproduces_the_setup(store):
    at = ok(compare(dataset="mnist1d", model="cnn", lr="0.02", steps="123", seeds="3,4",
                methods="instance,batch", layout="side").run())
    assert at.selectbox(key="cfg_dataset").value == "mnist1d"
    assert at.number_input(key="cfg_lr").value == 0.02
    assert at.number_input(key="cfg_steps").value == 123
    assert at.multiselect(key="cfg_methods").value == ["instance", "batch"]
    assert at.text_input(key="cfg_seeds").value == "3, 4"
    assert not at.error  # a CNN on mnist1d with instance norm is fine
    assert at.query_params["lr"] == "0.02" and at.query_params["layout"] == "side"


def test_presenter_mode_hides_the_form(trained):
    store, cid, _ = trained
    at = ok(compare(comparison=cid, present="1").run())
    assert not at.sidebar.header and "Presenter mode" in texts(at)
    assert len(charts(at)) == 4
    at.toggle(key="view_present").set_value(False)
    at = ok(at.run())
    assert at.sidebar.header[0].value == "Setup"


def test_runs_link_shows_those_runs(trained):
    store, cid, ids = trained
    at = ok(compare(runs=f"{ids[0]},{ids[3]},rmissing").run())
    assert "no run 'rmissing'" in texts(at)
    assert "2 of 2 runs finished" in texts(at)
    assert charts(at)
    picker = at.selectbox(key="_pick")
    assert "2 runs opened from the Runs page" in picker.format_func(picker.value)
    picker.set_value(cid)
    assert "6 of 6 runs finished" in texts(ok(at.run()))


def test_a_comparison_deleted_while_shown(trained):
    store, cid, _ = trained
    at = ok(compare(comparison=cid).run())
    store.delete(cid)
    at = ok(at.run())
    assert "Nothing to show yet" in texts(at)


def test_failed_runs_are_explained(store):
    cid, ids = store.create_comparison([TINY.replace(dataset="csv:/no/such.csv").to_dict()])
    store.claim_run(1)
    store.finish(ids[0], "failed", 0, "cannot read /no/such.csv")
    at = ok(compare(comparison=cid))
    text = texts(at)
    assert "none · seed 0 failed: cannot read /no/such.csv" not in text  # it is BatchNorm
    assert "batch · seed 0 failed: cannot read /no/such.csv" in text
    assert "Nothing measured for these charts" in text


def test_an_unusable_store_file_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database, just text " * 8)
    monkeypatch.setenv("NORMLAB_STORE", str(bad))
    st.cache_resource.clear()
    try:
        at = ok(app().run())
        assert "The run store cannot be used" in at.error[0].value
        assert "NORMLAB_STORE" in at.error[0].value
    finally:
        st.cache_resource.clear()
