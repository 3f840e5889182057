"""AppTest smoke tests of the lab pages (Re-scaling invariance, Learning rate and
initialization, Batch size), through the router, on their own store with the engine
no-op'd: presets queue runs, and results come from tiny runs trained in-process."""
from __future__ import annotations

import pytest

from normlab.runs.store import Store
from normlab.training.config import RunConfig
from normlab.training.trainer import train
from normlab.views.labs import invariance, sensitivity
from normlab.views.labs.scaffold import preset_configs
from test_pages import app, charts, ok, store, texts  # noqa: F401 (fixture)


def lab_page(page: str, **params):
    return app(**params).switch_page(page).run()


def fill(s: Store, configs: list[RunConfig], name: str, grid: dict, diverge: int = -1):
    """A comparison of ``configs`` trained in-process (run ``diverge`` marked diverged)."""
    cid, ids = s.create_comparison([c.to_dict() for c in configs], name=name, grid=grid)
    for i, (rid, cfg) in enumerate(zip(ids, configs)):
        batch, outcome = train(cfg)
        s.append(rid, batch)
        s.finish(rid, "diverged" if i == diverge else outcome.status, outcome.step,
                 error="diverged at step 3" if i == diverge else None)
    return cid, ids


TINY = dict(steps=12, width=8, depth=2, eval_interval=6, record_interval=3, batch_size=16)


def test_invariance_page_shows_the_table_and_its_readout(store):
    at = ok(lab_page("pages/7_invariance.py"))
    assert at.title[0].value == "Re-scaling invariance"
    table = at.table[0].value  # st.table: wraps to the column, never scrolls sideways
    assert len(table) == 10 and "⚠" not in table.to_string()
    assert any("18 of 18 published cells reproduced" in s.value for s in at.success)
    assert any("slope −1" in s.value and "slope 0: none" in s.value for s in at.success)
    assert "Nothing launched for this lab yet" in texts(at)


def test_invariance_preset_launches_a_stored_comparison(store):
    at = lab_page("pages/7_invariance.py")
    next(b for b in at.button if b.label.startswith("Run: Weight growth")).click()
    at = ok(at.run())
    (cid,) = store.comparisons()["id"]
    assert at.query_params["comparison"] in (cid, [cid])
    runs = store.runs(comparison=cid)
    assert len(runs) == len(preset_configs(invariance.LAB.presets[0]))
    assert sorted({c["weight_decay"] for c in runs["config"]}) == [0.0, 0.005]
    assert "runs finished" in texts(at)  # the progress summary line


def test_invariance_training_view_reads_the_runs(store):
    configs = [RunConfig(norm=n, weight_decay=wd, **TINY) for wd in (0.0, 0.01)
               for n in ("batch", "none")]
    cid, _ = fill(store, configs, "Re-scaling invariance · test", {"weight_decay": [0, 0.01]})
    at = ok(lab_page("pages/7_invariance.py", comparison=cid))
    assert len(charts(at)) == 3  # the gradient plot and the two training panels
    assert any("hidden2, last tenth" in s.value and "batch wd 0.01" in s.value
               for s in at.success)


def test_lr_lab_on_a_small_sweep_with_a_diverged_run(store):
    configs = [RunConfig(norm=n, lr=lr, **TINY) for n in ("batch", "none")
               for lr in (0.01, 0.1, 1.0)]
    cid, _ = fill(store, configs, "Learning rate and initialization · test",
                  {"norm": ["batch", "none"], "lr": [0.01, 0.1, 1.0]}, diverge=5)
    at = ok(lab_page("pages/8_lr_init.py", comparison=cid))
    assert at.title[0].value == "Learning rate and initialization"
    assert len(charts(at)) == 1
    assert any("lr range reaching ≥ 90%" in s.value for s in at.success)
    assert at.selectbox(key=f"sw_field_{cid}").value == "lr"


def test_lr_lab_preset_and_form(store):
    at = lab_page("pages/8_lr_init.py")
    assert [b.label for b in at.button][:2] == [f"Run: {p.label}"
                                                for p in sensitivity.LR_LAB.presets]
    at.text_input(key="lf_lr_init_lr_lr").input("logspace:0.01:1:3")
    at.text_input(key="lf_lr_init_lr_seed").input("0")
    at = ok(at.run())
    next(b for b in at.button if b.label == "Launch the changed experiment").click()
    at = ok(at.run())
    (cid,) = store.comparisons()["id"]
    runs = store.runs(comparison=cid)
    assert sorted({c["lr"] for c in runs["config"]}) == [0.01, 0.1, 1.0]
    assert len(runs) == 3 * len(sensitivity.LR_METHODS)


def test_lr_lab_form_reports_a_bad_range(store):
    at = lab_page("pages/8_lr_init.py")
    at.text_input(key="lf_lr_init_lr_lr").input("logspace:0:1:3")
    at = ok(at.run())
    assert any("logspace needs LOW and HIGH above 0" in e.value for e in at.error)
    assert next(b for b in at.button if b.label == "Launch the changed experiment").disabled


def test_batch_lab_preset_ties_lr_and_steps(store):
    at = lab_page("pages/9_batch_size.py")
    assert at.title[0].value == "Batch size"
    next(b for b in at.button if b.label.startswith("Run: Batch size")).click()
    at = ok(at.run())
    runs = store.runs(comparison=store.comparisons()["id"][0])
    for c in runs["config"]:
        assert c["batch_size"] * c["steps"] == sensitivity.EXAMPLES
        assert c["lr"] == pytest.approx(0.1 * c["batch_size"] / 32)
        assert c["eval_train_mode"]


def test_batch_lab_view_with_train_mode(store):
    configs = [RunConfig(norm=n, batch_size=b, eval_train_mode=True,
                         **{k: v for k, v in TINY.items() if k != "batch_size"})
               for n in ("batch", "layer") for b in (4, 16)]
    cid, _ = fill(store, configs, "Batch size · test", {"batch_size": [4, 16]})
    at = ok(lab_page("pages/9_batch_size.py", comparison=cid))
    line = next(s.value for s in at.success if s.value.startswith("Validation error"))
    assert "at B=4" in line and "training mode" in line
    assert "validation accuracy, training mode" in at.selectbox(key=f"sw_metric_{cid}").options


def test_a_missing_comparison_link_says_so(store):
    at = ok(lab_page("pages/8_lr_init.py", comparison="cdoesnotexist"))
    assert "There is no comparison 'cdoesnotexist'" in texts(at)


def test_compare_page_offers_the_sweep_view_for_a_grid(store):
    from test_pages import compare

    configs = [RunConfig(norm="batch", lr=lr, seed=s, **TINY) for lr in (0.01, 0.1)
               for s in (0, 1)]
    cid, _ = fill(store, configs, "a plain lr grid", {"lr": [0.01, 0.1], "seed": [0, 1]})
    at = ok(compare(comparison=cid))
    assert at.tabs[0].label == "Sweep"
    assert at.selectbox(key=f"sw_field_{cid}").value == "lr"
    assert any("sweep table" in e.label.lower() for e in at.expander)


def test_compare_page_summarizes_a_big_grid_per_method(store):
    from test_pages import compare

    configs = [RunConfig(norm=n, lr=lr, **TINY) for n in ("batch", "layer", "none")
               for lr in (0.001, 0.01, 0.1, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    cid, ids = store.create_comparison([c.to_dict() for c in configs], name="big",
                                       grid={"norm": ["batch", "layer", "none"]})
    at = ok(compare(comparison=cid))
    assert "Runs — 27: progress per method" in texts(at)
    assert len(at.progress) == 1
    table = next(d.value for d in at.dataframe if "finished" in d.value.columns)
    assert list(table["runs"]) == [9, 9, 9] and list(table["queued"]) == [9, 9, 9]


def test_compare_page_switches_between_a_sweep_and_a_plain_comparison(store):
    from test_pages import compare

    plain = [RunConfig(norm=n, **TINY) for n in ("batch", "none")]
    pid, _ = fill(store, plain, "plain", {"norm": ["batch", "none"]})
    grid = [RunConfig(norm="batch", lr=lr, **TINY) for lr in (0.01, 0.1)]
    sid, _ = fill(store, grid, "lr grid", {"lr": [0.01, 0.1]})
    at = ok(compare(comparison=sid))
    assert at.tabs[0].label == "Sweep"
    at.selectbox(key="_pick").set_value(pid)
    at = ok(at.run())
    assert "Sweep" not in [t.label for t in at.tabs]
    at.selectbox(key="_pick").set_value(sid)
    at = ok(at.run())
    assert at.tabs[0].label == "Sweep"


def test_a_lab_page_finds_its_comparisons_by_origin_not_by_name(store):
    """A comparison launched by a lab's preset belongs to that lab whatever it is named
    (its ``origin``); a plain comparison newer than it is not the lab's."""
    configs = [RunConfig(norm=n, **TINY) for n in ("batch", "none")]
    cid, ids = store.create_comparison([c.to_dict() for c in configs], name="renamed by hand",
                                       grid={"norm": ["batch", "none"]},
                                       origin={"lab": "invariance", "preset": "weight_growth"})
    fill(store, configs, "a comparison of my own", {"norm": ["batch", "none"]})
    at = ok(lab_page("pages/7_invariance.py"))
    assert at.selectbox[0].options == [f"renamed by hand — {cid}"]
