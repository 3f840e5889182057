"""normlab.views.palette / charts / layercharts: every builder on a small synthetic tidy frame,
checked through ``chart.to_dict()``; specs compiled by vl-convert; image export."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normlab.views import palette
from normlab.views.charts import HOVER_STEPS, metric_chart, to_image
from normlab.views.layercharts import hist_at_step, hist_heatmap, layer_chart, percentile_chart
from normlab.measure.schema import HIST_BINS, HIST_METRICS

METHODS = ("layer", "none", "batch")  # deliberately not in canonical order
STEPS = np.arange(0, 100, 10)
LAYERS = ("hidden2", "hidden1")


def synthetic(methods=METHODS, seeds=(0, 1), steps=STEPS, layers=LAYERS, labels=None):
    """Tidy rows + method/seed/label for every metric kind the builders draw."""
    rng = np.random.default_rng(0)
    parts = []

    def add(method, label, seed, layer, site, metric, values):
        parts.append(pd.DataFrame({
            "run": f"{label}-{seed}", "step": steps, "layer": layer, "site": site,
            "metric": metric, "value": values, "method": method, "seed": seed, "label": label}))

    for i, method in enumerate(methods):
        label = labels[i] if labels else method
        for seed in seeds:
            add(method, label, seed, "model", "train", "loss",
                2 * np.exp(-steps / 50) + 0.1 * rng.random(len(steps)))
            add(method, label, seed, "model", "val", "acc", 1 - np.exp(-steps / 50))
            for layer in layers:
                add(method, label, seed, layer, "param", "grad_norm",
                    10 ** rng.uniform(-3, 1, len(steps)))
                for p, q in (("p15", -1.0), ("p50", 0.0), ("p85", 1.0)):
                    add(method, label, seed, layer, "pre_norm", p,
                        q + 0.1 * rng.normal(size=len(steps)))
                h = rng.random((len(steps), HIST_BINS))
                h[:, :2] = 0.0  # empty bins
                h /= h.sum(axis=1, keepdims=True)
                for b, m in enumerate(HIST_METRICS):
                    add(method, label, seed, layer, "pre_norm", m, h[:, b])
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def df():
    return synthetic()


# ------------------------------------------------------------------------ spec helpers
def views(spec):
    """Every unit/layer view dict (those with a mark) in a spec, depth first."""
    if isinstance(spec, dict):
        if "mark" in spec:
            yield spec
        for v in spec.values():
            yield from views(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from views(v)


def mark_type(view):
    return view["mark"] if isinstance(view["mark"], str) else view["mark"]["type"]


def marks(spec):
    return {mark_type(v) for v in views(spec)}


def view_with(spec, mark):
    """The first view of ``mark`` (of lines: the curve itself, not the faint raw one)."""
    return next(v for v in views(spec) if mark_type(v) == mark
                and v.get("encoding", {}).get("y", {}).get("field") != "raw")


def data_of(spec):
    """The rows a chart draws its curves from (a curve chart's hover rows left out)."""
    (values,) = spec["datasets"].values()
    data = pd.DataFrame(values)
    if "hover" not in data:
        return data
    return data[data["hover"].isna()].drop(columns=[c for c in data if c == "hover"
                                                    or c.startswith("tip_")])


def hover_of(spec):
    """A curve chart's hover rows: one per panel and step, the runs' values as text."""
    (values,) = spec["datasets"].values()
    data = pd.DataFrame(values)
    return data[data["hover"].eq(True)].dropna(axis=1, how="all")


def check_color(spec, methods):
    """Colour by method:N with the palette restricted to ``methods`` in canonical order."""
    expect = [m for m in palette.METHOD_ORDER if m in methods]
    colors = [v["encoding"]["color"] for v in views(spec) if "color" in v.get("encoding", {})]
    colors += [spec["encoding"]["color"]] if "color" in spec.get("encoding", {}) else []
    assert colors
    for c in colors:
        assert c["field"] == "method" and c["type"] == "nominal"
        assert c["scale"]["domain"] == expect
        assert c["scale"]["range"] == [palette.METHOD_COLORS[m] for m in expect]


def check_params(spec, hover=True):
    params = {p["name"]: p for p in spec["params"]}
    legend = [p for p in params.values() if p.get("bind") == "legend"]
    assert len(legend) == 1 and legend[0]["select"]["fields"] == ["method"]
    if hover:
        assert params["hover"]["select"]["nearest"] is True
    return legend[0]["name"]


def tooltip_fields(spec):
    return {t["field"] for v in views(spec) for t in v.get("encoding", {}).get("tooltip", [])}


def check_shared(spec):
    assert spec["resolve"]["scale"]["x"] == "shared"
    assert spec["resolve"]["scale"]["y"] == "shared"


# ----------------------------------------------------------------------------- palette
def registry_names() -> tuple[str, ...]:
    try:
        from normlab.methods.registry import NORM_NAMES
        return tuple(NORM_NAMES)
    except ImportError:  # torch or a sibling module unavailable: read the registry's source
        tree = ast.parse(Path(palette.__file__).with_name("registry.py").read_text())
        return tuple(node.args[0].value for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "NormSpec")


# Paul Tol's 'muted' qualitative scheme (https://personal.sron.nl/~pault/), the source.
TOL_MUTED = {"#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99",
             "#999933", "#AA4499"}


def test_palette_covers_registry_in_canonical_order():
    assert palette.METHOD_ORDER == registry_names()
    assert list(palette.METHOD_COLORS) == list(palette.METHOD_ORDER)
    colors = list(palette.METHOD_COLORS.values())
    assert len(set(colors)) == len(colors)
    assert set(colors) - {palette.METHOD_COLORS["none"]} == TOL_MUTED
    assert all(len(c) == 7 and c.startswith("#") for c in colors)


def test_color_scale_subset_keeps_order_and_colors():
    scale = palette.color_scale(["whiten", "batch", "none", "batch"]).to_dict()
    assert scale["domain"] == ["none", "batch", "whiten"]
    assert scale["range"] == ["#777777", "#332288", "#AA4499"]
    full = palette.color_scale().to_dict()
    assert full["domain"] == list(palette.METHOD_ORDER)


def test_color_scale_unknown_name_gets_stable_fallback():
    a = palette.color_scale(["batch", "my_norm"]).to_dict()
    b = palette.color_scale(["my_norm", "layer"]).to_dict()
    assert a["domain"][-1] == "my_norm" and b["domain"][-1] == "my_norm"
    assert a["range"][-1] == b["range"][-1] in palette.FALLBACK_COLORS


# ------------------------------------------------------------------------- metric_chart
def test_metric_chart_overlay(df):
    spec = metric_chart(df, "loss", "train", band="minmax", title="Train loss").to_dict()
    assert marks(spec) == {"area", "line", "rule"}
    line = view_with(spec, "line")
    x, y = line["encoding"]["x"], line["encoding"]["y"]
    assert (x["field"], x["type"]) == ("step", "quantitative")
    assert (y["field"], y["type"]) == ("value", "quantitative")
    assert line["encoding"]["y"]["scale"] == {"zero": False}
    area = view_with(spec, "area")
    assert area["encoding"]["y"]["field"] == "lo" and area["encoding"]["y2"]["field"] == "hi"
    check_color(spec, METHODS)
    pick = check_params(spec)
    cond = line["encoding"]["opacity"]["condition"]
    assert [c["param"] for c in (cond if isinstance(cond, list) else [cond])] == [pick]
    # hover: one rule per step, its tooltip naming every method's value there (in words)
    tips = [t for v in views(spec) for t in v.get("encoding", {}).get("tooltip", [])]
    assert [t["title"] for t in tips] == ["step", *[m for m in palette.METHOD_ORDER
                                                    if m in METHODS]]
    hover = hover_of(spec)
    assert list(hover["step"]) == sorted(set(df["step"]))
    mean = data_of(spec).set_index(["method", "step"])
    for i, t in enumerate(tips[1:]):
        row = mean.loc[(t["title"], 20)]
        assert hover.loc[hover["step"] == 20, t["field"]].item() == (
            f"{row['value']:.4g}, seeds {row['lo']:.4g} to {row['hi']:.4g}")
    assert spec["title"] == "Train loss" and spec["width"] == "container"
    assert view_with(spec, "line")["encoding"]["color"]["legend"]["orient"] == "right"
    # the drawn data is the mean over the two seeds, min/max band
    data = data_of(spec)
    rows = df[(df["metric"] == "loss") & (df["site"] == "train")]
    ref = rows.groupby(["method", "step"])["value"].agg(["mean", "min", "max"])
    got = data.set_index(["method", "step"]).loc[ref.index]
    np.testing.assert_allclose(got["value"], ref["mean"])
    np.testing.assert_allclose(got["lo"], ref["min"])
    np.testing.assert_allclose(got["hi"], ref["max"])
    assert (data["n_seeds"] == 2).all()


def test_metric_chart_side_log(df):
    spec = metric_chart(df, "loss", "train", layout="side", log=True, columns=2).to_dict()
    assert spec["facet"]["field"] == "method" and spec["facet"]["type"] == "nominal"
    assert spec["facet"]["sort"] == ["none", "batch", "layer"]
    assert spec["columns"] == 2
    check_shared(spec)
    assert marks(spec) == {"line", "rule"}  # band=None: no area
    # a panel per method: its hover tooltip names the one method shown and its value
    tips = [t for v in views(spec) for t in v.get("encoding", {}).get("tooltip", [])]
    assert [t["title"] for t in tips] == ["step", "runs", "value"]
    assert hover_of(spec).groupby("method").size().to_dict() == {m: len(STEPS)
                                                                 for m in METHODS}
    assert view_with(spec, "line")["encoding"]["y"]["scale"]["type"] == "log"
    check_color(spec, METHODS)
    check_params(spec)


def test_metric_chart_downsamples_and_validates():
    big = synthetic(methods=("batch", "rms"), seeds=(0,), steps=np.arange(5000), layers=())
    spec = metric_chart(big, "loss", "train", max_points=200).to_dict()
    counts = data_of(spec).groupby("method").size()
    assert (counts <= 200).all() and (counts >= 100).all()
    with pytest.raises(ValueError, match="layer_chart"):
        metric_chart(synthetic(), "grad_norm", "param")
    with pytest.raises(ValueError, match="layout"):
        metric_chart(big, "loss", "train", layout="grid")
    with pytest.raises(ValueError, match="band"):
        metric_chart(big, "loss", "train", band="iqr")


def test_metric_chart_log_drops_non_positive():
    frame = synthetic(methods=("batch",), seeds=(0,), layers=())
    frame.loc[(frame["metric"] == "loss") & (frame["step"] == 20), "value"] = 0.0
    data = data_of(metric_chart(frame, "loss", "train", log=True).to_dict())
    assert 20 not in set(data["step"]) and (data["value"] > 0).all()


def test_labels_separate_runs_of_one_method():
    frame = synthetic(methods=("batch", "batch", "layer"),
                      labels=("batch · A", "batch · B", "layer"))
    spec = metric_chart(frame, "loss", "train").to_dict()
    line = view_with(spec, "line")
    assert line["encoding"]["strokeDash"]["field"] == "label"
    check_color(spec, ("batch", "layer"))
    pct = percentile_chart(frame, "pre_norm").to_dict()
    assert pct["facet"]["row"]["field"] == "label"


def test_one_method_at_several_settings_is_coloured_by_label():
    """Runs of one method that differ by a setting: colour (and the legend pick, and the
    panels of the side layout) encode the label, each label its own colour."""
    labels = ("batch · lr 0.1", "batch · lr 0.01", "batch · lr 1")
    frame = synthetic(methods=("batch",) * 3, labels=labels)
    spec = metric_chart(frame, "loss", "train").to_dict()
    color = view_with(spec, "line")["encoding"]["color"]
    assert color["field"] == "label" and color["scale"]["domain"] == [
        "batch · lr 0.01", "batch · lr 0.1", "batch · lr 1"]  # natural order
    assert len(set(color["scale"]["range"])) == 3
    assert "strokeDash" not in view_with(spec, "line")["encoding"]
    legend = [q for q in spec["params"] if q.get("bind") == "legend"]
    assert legend[0]["select"]["fields"] == ["label"]
    side = metric_chart(frame, "loss", "train", layout="side").to_dict()
    assert side["facet"]["field"] == "label" and side["columns"] == 3
    # seeds of one label are one curve: the mean of its two seeds
    data = data_of(spec)
    assert len(data) == len(STEPS) * 3 and (data["n_seeds"] == 2).all()


def test_zoom_smoothing_and_log_ticks(df):
    """Step zoom bound to the x scale (double-click resets: Vega-Lite's default for scale
    bindings), the raw curve faint behind the smoothed one, 1-2-5 labels on log axes."""
    spec = metric_chart(df, "loss", "train", smoothing=0.6, log=True).to_dict()
    zoom = [q for q in spec["params"] if q["name"] == "zoom"]
    assert zoom and zoom[0]["bind"] == "scales" and zoom[0]["select"]["encodings"] == ["x"]
    lines = [v for v in views(spec) if mark_type(v) == "line"]
    fields = {v["encoding"]["y"]["field"]: v for v in lines}
    assert set(fields) == {"value", "raw"}
    raw_opacity = fields["raw"]["encoding"]["opacity"]
    assert raw_opacity["value"] < 0.5 and raw_opacity["condition"][0]["value"] < 0.5
    assert "labelExpr" in fields["value"]["encoding"]["y"]["axis"]
    # raw = the seed mean of the unsmoothed values; value = the seed mean of each run's EMA
    from normlab.views.frames import ema
    data = data_of(spec).set_index(["method", "step"]).sort_index()
    rows = df[(df["metric"] == "loss") & (df["site"] == "train")]
    ref_raw = rows.groupby(["method", "step"])["value"].mean()
    np.testing.assert_allclose(data["raw"], ref_raw.loc[data.index])
    sm = rows.sort_values("step").groupby("run")["value"].transform(lambda v: ema(v, 0.6))
    ref = rows.assign(value=sm).groupby(["method", "step"])["value"].mean()
    np.testing.assert_allclose(data["value"], ref.loc[data.index])
    for build in (lambda: percentile_chart(df, "pre_norm"),
                  lambda: layer_chart(df, "grad_norm", "param"),
                  lambda: hist_heatmap(df, "pre_norm")):
        assert "zoom" in {q["name"] for q in build().to_dict()["params"]}


def test_smoothing_changes_only_the_data(df):
    """Smoothed or not, a curve chart's spec is the same but for its rows (the raw column
    is empty when unsmoothed): the browser swaps the rows of a drawn chart, no rebuild."""
    def spec_of(weight):
        spec = metric_chart(df, "loss", "train", smoothing=weight, log=True).to_dict()
        data = spec.pop("datasets")
        text = json.dumps(spec)
        for name in data:
            text = text.replace(name, "DATA")
        return text, data_of({"datasets": data})

    plain, smoothed = spec_of(0.0), spec_of(0.6)
    assert plain[0] == smoothed[0]
    assert plain[1]["raw"].isna().all() and smoothed[1]["raw"].notna().all()
    np.testing.assert_allclose(plain[1]["value"], smoothed[1]["raw"])


def test_hover_rows_follow_each_run_to_its_last_step():
    """Runs at different steps (a live comparison): each step's tooltip gives a run's value
    at its nearest recorded step, and '–' past the run's last one; steps are thinned."""
    frame = synthetic(methods=("batch", "layer"), seeds=(0,), layers=(),
                      steps=np.arange(0, 1000, 2))
    frame = frame[(frame["method"] == "batch") | (frame["step"] < 500)]
    spec = metric_chart(frame, "loss", "train").to_dict()
    hover = hover_of(spec)
    assert len(hover) == HOVER_STEPS and hover["step"].is_monotonic_increasing
    late = hover[hover["step"] > 498]
    assert (late["tip_1"] == "–").all() and (late["tip_0"] != "–").all()
    data = data_of(spec).set_index(["method", "step"])
    first = hover.iloc[0]
    assert first["tip_1"] == f"{data.loc[('layer', 0), 'value']:.4g}"


def test_grids_put_legends_below():
    """Small multiples keep their legend below, in rows that fit a ~800 px column."""
    many = synthetic(methods=palette.METHOD_ORDER, seeds=(0,), layers=("hidden1",))
    spec = percentile_chart(many, "pre_norm").to_dict()
    leg = view_with(spec, "line")["encoding"]["color"]["legend"]
    assert leg["orient"] == "bottom" and 1 <= leg["columns"] <= 5
    heat = hist_heatmap(many, "pre_norm").to_dict()
    assert view_with(heat, "rect")["encoding"]["color"]["legend"]["orient"] == "bottom"


# -------------------------------------------------------------------------- layer_chart
def test_layer_chart_side_and_overlay(df):
    side = layer_chart(df, "grad_norm", "param", layout="side", log=True, band="std").to_dict()
    assert side["facet"]["column"]["field"] == "layer"
    assert side["facet"]["column"]["sort"] == ["hidden1", "hidden2"]
    assert side["facet"]["row"]["field"] == "method"
    check_shared(side)
    assert marks(side) == {"area", "line", "rule"}
    assert view_with(side, "line")["encoding"]["y"]["scale"]["type"] == "log"
    check_color(side, METHODS)
    check_params(side)
    assert {"layer", "step", "label", "tip_0"} <= tooltip_fields(side)

    over = layer_chart(df, "grad_norm", "param").to_dict()
    assert over["facet"]["field"] == "layer" and over["columns"] == 2
    check_shared(over)
    assert "type" not in view_with(over, "line")["encoding"]["y"].get("scale", {})


# --------------------------------------------------------------------- percentile_chart
def test_percentile_chart(df):
    spec = percentile_chart(df, "pre_norm").to_dict()
    assert marks(spec) == {"area", "line", "point"}
    area, line = view_with(spec, "area"), view_with(spec, "line")
    assert area["encoding"]["y"]["field"] == "p15" and area["encoding"]["y2"]["field"] == "p85"
    assert line["encoding"]["y"]["field"] == "p50"
    assert line["encoding"]["x"] == {"field": "step", "title": "step", "type": "quantitative"}
    assert spec["facet"]["column"]["field"] == "layer"
    assert spec["facet"]["row"]["field"] == "method"
    check_shared(spec)
    check_color(spec, METHODS)
    check_params(spec)
    assert {"p15", "p50", "p85", "step", "method"} <= tooltip_fields(spec)


# -------------------------------------------------------------------------- histograms
def test_hist_heatmap(df):
    spec = hist_heatmap(df, "pre_norm").to_dict()
    rect = view_with(spec, "rect")
    enc = rect["encoding"]
    assert enc["x"]["field"] == "step" and enc["x2"]["field"] == "step_end"
    assert enc["y"]["field"] == "lo" and enc["y2"]["field"] == "hi"
    assert enc["y"]["scale"]["domain"] == [-8.0, 8.0]
    assert enc["color"]["field"] == "fraction" and enc["color"]["type"] == "quantitative"
    assert enc["color"]["scale"]["type"] == "log" and enc["color"]["scale"]["clamp"] is True
    assert spec["facet"]["column"]["field"] == "layer"
    assert spec["facet"]["row"]["field"] == "method"
    check_shared(spec)
    data = data_of(spec)
    assert (data["fraction"] > 0).all()  # empty bins are left blank (log scale)
    assert data["lo"].min() > -8.0  # the two empty bins of the synthetic data are gone
    assert {"step", "method", "fraction"} <= tooltip_fields(spec)


def test_hist_at_step(df):
    spec = hist_at_step(df, "pre_norm", 47).to_dict()
    assert marks(spec) == {"line", "point"}
    line = view_with(spec, "line")
    assert line["mark"]["interpolate"] == "step-after"
    assert line["encoding"]["y"]["field"] == "fraction"
    assert spec["facet"]["field"] == "layer"
    check_shared(spec)
    check_color(spec, METHODS)
    check_params(spec)
    data = data_of(spec)
    assert set(data["step"]) == {50}  # nearest measured step
    # each outline: HIST_BINS bins + the closing edge
    assert (data.groupby(["method", "layer"]).size() == HIST_BINS + 1).all()
    log = hist_at_step(df, "pre_norm", 47, log=True).to_dict()
    assert view_with(log, "line")["encoding"]["y"]["scale"]["type"] == "log"
    assert (data_of(log)["fraction"] >= 1e-4).all()


# ------------------------------------------------------------------------------ export
def test_to_image_png_and_svg(df):
    chart = metric_chart(df, "loss", "train", band="std")
    png = to_image(chart, "png")
    assert png.startswith(b"\x89PNG")
    svg = to_image(chart, "svg").decode("utf-8")
    assert svg.lstrip().startswith("<svg") and "</svg>" in svg
    with pytest.raises(ValueError, match="fmt"):
        to_image(chart, "pdf")


@pytest.mark.parametrize("build", [
    lambda d: metric_chart(d, "acc", "val", layout="side", band="minmax"),
    lambda d: layer_chart(d, "grad_norm", "param", layout="side", log=True, band="minmax"),
    lambda d: percentile_chart(d, "pre_norm"),
    lambda d: hist_heatmap(d, "pre_norm"),
    lambda d: hist_at_step(d, "pre_norm", 0, log=True),
])
def test_every_builder_compiles_to_svg(df, build):
    """vl-convert compiles the full Vega-Lite spec: a malformed spec fails here."""
    svg = to_image(build(df), "svg").decode("utf-8")
    assert "<svg" in svg and svg.count("<path") + svg.count("<rect") > 10


@pytest.mark.parametrize("build", [
    lambda d: metric_chart(d, "loss", "train", band="minmax", smoothing=0.5),
    lambda d: layer_chart(d, "grad_norm", "param", band="std"),
    lambda d: percentile_chart(d, "pre_norm"),
    lambda d: hist_heatmap(d, "pre_norm"),
    lambda d: hist_at_step(d, "pre_norm", 30),
])
def test_store_categoricals_give_the_same_data(df, build):
    """The store returns run/layer/site/metric as categoricals: same chart data."""
    cat = df.astype({c: "category" for c in ("run", "layer", "site", "metric")})
    plain, got = data_of(build(df).to_dict()), data_of(build(cat).to_dict())
    pd.testing.assert_frame_equal(got, plain)


def test_side_by_side_panels_draw_their_curves():
    """Each panel of the side-by-side layout draws its run's curve: the hover rows (one
    per step, carrying the panel's label) must not break the curve's path (they did, and
    side by side drew empty panels)."""
    import re

    import vl_convert as vlc

    from normlab.views.charts import metric_chart

    steps = np.arange(0, 40, 2)
    frame = pd.concat([pd.DataFrame({"run": m, "step": steps, "layer": "model", "site": "train",
                                     "metric": "grad_norm", "value": 0.2 + 0.01 * i + 0 * steps,
                                     "method": m, "seed": 0, "label": m})
                       for i, m in enumerate(["none", "batch", "layer"])], ignore_index=True)
    for layout in ("side", "overlay"):
        chart = metric_chart(frame, "grad_norm", "train", layout=layout, log=True)
        svg = vlc.vegalite_to_svg(chart.to_dict())
        drawn = re.findall(r'<g class="mark-line[^>]*><path[^>]*\bd="M[^"]*L', svg)
        assert len(drawn) == 3, layout  # one drawn path (two points or more) per run
