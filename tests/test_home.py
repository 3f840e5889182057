"""Home's formula chart (``normlab.views.home``): what it shows is the quick start's net.

* the numpy net narrows its units' spread layer by layer as the real quick-start net
  (torch, the digits, ``norm="none"``) does at its initialisation, each layer's median
  per-unit standard deviation within a factor 1.5 of the real one;
* the figures the page quotes: the third layer's unit barely varies, so the sigmoid's
  outputs span a few hundredths; normalized, the same values span most of (0, 1);
* the spec is valid Vega-Lite (it is built without validation) and every mark is named
  with ``MARK_PREFIX``, which the browser test's first-curve selector skips.
"""
from __future__ import annotations

from dataclasses import replace

import altair as alt
import numpy as np
import torch

from normlab.views import home
from normlab.views.compareview import QUICK_START


def _real_spreads() -> list[float]:
    from normlab.training.trainer import Trainer

    trainer = Trainer(replace(QUICK_START, norm="none"))
    pre = {}
    for name, module in trainer.model.named_modules():
        if name.endswith(".layer"):
            module.register_forward_hook(
                lambda m, i, out, name=name: pre.__setitem__(name, out.detach()))
    with torch.no_grad():
        trainer.model(trainer.x_train[:home.EXAMPLES])
    return [float(pre[f"hidden{k}.layer"].std(0).median()) for k in range(1, home.DEPTH + 1)]


def test_the_numpy_net_narrows_like_the_quick_start_net():
    assert (QUICK_START.depth, QUICK_START.width, QUICK_START.activation) == (
        home.DEPTH, home.WIDTH, "sigmoid")
    layers, _ = home.layer_spreads()
    ours = [float(np.median(x.std(0))) for x in layers]
    real = _real_spreads()
    assert real[0] > 5 * real[1] > 25 * real[2]  # the real net narrows
    for mine, theirs in zip(ours, real):
        assert 1 / 1.5 < mine / theirs < 1.5, (ours, real)


def test_the_quoted_figures():
    spec, figures = home.formula_chart()
    x, xhat = home.unit_values()
    assert figures["sd_raw"] == x.std() < 0.05
    assert 0.9 < figures["sd_normalized"] <= 1.0  # eps keeps it just under 1
    low, high = figures["f_raw"]
    assert 0 < high - low < 0.05
    low, high = figures["f_normalized"]
    assert high - low > 0.6
    assert abs(xhat.mean()) < 1e-9


def test_the_spec_is_valid_vega_lite_with_named_marks():
    spec, _ = home.formula_chart()
    alt.HConcatChart.from_dict(spec, validate=True)  # raises on a schema error
    layers = [layer for panel in spec["hconcat"] for layer in panel["layer"]]
    assert {layer["mark"]["type"] for layer in layers} == {"line", "circle"}
    assert all(layer["name"].startswith(home.MARK_PREFIX) for layer in layers)
    assert len({layer["name"] for layer in layers}) == len(layers)
