"""Lab 3, internal covariate shift: frames, chart builders, readouts, preset and page."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normlab.training.config import RunConfig
from normlab.views.labs import ics
from normlab.views.labs.scaffold import preset_configs
from test_pages import app, charts, ok, store, texts  # noqa: F401 (fixture)
from test_pages_labs import fill


def _frame() -> pd.DataFrame:
    """Two runs (none, batch), steps 0..40 every 10: drift grows with depth for none."""
    rows = []
    scale = {"none": {"hidden2": 0.1, "out": 1.0}, "batch": {"hidden2": 0.02, "out": 0.03}}
    for run, norm in (("r1", "none"), ("r2", "batch")):
        for i, step in enumerate(range(0, 50, 10)):
            for layer in ("hidden2", "out"):
                s = scale[norm][layer]
                if step:
                    rows += [(run, step, layer, "drift", s * (1 + i)),
                             (run, step, layer, "drift_noise", s / 100 * i)]
                rows += [(run, step, layer, "drift_floor", 0.07), (run, step, layer,
                         "drift_total", s * i), (run, step, layer, "ics_diff", s * 2),
                         (run, step, layer, "ics_rel", 0.5), (run, step, layer, "ics_cos",
                                                              0.9 - 0.01 * i)]
            rows += [(run, step, "model", "loss_min", 1.0), (run, step, "model", "loss_max",
                                                             1.0 + (i + 1) * s),
                     (run, step, "model", "grad_change_min", 0.1),
                     (run, step, "model", "grad_change_max", 0.1 + s),
                     (run, step, "model", "beta", 2.0)]
    metrics = pd.DataFrame(rows, columns=["run", "step", "layer", "metric", "value"])
    metrics["site"] = "ics"
    metrics = pd.concat([metrics, pd.DataFrame([("r1", 0, "model", "loss", 2.0, "train")],
                                               columns=[*metrics.columns])])
    runs = pd.DataFrame({"id": ["r1", "r2"], "config": [
        RunConfig(norm="none", lr=0.5, ics_interval=10).to_dict(),
        RunConfig(norm="batch", lr=0.5, ics_interval=10).to_dict()]})
    return ics.ics_frame(metrics, runs)


def test_frame_keeps_only_ics_rows_with_method_and_lr():
    f = _frame()
    assert set(f["series"]) == {"none · lr 0.5", "batch · lr 0.5"}
    assert "loss" not in set(f["metric"]) and set(f["every"]) == {10}


def test_drift_readout_and_depth_frame_are_the_medians():
    f = _frame()
    text = ics.drift_readout(f)
    # drift at steps 10..40 = s·(2..5): median s·3.5
    assert text.startswith("Median drift per 10 steps, input of hidden2 → out")
    assert "none · lr 0.5 0.350 → 3.500" in text and "batch · lr 0.5 0.070 → 0.105" in text
    assert "At out, its sampling error ≤ 0.025σ₀" in text  # none: median of 0.01·(1..4)
    assert "differ by 0.070σ₀" in text
    depth = ics.depth_frame(f)
    none = depth[depth["method"] == "none"].set_index("layer")
    assert none.loc["out", "drift"] == pytest.approx(3.5)
    assert list(none["depth"]) == [2, 3]


def test_ics_and_smoothness_readouts():
    f = _frame()
    assert "at out, median over training: none · lr 0.5 ‖G−G′‖ 2 (0.50‖G‖), cos 0.88" \
        in ics.ics_readout(f)
    smooth = ics.smooth_frame(f)
    loss = smooth[(smooth["quantity"] == "loss") & (smooth["series"] == "none · lr 0.5")]
    assert list(loss["value"]) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert "none · lr 0.5 3 / 1" in ics.smooth_readout(smooth)


def test_waiting_message_says_why_nothing_is_drawn():
    runs = pd.DataFrame({"id": ["a"], "config": [RunConfig(steps=50).to_dict()]})
    empty = ics.ics_frame(pd.DataFrame(columns=["run", "step", "layer", "site", "metric",
                                                "value"]), runs)
    assert "without the measurement" in ics.waiting_message(runs, empty)
    runs["config"] = [RunConfig(steps=50, ics_interval=50).to_dict()]
    assert "only at step 0" in ics.waiting_message(runs, empty)
    runs["config"] = [RunConfig(steps=50, ics_interval=10).to_dict()]
    assert ics.waiting_message(runs, empty).startswith("Waiting")
    assert ics.waiting_message(runs, _frame()) is None


def test_chart_builders_encode_what_they_say():
    f = _frame()
    spec = ics.drift_chart(f).to_dict()
    assert spec["facet"]["column"]["field"] == "layer"
    assert spec["facet"]["column"]["sort"] == ["hidden2", "out"]
    layers = spec["spec"]["layer"]
    assert [l["mark"]["type"] for l in layers] == ["line", "area", "line"]
    assert layers[0]["encoding"]["y"]["scale"]["type"] == "log"
    assert layers[2]["encoding"]["y"]["field"] == "drift_floor"
    depth = ics.depth_chart(ics.depth_frame(f)).to_dict()
    assert depth["layer"][0]["encoding"]["strokeDash"]["field"] == "lr"
    cos = ics.lines_chart(f, "ics_cos", "cos").to_dict()
    assert cos["spec"]["encoding"]["y"]["scale"] == {"zero": False}
    sm = ics.lines_chart(ics.smooth_frame(f), "range", "r", log=True, panel="quantity")
    assert sm.to_dict()["facet"]["column"]["sort"] == ["loss", "gradient change"]
    with pytest.raises(ValueError, match="no 'nothing' rows"):
        ics.lines_chart(f, "nothing", "x")


def test_preset_is_the_issues_grid():
    configs = preset_configs(ics.LAB.presets[0])
    assert [(c.norm, c.lr) for c in configs] == [("none", 0.1), ("none", 0.5),
                                                 ("batch", 0.1), ("batch", 0.5)]
    assert all(c.dataset == "digits" and c.depth == 3 and c.width == 100 and
               c.activation == "sigmoid" and c.ics_interval > 0 for c in configs)
    from normlab.training.config import validate
    from normlab.training.limits import ics_values, problems

    for c in configs:
        validate(c)
        assert not problems(c)
        # 3 input layers × 7 values + 5 model values, at steps 0, 10, …, 1000
        assert ics_values(c) == (3 * 7 + 5) * 101


def test_page_on_a_small_stored_comparison(store):
    tiny = dict(steps=12, width=8, depth=2, eval_interval=6, record_interval=3,
                batch_size=16, ics_interval=3)
    configs = [RunConfig(norm=n, lr=lr, **tiny) for n in ("none", "batch") for lr in (0.1, 0.5)]
    cid, _ = fill(store, configs, f"{ics.LAB.title} · test", {"norm": ["none", "batch"],
                                                               "lr": [0.1, 0.5]})
    at = ok(app(comparison=cid).switch_page("pages/6_ics.py").run())
    assert at.title[0].value == "Internal covariate shift"
    assert len(charts(at)) == 5
    lines = [s.value for s in at.success]
    assert any(t.startswith("Median drift per 3 steps, input of hidden2 → out") for t in lines)
    assert any(t.startswith("Santurkar's ICS at out") for t in lines)
    assert any("median range of the loss" in t for t in lines)
    assert at.button[0].label == f"Run: {ics.LAB.presets[0].label}"


def test_page_preset_button_queues_the_runs(store):
    at = ok(app().switch_page("pages/6_ics.py").run())
    assert "Nothing launched for this lab yet" in texts(at)
    at = ok(at.button[0].click().run())
    runs = store.runs()
    assert len(runs) == 4 and all(c["ics_interval"] > 0 for c in runs["config"])
    assert "Waiting for the first measurements" in texts(at)
