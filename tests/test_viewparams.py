"""The live charts' log scale and smoothing, applied in the browser (normlab.views.viewparams).

The Vega-Lite transforms are run by Vega itself (vl-convert's engine): a text mark writes
each row's computed value into the SVG, which is read back and compared with the server's
definitions (pandas' EMA in ``frames.smooth``; a log scale's 1-2-5 ticks and its dropped
non-positive values).
"""
from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest
import vl_convert as vlc

from normlab.views import charts, linked, viewparams as vp
from normlab.views.compareview import stable_data
from normlab.views.frames import smooth
from normlab.views.layercharts import layer_chart


def _frame(values, method="batch", seed=0, layer="model", metric="loss", site="train",
           run=None):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame({"run": run or f"{method}-{seed}", "method": method, "label": method,
                         "seed": seed, "layer": layer, "step": np.arange(len(values)) * 5,
                         "value": values, "metric": metric, "site": site})


def _computed(spec: dict, field: str, *, log: bool, smooth_w: float,
              site: str = "post_act") -> dict:
    """{(curve, step): the value Vega computes for ``field``} for ``spec``'s rows (a
    ``client=True`` chart's dict, one panel per curve) with the options set as the
    server would."""
    return dict(_computed_rows(spec, field, log=log, smooth_w=smooth_w, site=site))


def _number(text: str) -> float:
    return float(text.replace("\u2212", "-"))  # d3-format writes a minus sign


def _computed_rows(spec: dict, field: str, *, log: bool, smooth_w: float,
                   site: str = "post_act") -> list:
    """[((curve, step), value)] of every drawn row (:func:`_computed`)."""
    spec = vp.set_view(copy.deepcopy(spec), log=log, smooth=smooth_w, site=site)
    probe = {"$schema": spec["$schema"], "params": spec["params"],
             "datasets": spec["datasets"], "data": spec["data"],
             "transform": spec["transform"] + [
                 {"filter": "datum.curve != null"},
                 {"calculate": f"datum.curve + '|' + datum.step + '|' + "
                               f"(datum.{field} == null ? 'null' : "
                               f"format(datum.{field}, '.15g'))", "as": "_out"}],
             "mark": "text", "encoding": {"text": {"field": "_out", "type": "nominal"}}}
    out = []
    for text in re.findall(r"<text[^>]*>([^<]*)</text>", vlc.vegalite_to_svg(probe)):
        curve, step, value = text.split("|")
        out.append(((curve, int(step)), None if value == "null" else _number(value)))
    return out


def _ticks(spec: dict, *, log: bool) -> list[list[float]]:
    """The numeric y tick labels of each panel of ``spec`` drawn with ``log`` (its rows
    named, as the live view names them)."""
    spec = stable_data(copy.deepcopy(spec), "rows") if vp.ROWS in str(spec) else spec
    svg = vlc.vegalite_to_svg(vp.set_view(copy.deepcopy(spec), log=log, smooth=0.0))
    axes = re.findall(r'aria-label="Y-axis[^"]*"(.*?)</g></g></g>', svg, flags=re.S)
    ticks = []
    for axis in axes:
        labels = [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", axis)]
        ticks.append([_number(t) for t in labels if re.fullmatch("[-\u22120-9.e]+", t)])
    return ticks


@pytest.mark.parametrize("weight,n", [(0.6, 60), (0.9, 120), (0.99, 200), (0.05, 300),
                                      (0.3, 400)])
def test_the_browser_smooths_as_the_server_does(weight, n):
    """Per curve, with a missing value inside: the transforms' EMA equals pandas' debiased
    EMA (frames.smooth) to float64 rounding; 0.05 and 0.3 over 300-400 points cross many
    restarts of the running sums (viewparams.restart_period)."""
    rng = np.random.default_rng(int(weight * 100) + n)
    a = np.exp(-np.arange(n) / 30) + 0.3 * rng.random(n)
    b = np.sin(np.arange(n) / 7) * 2 + rng.normal(size=n)  # negative values too
    a[7] = np.nan
    df = pd.concat([_frame(a, "batch"), _frame(b, "layer")], ignore_index=True)
    assert n > 2 * vp.restart_period(weight) or weight > 0.5
    spec = charts.metric_chart(df, "loss", "train", log=False, client=True,
                               max_points=10_000).to_dict()
    got = _computed(spec, "sv", log=False, smooth_w=weight)
    want = smooth(df[["run", "method", "label", "seed", "layer", "step", "value"]], weight)
    for row in want.itertuples():
        value = got[(row.method, row.step)]
        if np.isfinite(row.value):
            assert value == pytest.approx(row.value, rel=1e-10, abs=1e-12), row
        else:
            assert value is None
    unsmoothed = _computed(spec, "sv", log=False, smooth_w=0.0)
    assert all(unsmoothed[(r.method, r.step)] == pytest.approx(r.value) for r in
               df.itertuples() if np.isfinite(r.value))


def test_a_thinned_curve_is_smoothed_at_the_rate_of_its_recorded_points():
    """Rows thinned for display keep ``k``, their index among the series' values: a slow
    trend smoothed over the drawn rows is close to the full series' EMA at those steps
    (an EMA over the drawn rows alone, fewer points, lags far less: 50× the error)."""
    n, w = 3000, 0.99
    values = np.linspace(0, 1, n) ** 2
    df = _frame(values)
    spec = charts.metric_chart(df, "loss", "train", client=True, max_points=200).to_dict()
    got = _computed(spec, "sv", log=False, smooth_w=w)
    want = smooth(df, w).set_index("step")["value"]
    assert len(got) <= 200
    err = max(abs(v - want[step]) for (_, step), v in got.items())
    steps = sorted(step for _, step in got)  # an EMA over the drawn rows alone:
    naive = pd.Series(values[np.asarray(steps) // 5]).ewm(alpha=1 - w).mean().to_numpy()
    assert err < 0.05 * max(abs(naive - want[steps].to_numpy()))


def test_log_scale_in_the_browser_ticks_decades_and_drops_what_it_cannot_draw():
    """Log on: y ticks at 1, 2 and 5 per decade, values <= 0 not drawn (as log_safe on the
    server) and a band's low edge clipped to the smallest positive value; log off: evenly
    spaced ticks and every value drawn."""
    values = np.array([2.0, 1.0, 0.5, 0.0, 0.05, -1.0, 0.01, 0.02])
    df = pd.concat([_frame(values, seed=0), _frame(values * 1.5, seed=1)], ignore_index=True)
    chart = charts.metric_chart(df, "loss", "train", log=True, band="minmax", client=True)
    spec = chart.to_dict()
    [log_ticks], [linear_ticks] = _ticks(spec, log=True), _ticks(spec, log=False)
    assert set(log_ticks) <= set(vp.LOG_TICKS) and {0.02, 0.1, 1.0} <= set(log_ticks)
    steps = np.diff(linear_ticks)
    assert len(linear_ticks) >= 4 and np.allclose(steps, steps[0])
    mean = (values + values * 1.5) / 2
    drawn = _computed(spec, "sv", log=True, smooth_w=0.0)
    assert [drawn[("batch", 5 * i)] for i in range(len(values))] == [
        pytest.approx(v) if v > 0 else None for v in mean]
    linear = _computed(spec, "sv", log=False, smooth_w=0.0)
    assert [linear[("batch", 5 * i)] for i in range(len(values))] == pytest.approx(list(mean))
    low = _computed(spec, "slo", log=True, smooth_w=0.0)
    floor = mean[mean > 0].min()
    lows = np.minimum(values, values * 1.5)
    assert [low[("batch", 5 * i)] for i in range(len(values))] == pytest.approx(
        list(np.maximum(lows, floor)))


def test_a_log_axis_over_less_than_a_factor_five_is_ticked_evenly():
    """A loss between 2.2 and 2.4 has no 1-2-5 tick inside: its log axis gets evenly
    spaced ticks (read from the rows' span: viewparams.y_axis), not none."""
    spec = charts.metric_chart(_frame(np.linspace(2.4, 2.2, 30)), "loss", "train", log=True,
                               client=True).to_dict()
    [ticks] = _ticks(spec, log=True)
    assert len(ticks) >= 3 and min(ticks) >= 2.1 and max(ticks) <= 2.5
    assert np.allclose(np.diff(ticks), np.diff(ticks)[0])


def test_a_chart_that_does_not_follow_the_log_scale_stays_linear():
    spec = charts.metric_chart(_frame([0.1, 0.5, 0.9, 0.7], metric="acc"), "acc", "train",
                               log=False, client=True).to_dict()
    for log in (True, False):
        [ticks] = _ticks(spec, log=log)
        assert np.allclose(np.diff(ticks), np.diff(ticks)[0])
    assert "symlog" not in str(spec)


def test_facets_and_per_layer_grids_compile_with_the_params():
    """Side by side (a facet) and per-layer grids carry the transforms and the params at
    their top (the browser runs the transforms once, not once per panel); both draw, and
    their log axes tick at 1-2-5."""
    df = pd.concat([_frame(np.geomspace(2, 0.01, 30), "batch"),
                    _frame(np.geomspace(3, 0.1, 30), "layer")], ignore_index=True)
    side = charts.metric_chart(df, "loss", "train", layout="side", log=True,
                               client=True).to_dict()
    grads = pd.concat([df.assign(layer=layer, metric="grad_norm", site="param")
                       for layer in ("hidden1", "hidden2")], ignore_index=True)
    grid = layer_chart(grads, "grad_norm", "param", log=True, client=True).to_dict()
    for spec in (side, grid):
        assert vp.follows(spec) and "transform" in spec and "transform" not in spec["spec"]
        ticks = _ticks(spec, log=True)
        assert ticks and all(set(t) <= set(vp.LOG_TICKS) for t in ticks)
        rows = next(iter(spec["datasets"].values()))
        smoothed = _computed_rows(spec, "sv", log=True, smooth_w=0.5)
        assert len(smoothed) == sum(1 for r in rows if not r.get("hover"))
        assert all(v is not None and v > 0 for _, v in smoothed)


def test_the_browser_draws_the_picked_activation_site_and_names_it():
    """A per-layer chart built for every site (viewparams.ANY_SITE) holds the rows of the
    three activation sites; Vega keeps those of the site the params pick (its values, per
    layer), and the title names it in words."""
    parts = []
    for i, site in enumerate(("pre_norm", "post_norm", "post_act")):
        for layer in ("hidden1", "hidden2"):
            values = np.linspace(1, 2, 10) * (i + 1) * (2 if layer == "hidden2" else 1)
            parts.append(_frame(values, layer=layer, metric="var", site=site))
    df = pd.concat(parts, ignore_index=True)
    spec = layer_chart(df, "var", vp.ANY_SITE, log=True, client=True,
                       title=vp.site_title("Variance")).to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert {r.get("site") for r in rows} == {"pre_norm", "post_norm", "post_act"}
    for i, site in enumerate(("pre_norm", "post_norm", "post_act")):
        drawn = _computed_rows(spec, "sv", log=False, smooth_w=0.0, site=site)
        assert len(drawn) == 20  # 10 steps × 2 layers, one site
        assert sorted(v for _, v in drawn) == pytest.approx(sorted(
            df.loc[(df["site"] == site), "value"]))
        svg = vlc.vegalite_to_svg(vp.set_view(copy.deepcopy(spec), log=False, smooth=0.0,
                                              site=site))
        assert f"Variance, {vp.SITE_WORDS[site]}" in svg


def test_a_tab_has_one_copy_of_each_option_and_the_server_sets_its_fallback():
    """Composed charts share the four params; set_view writes the server's options as
    the values drawn when the page gives none, bound to the page's hidden elements."""
    df = _frame(np.geomspace(2, 0.01, 30))
    specs = [charts.metric_chart(df, "loss", site, log=True, client=True).to_dict()
             for site in ("train", "train")]
    tab = linked.compose(specs, [True, True], 900)
    names = [p["name"] for p in tab["params"]]
    for name in (vp.LOG, vp.SMOOTH, f"{vp.LOG}_in", f"{vp.SMOOTH}_in"):
        assert names.count(name) == 1
    bound = {p["name"]: p["bind"]["element"] for p in tab["params"] if "bind" in p
             and isinstance(p["bind"], dict)}
    assert bound == {f"{vp.LOG}_in": "#nl-view-log", f"{vp.SMOOTH}_in": "#nl-view-smooth",
                     f"{vp.SITE}_in": "#nl-view-site"}
    vp.set_view(tab, log=True, smooth=0.75)
    exprs = {p["name"]: p["expr"] for p in tab["params"] if "expr" in p}
    assert exprs[vp.LOG].endswith(": true") and exprs[vp.SMOOTH].endswith(": 0.75")
    assert _ticks(tab, log=True)[0] != _ticks(tab, log=False)[0]


def test_the_site_is_picked_in_the_browser_only_for_overlaid_charts():
    """Overlaid, the live Activations charts read every site and the browser picks one;
    side by side (a panel per method and layer) the server reads and draws the site shown,
    and the report's charts (not live) always do."""
    from normlab.views import compareview as views
    from normlab.views.urlstate import View

    overlay, side = View(site="post_norm"), View(site="post_norm", layout="side")
    assert views.browser_site(overlay, True) and not views.browser_site(side, True)
    assert not views.browser_site(overlay, False)
    assert set(views.group_request("Activations", overlay, client=True)[1]) >= {
        "pre_norm", "post_norm", "post_act"}
    assert "pre_norm" not in views.group_request("Activations", side, client=True)[1]
    spec = views.CHART_SPECS["act_mean"]
    assert views.relevant_view(spec, overlay, 1, client=True).site == "post_act"  # any
    assert views.relevant_view(spec, side, 1, client=True).site == "post_norm"


def test_a_slot_binds_its_own_elements():
    """Each page slot (a chart tab in one layout) reads the options from its own hidden
    elements, so the bridge can leave a hidden slot's charts alone."""
    df = _frame(np.geomspace(2, 0.01, 30))
    tab = linked.compose([charts.metric_chart(df, "loss", "train", log=True,
                                              client=True).to_dict()], [False], 900)
    vp.bind_slot(tab, "side-gradients")
    bound = {p["name"]: p["bind"]["element"] for p in tab["params"]
             if isinstance(p.get("bind"), dict)}
    assert bound == {f"{name}_in": f"#{vp.ELEMENTS[name]}--side-gradients"
                     for name in (vp.LOG, vp.SMOOTH, vp.SITE)}
    assert vp.slot_id(vp.LOG, "side-gradients") == "nl-view-log--side-gradients"
