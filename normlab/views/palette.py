"""One colour per normalization method, shared by every chart.

The nine chromatic colours are Paul Tol's colour-blind-safe *muted* qualitative scheme
(P. Tol, "Colour Schemes", SRON/EPS/TN/09-002, https://personal.sron.nl/~pault/ ,
"Figure 4: muted"); the baseline ``none`` gets a mid grey (Tol's scheme reserves pale grey
#DDDDDD for "bad data", too light on a projector, so a darker neutral #777777 is used).
The darkest colour (indigo) goes to BatchNorm, the usual reference; related methods get
well-separated hues (batch / batch_renorm, layer / rms).

The keys are the names of :data:`normlab.methods.registry.NORM_NAMES`, in the same canonical order
(a test checks this; the registry itself is not imported so that charts stay free of torch).

:func:`color_scale` restricts the domain to the methods present, keeping the canonical order
and each method's fixed colour, so a method looks the same on every chart whatever subset is
shown. Names outside the palette get a fallback colour chosen by a stable hash of the name
(from Tol's *bright* scheme), so an unknown label is at least consistent across charts.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable

import altair as alt

METHOD_COLORS: dict[str, str] = {
    "none": "#777777",  # grey: the baseline
    "batch": "#332288",  # indigo
    "layer": "#CC6677",  # rose
    "instance": "#DDCC77",  # sand
    "group": "#117733",  # green
    "rms": "#88CCEE",  # cyan
    "batch_renorm": "#882255",  # wine
    "weight": "#44AA99",  # teal
    "cosine": "#999933",  # olive
    "whiten": "#AA4499",  # purple
}
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_COLORS)

# Tol 'bright' (without its grey): for names not in the palette.
FALLBACK_COLORS: tuple[str, ...] = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE",
                                    "#AA3377")


def method_color(name: str) -> str:
    """The colour of ``name``: its palette colour, else a stable fallback."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return FALLBACK_COLORS[zlib.crc32(str(name).encode()) % len(FALLBACK_COLORS)]


def method_order(methods: Iterable[str] | None = None) -> list[str]:
    """``methods`` (default: all) de-duplicated, in canonical order; unknown names last, sorted."""
    if methods is None:
        return list(METHOD_ORDER)
    present = {str(m) for m in methods}
    known = [m for m in METHOD_ORDER if m in present]
    return known + sorted(present - set(METHOD_ORDER))


def color_scale(methods: Iterable[str] | None = None) -> alt.Scale:
    """An ``alt.Scale`` for a ``method:N`` colour channel over ``methods`` (default: all)."""
    domain = method_order(methods)
    return alt.Scale(domain=domain, range=[method_color(m) for m in domain])


# Labels of one method (e.g. "batch · lr 0.1", "batch · lr 0.01"): Tol's bright scheme, then
# his muted one, in the labels' order (a label's colour depends on what else is drawn).
LABEL_COLORS: tuple[str, ...] = FALLBACK_COLORS + tuple(
    c for c in METHOD_COLORS.values() if c not in FALLBACK_COLORS and c != "#777777")


def label_scale(labels: Iterable[str]) -> alt.Scale:
    """An ``alt.Scale`` for a ``label:N`` colour channel: distinct colours in ``labels``' order
    (cycling after len(LABEL_COLORS) labels)."""
    domain = list(dict.fromkeys(str(x) for x in labels))
    return alt.Scale(domain=domain,
                     range=[LABEL_COLORS[i % len(LABEL_COLORS)] for i in range(len(domain))])
