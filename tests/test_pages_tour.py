"""The guided tour: its registry, the runs it finds and queues, the time left, and the page
(AppTest, through the router, on its own store with the engine no-op'd): the first step
queues every preset, Next walks every step to the end, Back, a ?step= link, a step whose
runs are queued shows progress, and stored tiny runs give the step's chart and readout."""
from __future__ import annotations

import os

from normlab.training.config import RunConfig
from normlab.views import tour
from normlab.views.labs import invariance, sensitivity
from normlab.views.labs.scaffold import origin, preset_configs
from test_pages import app, charts, ok, store, texts  # noqa: F401 (fixture)
from test_pages_labs import TINY, fill


def tour_page(**params):
    return app(**params).switch_page("pages/10_tour.py").run()


def preset_name(step_key: str, n: int) -> str:
    step = tour.STEPS[tour.index_of(step_key)]
    return f"{step.lab.title} · {step.needs.label} · {n} runs"


# ------------------------------------------------------------------ the registry
def test_registry_is_in_the_arguments_order_and_every_preset_exists():
    keys = [s.key for s in tour.STEPS]
    assert keys == ["whitening", "ics", "formula", "framework", "invariance", "lr", "init",
                    "batch"]
    for step in tour.STEPS:
        sentences = step.claim.replace("et al.", "et al").split(". ")
        assert len(sentences) == 2 and step.claim.endswith("."), step.key  # two sentences
        assert step.needs is None or step.needs in step.lab.presets


def test_stored_comparison_is_the_newest_of_the_preset(store):
    step = tour.STEPS[tour.index_of("lr")]
    assert tour.stored_comparison(store, step) is None
    cfg = RunConfig(**TINY).to_dict()
    old, _ = store.create_comparison([cfg], name=preset_name("lr", 1))
    store.create_comparison([cfg], name="Learning rate and initialization · other · 1 runs")
    assert tour.stored_comparison(store, step) == old
    new, _ = store.create_comparison([cfg, cfg], name=preset_name("lr", 2))
    assert tour.stored_comparison(store, step) == new
    # launched by the preset (its origin): found whatever its name
    mine, _ = store.create_comparison([cfg], name="renamed", origin=origin(step.lab, step.needs))
    assert tour.stored_comparison(store, step) == mine
    # another preset's launch is not this one's, even under this preset's name
    other = next(p for p in step.lab.presets if p is not step.needs)
    store.create_comparison([cfg], name=preset_name("lr", 3), origin=origin(step.lab, other))
    assert tour.stored_comparison(store, step) == mine
    assert other is tour.STEPS[tour.index_of("init")].needs  # so that step has its runs
    assert [s.key for s in tour.missing(store)] == ["whitening", "ics", "formula",
                                                    "invariance", "batch"]


def test_time_left_shares_the_speed_between_unfinished_comparisons(store):
    cfg = RunConfig(**{**TINY, "steps": 100}).to_dict()
    cid, (a, b) = store.create_comparison([cfg, cfg], name="x")
    other, (c,) = store.create_comparison([cfg], name="y")
    assert tour.time_left(store, cid) == ("0 of 2 runs finished · waiting for a worker "
                                          "(200 steps to train)")
    for rid, step, speed in ((a, 50, 10.0), (c, 20, 30.0)):
        assert store.claim_run(os.getpid()) is not None
        store.progress(rid, step, speed)
    runs = store.runs()
    assert set(runs.loc[runs["status"] == "running", "id"]) == {a, c}
    # this comparison: 50 + 100 steps left; speed 40 steps/s shared by 2 comparisons
    assert tour.time_left(store, cid) == f"0 of 2 runs finished · about {round(150 / 20)} s left"
    store.request(b, "pause")  # held in the queue
    # a held run is not waited for: 50 steps left at 40 / 2 steps/s
    assert tour.time_left(store, cid).endswith(f"about {round(50 / 20)} s left")
    store.request(a, "pause")
    assert tour.time_left(store, cid) == ("0 of 2 runs finished · the others are paused "
                                          "(resume them on the lab's page)")
    store.request(cid, "resume")
    store.finish(c, "done", 100)
    store.finish(b, "done", 100)
    # alone now: 50 steps at 10 steps/s
    assert tour.time_left(store, cid) == "1 of 2 runs finished · about 5 s left"


def test_enlarge_scales_every_panel_and_keeps_the_data():
    import pandas as pd

    frame = pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0]})
    base = tour.alt.Chart(frame).mark_line().encode(x="step:Q", y="value:Q")
    chart = tour.alt.hconcat(base.properties(width=100, height=50),
                             tour.alt.layer(base, base).properties(width=200, height=80))
    spec = tour.enlarge(chart, 1.5).to_dict()
    assert [(p["width"], p["height"]) for p in spec["hconcat"]] == [(150, 75), (300, 120)]
    assert spec["config"]["axis"]["labelFontSize"] == round(12 * tour.SCALE)  # at most SCALE
    assert chart.to_dict()["hconcat"][0]["width"] == 100  # the original is untouched


def test_presented_widens_a_single_panel_most():
    import pandas as pd

    frame = pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0]})
    base = tour.alt.Chart(frame).mark_line().encode(x="step:Q", y="value:Q")
    single = tour.presented(tour.alt.layer(base, base).properties(width=100, height=50))
    assert (single.to_dict()["width"], single.to_dict()["height"]) == (170, 65)
    two_rows = tour.presented(tour.alt.vconcat(base.properties(width=100, height=50),
                                               base.properties(width=100, height=50)))
    assert [(p["width"], p["height"]) for p in two_rows.to_dict()["vconcat"]] == [(130, 35)] * 2


def test_lr_readout_says_none_for_a_method_that_never_reaches_the_share():
    """Lab 5's readout: a series with no qualifying value beside one with a range said
    'nan–nan (nan decades)' (None turned NaN in the table); constructed case."""
    import numpy as np
    import pandas as pd

    xs = [0.01, 0.1, 1.0]
    frame = pd.DataFrame({"run": list("abcdef"), "method": ["batch"] * 3 + ["none"] * 3,
                          "series": ["batch"] * 3 + ["none"] * 3, "x": xs + xs,
                          "seed": 0, "value": [0.9, 0.95, 0.92, 0.1, 0.1, 0.1],
                          "status": "done", "diverged": False, "pending": False,
                          "error": ""})
    text = sensitivity.tolerance_readout(frame, "lr")
    assert "none none" in text and "nan" not in text
    assert f"batch 0.01–1 ({np.log10(100):.1f} decades)" in text


def test_framework_table_matches_the_methods_and_invariance_tables():
    from normlab.views.compareview import methods_table

    table = invariance.invariance_table(("batch", "weight"))
    choices, ignores = tour.framework_tables(table)
    assert list(choices.index) == list(ignores.index) == ["BatchNorm", "WeightNorm"]
    methods = methods_table().set_index("method")
    assert choices.loc["WeightNorm", "σ (scale)"] == methods.loc["WeightNorm", "σ (scale)"]
    assert len(ignores.columns) == 6
    for r in table.itertuples():
        assert ignores.loc[r.title, r.transform_title] == ("Y" if r.invariant else "N")


# ------------------------------------------------------------------ the page
def test_first_step_queues_the_runs_and_next_walks_every_step(store):
    at = ok(tour_page())
    assert at.title[0].value == tour.STEPS[0].title
    names = set(store.comparisons()["name"])
    wanted = {(s.lab.key, s.preset) for s in tour.STEPS if s.needs is not None}
    assert names == {f"{s.lab.title} · {p.label} · {len(preset_configs(p))} runs"
                     for s in tour.STEPS if (p := s.needs) is not None}
    assert len(names) == len(wanted)
    at = ok(at.run())  # opened again: nothing queued twice
    assert len(store.comparisons()) == len(wanted)
    assert "waiting for a worker" in texts(at)  # its runs are queued: progress, no chart
    for i, step in enumerate(tour.STEPS[1:], start=1):
        at.button(key="tour_next").click()
        at = ok(at.run())
        assert at.title[0].value == step.title
        assert at.query_params["step"] in (step.key, [step.key])
        if step.needs is not None:
            assert "Training this step's runs" in texts(at) and not charts(at)
        else:
            assert len(at.table) == 2 and at.success
    assert at.button(key="tour_next").disabled
    at.button(key="tour_back").click()
    at = ok(at.run())
    assert at.title[0].value == tour.STEPS[-2].title


def test_a_link_opens_its_step_and_stored_tiny_runs_draw_the_labs_chart(store):
    configs = [RunConfig(norm=n, weight_decay=wd, **TINY) for wd in (0.0, 0.01)
               for n in ("batch", "none")]
    fill(store, configs, preset_name("invariance", 4), {"weight_decay": [0, 0.01]})
    configs = [RunConfig(norm=n, lr=lr, **TINY) for n in ("batch", "none")
               for lr in (0.01, 0.1, 1.0)]
    fill(store, configs, preset_name("lr", 6), {"norm": ["batch", "none"],
                                                "lr": [0.01, 0.1, 1.0]}, diverge=5)
    at = ok(tour_page(step="invariance"))
    assert at.title[0].value == tour.STEPS[tour.index_of("invariance")].title
    assert len(store.comparisons()) == 2  # not the first step: nothing queued
    assert len(charts(at)) == 2  # the weight-growth chart: two panels (charts() counts panels)
    assert any("slope −1" in s.value and "batch wd 0.01" in s.value for s in at.success)
    at = ok(tour_page(step="lr"))
    assert len(charts(at)) == 1
    assert any("lr range reaching ≥ 90%" in s.value for s in at.success)
    at = ok(tour_page(step="batch"))  # nothing stored for it: says so, offers to queue
    assert "not stored yet" in texts(at)
    next(b for b in at.button if b.label == "Queue the tour's runs now").click()
    at = ok(at.run())
    assert tour.missing(store) == [] and len(store.comparisons()) == 7  # 5 presets queued
    assert "waiting for a worker" in texts(at)


def test_an_unknown_step_warns_and_starts_at_the_first(store):
    at = ok(tour_page(step="nosuchstep"))
    assert at.title[0].value == tour.STEPS[0].title
    assert any("no step 'nosuchstep'" in w.value for w in at.warning)
