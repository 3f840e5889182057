"""Lab 1, "One formula": its frames, charts and readouts, and the page (AppTest)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normlab.training.config import RunConfig
from normlab.views.labs import formula
from normlab.views.labs.scaffold import preset_configs
from test_pages import app, charts, ok, store, texts  # noqa: F401 (fixture)
from test_pages_labs import fill

TINY = dict(steps=12, width=8, depth=2, eval_interval=6, record_interval=3, batch_size=16,
            stages=True)


def _runs(methods):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(methods))], "norm": list(methods),
                         "seed": 0, "name": None, "comparison_id": "c1",
                         "config": [{"activation": "sigmoid"}] * len(methods)})


def test_preset_is_the_issues():
    (preset,) = formula.LAB.presets
    configs = preset_configs(preset)
    assert [c.norm for c in configs] == ["none", "batch", "layer"]
    assert {(c.dataset, c.model, c.depth, c.width, c.activation, c.steps, c.stages)
            for c in configs} == {("digits", "mlp", 3, 100, "sigmoid", 1000, True)}


def _feature_rows(run, layer, step, mean, var, g, b):
    rows = []
    for j, vals in enumerate(zip(mean, var, g, b)):
        for kind, v in zip(("mean", "var", "g", "b"), vals):
            rows.append({"run": run, "step": step, "layer": layer, "site": "affine",
                         "metric": f"f{j}_{kind}", "value": v})
    return rows


def test_feature_frame_chart_and_readout_on_a_constructed_case():
    """batch on the identity line (holds), layer off it (does not): the readout says so,
    with the measured largest deviations."""
    runs = _runs(["batch", "layer"])
    rows = (_feature_rows("r0", "hidden1", 10, [0.5, -1.0], [4.0, 0.25], [2.0, 0.5], [0.5, -1.0])
            + _feature_rows("r1", "hidden1", 10, [0.2, 0.0], [1.0, 3.0], [1.0, 1.0], [0.0, 0.0])
            + _feature_rows("r1", "hidden1", 0, [9, 9], [9, 9], [1, 1], [0, 0]))
    frame = formula.feature_frame(pd.DataFrame(rows), runs, "hidden1", step=9)
    assert set(frame["step"]) == {10}
    batch = frame[frame["method"] == "batch"].sort_values("feature")
    np.testing.assert_allclose(batch["g2"], [4.0, 0.25])
    dev = formula.feature_deviations(frame).set_index("method")
    assert dev.loc["batch", "holds"] and not dev.loc["layer", "holds"]
    assert dev.loc["layer", "mean_dev"] == pytest.approx(0.2)
    assert dev.loc["layer", "var_dev"] == pytest.approx(2.0)
    text = formula.feature_readout(frame, "hidden1")
    assert "holds per feature for batch, not for layer" in text
    assert "layer: mean(y) − b up to 0.2, var(y) off g² by up to 200.0%" in text
    only_layer = formula.feature_readout(frame[frame["method"] == "layer"], "hidden1")
    assert "it holds per feature for none of layer." in only_layer
    spec = formula.feature_chart(frame).to_dict()
    assert len(spec["hconcat"]) == 2
    assert spec["hconcat"][1]["layer"][1]["encoding"]["x"]["field"] == "g2"


def test_linear_frame_chart_and_readout():
    runs = _runs(["none", "batch"])
    rows = []
    for step in range(20):
        rows.append({"run": "r0", "step": step, "layer": "hidden2", "site": "post_norm",
                     "metric": "linear", "value": 0.9})
        rows.append({"run": "r1", "step": step, "layer": "hidden2", "site": "post_norm",
                     "metric": "linear", "value": 0.4 if step >= 18 else 0.6})
        rows.append({"run": "r1", "step": step, "layer": "hidden2", "site": "norm_hat",
                     "metric": "linear", "value": 0.7})
    frame = formula.linear_frame(pd.DataFrame(rows), runs)
    assert set(frame["at"]) == {"x̂", "y"}
    text = formula.linear_readout(frame, "hidden2")
    assert "steps 18–19" in text and "none 90% at y (no x̂);" in text and "batch 70% at x̂ → 40% at y" in text
    spec = formula.linear_chart(frame, "hidden2").to_dict()
    assert spec["encoding"]["strokeDash"]["field"] == "at"
    with pytest.raises(ValueError, match="hidden9"):
        formula.linear_chart(frame, "hidden9")


def test_affine_frame_and_chart():
    runs = _runs(["batch"])
    rows = [{"run": "r0", "step": s, "layer": "hidden1", "site": "affine", "metric": m,
             "value": v} for s in (0, 1) for m, v in (("g_mean", 1.0 + s), ("g_std", 0.1),
                                                      ("b_mean", -s), ("b_std", 0.2))]
    frame = formula.affine_frame(pd.DataFrame(rows), runs)
    g = frame[frame["param"] == "g"].sort_values("step")
    assert list(g["mean"]) == [1.0, 2.0] and list(g["std"]) == [0.1, 0.1]
    spec = formula.affine_chart(frame, "hidden1").to_dict()
    assert [p["title"] for p in spec["hconcat"]][0].startswith("g of hidden1")


def test_stage_frame_and_chart_from_a_real_run():
    from normlab.training.trainer import train

    frames, runs = [], _runs(["none", "batch"])
    for rid, norm in zip(runs["id"], runs["norm"]):
        batch, _ = train(RunConfig(norm=norm, **TINY))
        frames.append(batch.to_frame().assign(run=rid))
    metrics = pd.concat(frames, ignore_index=True)
    frame = formula.stage_frame(metrics, runs, "hidden2", 9, "sigmoid")
    got = frame.groupby("stage")["method"].unique().map(sorted).to_dict()
    assert got["x̂ = (x − μ)/σ"] == ["batch"]  # none has no x̂
    assert got["f(y)"] == ["batch", "none"]
    sums = frame.groupby(["stage", "method"])["fraction"].sum()
    assert (sums <= 1 + 1e-9).all() and (sums > 0.5).all()
    spec = formula.stage_chart(frame).to_dict()
    assert [p["title"] for p in spec["hconcat"]] == [s for s, _ in formula.STAGES]
    table = formula.source_table(metrics[metrics["step"] == 9], runs, "hidden2", 9)
    assert list(table["method"]) == ["none", "batch"]
    assert table.iloc[0]["μ (mean ± spread)"] == "—"
    assert "±" in table.iloc[1]["σ (mean ± spread)"]


def test_page_with_a_stored_comparison(store):
    configs = [RunConfig(norm=n, **TINY) for n in ("none", "batch", "layer")]
    cid, _ = fill(store, configs, "One formula · test", {"norm": ["none", "batch", "layer"]})
    at = ok(app(comparison=cid).switch_page("pages/4_one_formula.py").run())
    assert at.title[0].value == "One formula"
    # chart elements: stages, per-feature scatter, g and b, near-linear share
    assert len(at.get("vega_lite_chart")) == 4
    success = [s.value for s in at.success]
    assert any("holds per feature for batch" in s and "not for layer" in s for s in success)
    assert any("near-linear region" in s and "batch" in s for s in success)
    assert len(at.table[0].value) == 3  # μ and σ per method


def test_page_without_runs_offers_the_preset(store):
    at = ok(app().switch_page("pages/4_one_formula.py").run())
    assert "Nothing launched for this lab yet" in texts(at)
    next(b for b in at.button if b.label.startswith("Run: digits")).click()
    at = ok(at.run())
    (cid,) = store.comparisons()["id"]
    runs = store.runs(comparison=cid)
    assert sorted(runs["norm"]) == ["batch", "layer", "none"]
    assert all(c["stages"] for c in runs["config"])


def test_page_on_runs_without_stages_says_so(store):
    configs = [RunConfig(norm=n, **{**TINY, "stages": False}) for n in ("none", "batch")]
    cid, _ = fill(store, configs, "One formula · plain", {"norm": ["none", "batch"]})
    at = ok(app(comparison=cid).switch_page("pages/4_one_formula.py").run())
    assert any("recorded no stages" in w.value for w in at.warning)
    assert not charts(at)


def test_page_step_follows_another_comparison(store):
    """The step picked on one comparison is replaced when it is not a step of the next."""
    short = [RunConfig(norm="batch", **{**TINY, "steps": 6})]
    long = [RunConfig(norm="batch", **TINY)]
    c1, _ = fill(store, long, "One formula · long", {"norm": ["batch"]})
    c2, _ = fill(store, short, "One formula · short", {"norm": ["batch"]})
    at = ok(app(comparison=c1).switch_page("pages/4_one_formula.py").run())
    assert at.select_slider[0].value == 9
    at.select_slider[0].set_value(6).run()
    assert "hidden2 at step 6" in at.markdown[-1].value or any(
        "at step 6" in h.value for h in at.subheader)
    at.query_params["comparison"] = c2
    at = ok(at.run())
    assert at.select_slider[0].value == 3
