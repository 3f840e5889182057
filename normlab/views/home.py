"""Home's chart: the framework's formula at work on the quick start's net.

Why the quick start's sigmoid MLP barely learns without normalization: at torch's default
initialisation each layer narrows the spread of its units' pre-activations over the
examples (about 0.5, 0.07, 0.01 in hidden layers 1–3 on the digits), so a unit of the third
layer gives every example nearly the same output — the layers above see almost no
difference between inputs. ``(x − μ)/σ`` with μ, σ over the batch spreads the same values
back over the sigmoid's responsive range.

:func:`unit_values` computes one such unit in numpy (no torch in the dashboard process):
the quick start's 3×100 sigmoid MLP with torch's default ``nn.Linear`` initialisation
(weights and biases uniform in ±1/√fan_in), on standard-normal inputs standing in for
the standardized digits; ``tests/test_home.py`` checks its spreads against the real net
(torch, digits). :func:`formula_chart` draws it as a Vega-Lite spec built as a dict: the
first chart a session draws loads the browser's Vega code, so Home drawing one means the
quick start's charts draw without that wait.
"""
from __future__ import annotations

import numpy as np

INPUTS, WIDTH, DEPTH = 64, 100, 3  # the quick start's net: digits' 64 pixels, 3×100
EXAMPLES = 256  # the batch μ and σ are computed over
RAW, NORMALIZED = "x (no normalization)", "(x − μ) / σ"
# names of the chart's marks (Vega writes them into each mark's SVG class): the browser
# test and benchmark find the quick start's first curve with a selector that skips them,
# since Home's elements stay in the page for a moment after the click
MARK_PREFIX = "home_"
COLORS = {RAW: "#777777", NORMALIZED: "#332288"}  # the palette's none and batch


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def layer_spreads(seed: int = 0, examples: int = EXAMPLES) -> tuple[list[np.ndarray], np.ndarray]:
    """The pre-activations of each hidden layer (examples × units) of the quick start's
    net at torch's default init, without normalization, on standard-normal inputs."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((examples, INPUTS))
    layers = []
    fan_in = INPUTS
    for _ in range(DEPTH):
        bound = 1.0 / np.sqrt(fan_in)  # nn.Linear's default (kaiming_uniform, a=√5)
        w = rng.uniform(-bound, bound, (fan_in, WIDTH))
        b = rng.uniform(-bound, bound, WIDTH)
        x = h @ w + b
        layers.append(x)
        h, fan_in = _sigmoid(x), WIDTH
    return layers, h


def unit_values(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, (x − μ)/σ): one third-layer unit's pre-activations over the batch, as they are
    and normalized with the batch's μ and σ (g = 1, b = 0: a norm layer at init)."""
    layers, _ = layer_spreads(seed)
    x = layers[-1][:, 0]
    return x, (x - x.mean()) / np.sqrt(x.var() + 1e-5)


def formula_chart(width: int = 300, height: int = 170) -> tuple[dict, dict]:
    """The Vega-Lite spec (a dict, built without schema validation: it is fixed, and a
    test validates it) and its figures: each set's spread and the range of f's outputs.

    Two panels, the same unit's values through the sigmoid: as they are, and normalized."""
    x, xhat = unit_values()
    grid = [{"x": float(v), "f": float(_sigmoid(v))} for v in np.linspace(-4, 4, 81)]
    figures = {"sd_raw": float(x.std()), "sd_normalized": float(xhat.std()),
               "f_raw": (float(_sigmoid(x).min()), float(_sigmoid(x).max())),
               "f_normalized": (float(_sigmoid(xhat).min()), float(_sigmoid(xhat).max()))}
    x_axis = {"field": "x", "type": "quantitative", "title": "pre-activation",
              "scale": {"domain": [-4, 4], "clamp": True}}
    y_axis = {"field": "f", "type": "quantitative", "title": "output f (sigmoid)",
              "scale": {"domain": [0, 1]}}

    def panel(name: str, tag: str, values: np.ndarray, sd: float,
              outputs: tuple[float, float]) -> dict:
        rows = [{"x": float(v), "f": float(_sigmoid(v))} for v in values]
        return {
            "width": width, "height": height,
            "title": {"text": name, "subtitle": f"sd {sd:.3f} · outputs {outputs[0]:.2f}–"
                      f"{outputs[1]:.2f}", "fontSize": 14, "subtitleFontSize": 12,
                      "anchor": "start"},
            "layer": [
                {"name": f"{MARK_PREFIX}sigmoid_{tag}", "data": {"values": grid},
                 "mark": {"type": "line", "color": "#bbbbbb", "strokeWidth": 2},
                 "encoding": {"x": x_axis, "y": y_axis}},
                {"name": f"{MARK_PREFIX}values_{tag}", "data": {"values": rows},
                 "mark": {"type": "circle", "size": 40, "opacity": 0.5,
                          "color": COLORS[name]},
                 "encoding": {"x": x_axis, "y": y_axis, "tooltip": [
                     {"field": "x", "format": ".3f", "title": "pre-activation"},
                     {"field": "f", "format": ".3f", "title": "output f"}]}},
            ],
        }

    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "title": {"text": f"One unit of hidden layer 3 at init, over a batch of {EXAMPLES} "
                          "examples", "fontSize": 15, "anchor": "start"},
        "hconcat": [panel(RAW, "raw", x, figures["sd_raw"], figures["f_raw"]),
                    panel(NORMALIZED, "normalized", xhat, figures["sd_normalized"],
                          figures["f_normalized"])],
        "spacing": 40,
        "config": {"axis": {"labelFontSize": 12, "titleFontSize": 13, "grid": True},
                   "view": {"stroke": "#bbbbbb"}},
    }
    return spec, figures
