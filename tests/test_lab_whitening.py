"""Lab 2, "How far from whitening?": frames, chart builders (via to_dict), the readout on
constructed and on trained runs, the preset, and the page (AppTest) on a small stored
comparison."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES, corr_metric
from normlab.runs.comparisons import check
from normlab.training.config import RunConfig
from normlab.views.labs import whitening as wh
from normlab.views.labs.scaffold import preset_configs
from normlab.views.palette import method_order
from test_pages import charts, ok, store, texts  # noqa: F401 (fixture)
from test_pages_labs import fill, lab_page

METHODS = ("none", "batch", "layer", "whiten")
TINY = dict(width=16, depth=2, batch_size=64, steps=8, record_interval=2, eval_interval=8,
            group_size=8, decorrelation=True, corr_snapshots=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small stored comparison of the four methods and its frames."""
    from normlab.runs.store import Store

    s = Store(tmp_path_factory.mktemp("wh") / "s.sqlite")
    cid, ids = fill(s, [RunConfig(norm=n, **TINY) for n in METHODS],
                    "How far from whitening? · test", {"norm": list(METHODS)})
    runs = s.runs(comparison=cid)
    return s, runs, s.metrics(ids)


def test_frames_from_stored_runs(trained):
    s, runs, metrics = trained
    curves = wh.curve_frame(metrics, runs)
    assert set(curves["site"]) == set(CURVE_SITES)
    assert set(curves["metric"]) == set(CURVE_METRICS)
    assert set(curves["side"]) == {"input x", "output x̂"}
    assert wh.snapshot_steps_of(metrics) == [0, 7]
    m = wh.matrix_frame(metrics, runs, "hidden1", 7)
    assert len(m) == 4 * 2 * 16 * 16  # methods × sides × full 16 × 16
    one = m[(m["method"] == "batch") & (m["side"] == "input x")].pivot(
        index="i", columns="j", values="value").to_numpy()
    np.testing.assert_allclose(one, one.T)
    np.testing.assert_allclose(np.diag(one), 1.0)
    stored = metrics[(metrics["layer"] == "hidden1") & (metrics["step"] == 7)
                     & (metrics["site"] == "matrix_in") & (metrics["metric"] == corr_metric(2, 9))
                     & (metrics["run"] == runs[runs["norm"] == "batch"]["id"].iloc[0])]
    assert one[9, 2] == pytest.approx(float(stored["value"].iloc[0]))
    spec = wh.spectrum_frame(metrics, runs, "hidden1", 7)
    assert sorted(spec["rank"].unique()) == list(range(1, 17))
    w = spec[(spec["method"] == "whiten") & (spec["kind"] == "within groups")]["value"]
    np.testing.assert_allclose(w, 1.0, atol=1e-2)  # whitened within groups: flat at 1


def test_chart_builders(trained):
    s, runs, metrics = trained
    curves = wh.curve_chart(wh.curve_frame(metrics, runs), "hidden2").to_dict()
    panels = [p for row in curves["vconcat"] for p in row["hconcat"]]
    assert len(panels) == 4
    assert all(p["encoding"]["y"]["scale"]["type"] == "log" for p in panels)
    assert panels[0]["encoding"]["color"]["scale"]["domain"] == method_order(METHODS)
    heat = wh.heatmap_chart(wh.matrix_frame(metrics, runs, "hidden1", 0)).to_dict()
    color = heat["spec"]["encoding"]["color"]
    assert color["scale"]["domain"] == [-1, 1]  # one scale for input and output
    assert heat["facet"]["column"]["sort"] == method_order(METHODS)
    assert heat["facet"]["row"]["sort"] == ["input x", "output x̂"]
    spectrum = wh.spectrum_chart(wh.spectrum_frame(metrics, runs, "hidden1", 0)).to_dict()
    layers = [p["layer"] for p in spectrum["hconcat"]]
    assert len(layers) == 2
    assert layers[0][1]["encoding"]["y"]["scale"]["type"] == "log"
    assert layers[0][0]["mark"]["type"] == "rule"
    with pytest.raises(ValueError, match="no decorrelation measurements for layer"):
        wh.curve_chart(wh.curve_frame(metrics, runs), "nope")


def _constructed(values: dict[str, tuple]) -> pd.DataFrame:
    """A curve frame: per method, the four output statistics at two steps."""
    rows = []
    for method, stats in values.items():
        for step in (0, 10):
            for metric, v in zip(CURVE_METRICS, stats):
                rows.append({"run": method, "step": step, "layer": "hidden1", "site": "xhat",
                             "metric": metric, "value": v, "method": method, "seed": 0,
                             "side": "output x̂"})
    return pd.DataFrame(rows)


def test_readout_sorts_by_the_thresholds():
    frame = _constructed({"a": (0.3, 0.01, 0.0, 0.0), "b": (0.3, 0.3, 0.01, 0.02),
                          "c": (0.3, 0.3, 0.01, 0.2), "d": (0.3, 0.3, 0.5, 0.01)})
    assert wh.summary(frame).set_index("method").loc["b", "var_spread"] == 0.02
    text = wh.readout(frame)
    decor, rest = text.split("Only equalizes")
    equal, neither = rest.split("Neither")
    assert "a (" in decor and "b (" in equal
    assert "c (" in neither and "d (" in neither and "a (" not in neither
    assert wh.readout(frame.iloc[:0]) == "No decorrelation measurements yet."


def test_readout_of_trained_runs_matches_the_expected_classes(trained):
    s, runs, metrics = trained
    table = wh.summary(wh.curve_frame(metrics, runs))
    kinds = table[table["side"] == "output x̂"].set_index("method").apply(wh.classify, axis=1)
    assert kinds.to_dict() == {"none": "neither", "batch": "equalizes", "layer": "neither",
                               "whiten": "decorrelates"}


def test_the_preset():
    (preset,) = wh.LAB.presets
    configs = preset_configs(preset)
    assert [c.norm for c in configs] == list(METHODS)
    c = configs[0]
    assert (c.dataset, c.model, c.depth, c.width, c.activation) == ("digits", "mlp", 3, 64,
                                                                   "sigmoid")
    assert c.decorrelation and c.corr_snapshots > 0
    check(configs)  # valid and within the caps


def test_page_shows_heatmaps_spectrum_curves_and_the_readout(store):
    cid, _ = fill(store, [RunConfig(norm=n, **TINY) for n in ("batch", "whiten")],
                  "How far from whitening? · test", {"norm": ["batch", "whiten"]})
    at = ok(lab_page("pages/5_whitening.py", comparison=cid))
    assert at.title[0].value == "How far from whitening?"
    assert len(at.get("vega_lite_chart")) == 3  # heatmaps, spectrum, curves
    assert any("decorrelates" in s.value and "whiten (" in s.value for s in at.success)
    (slider,) = at.select_slider
    assert slider.label == "Snapshot step" and slider.value == 7
    slider.set_value(0)
    at = ok(at.run())
    assert at.select_slider[0].value == 0 and len(at.get("vega_lite_chart")) == 3


def test_page_preset_launches_and_old_runs_say_what_is_missing(store):
    at = lab_page("pages/5_whitening.py")
    assert "Nothing launched for this lab yet" in texts(at)
    next(b for b in at.button if b.label.startswith("Run: none, batch")).click()
    at = ok(at.run())
    (cid,) = store.comparisons()["id"]
    assert len(store.runs(comparison=cid)) == 4
    assert "Waiting for the first measurements" in texts(at)


def test_waiting_message_says_when_runs_lack_the_measurements():
    old = pd.DataFrame({"config": [RunConfig().to_dict()]})
    assert "did not measure decorrelation" in wh.waiting_message(old)
    new = pd.DataFrame({"config": [RunConfig(decorrelation=True).to_dict()]})
    assert wh.waiting_message(new) == "Waiting for the first measurements…"
