"""The log scale, smoothing and activation site of a live chart, applied in the browser.

A view toggle that reruns the page waits for the live poll in progress and for the server
to send the tab again; while runs train on a 2-core machine that took 0.5–1.3 s. A Compare
chart built with ``client=True`` (:mod:`normlab.views.clientcurves`) instead draws its
rows unsmoothed and unmasked and leaves three options to Vega-Lite params:

* :data:`LOG` — a y scale that is logarithmic or linear by an expression: a ``symlog``
  scale whose constant is tiny (``log1p(x/c)`` is then ``log(x) − log(c)``: a log scale up
  to a shift) or huge (``log1p(x/c)`` is then ``x/c``: a linear one). A log axis is ticked
  at 1, 2 and 5 per decade (:data:`LOG_TICKS`) when its values span a factor 5 or more
  (read from the chart's own rows: :func:`name_rows`); values ≤ 0 are not drawn on it, and a
  seed band's low edge is clipped up to the panel's smallest positive value (as
  :func:`normlab.views.charts.log_safe` does on the server).
* :data:`SMOOTH` — TensorBoard's debiased EMA, per curve, by window transforms: with
  weight w, the value at a curve's k-th finite point is Σⱼ w^(k−j) xⱼ / Σⱼ w^(k−j) (what
  pandas' ``ewm(alpha=1-w, adjust=True, ignore_na=True)`` computes, and
  :func:`normlab.views.frames.smooth`). A running sum of w^(−j)·xⱼ would overflow for a
  small w, so the sums restart every ``B`` points, and each point reads the one of two
  staggered restarts that began at least B/2 points before it (the terms left out weigh
  under 10⁻¹⁷ of the rest). ``k`` counts a series' finite points before the rows were
  thinned for display, so a thinned curve is smoothed at the same rate.
* :data:`SITE` — the activation site: a chart built for :data:`ANY_SITE` holds the rows
  of every site and keeps those of the picked one; its title names it
  (:func:`site_title`).

Each option is two params: ``<name>_in``, bound to a hidden element of the page (the
Streamlit widget's state, mirrored there by :mod:`normlab.ui.viewbridge`, which gives the
server's value when a widget cannot be read: a toggle redraws the chart at once, without
the server), and ``<name>``, that value or, when there is none (a spec drawn outside the
page, e.g. by ``vl-convert`` in the tests), the fallback written into the spec
(:func:`set_view`). The page's specs keep the default fallbacks, so they do not change
with the options: a kept chart (:mod:`normlab.views.keptslots`) is never drawn anew for
one. Each slot of the page binds its own elements (:func:`bind_slot`).
"""
from __future__ import annotations

import json
import math

from normlab.measure.schema import ACT_SITES

LOG, SMOOTH, SITE = "nl_log", "nl_smooth", "nl_site"  # the params the charts read
ANY_SITE = "*"  # a builder's site when the browser picks it (rows of every ACT_SITES site)
TICKS = "nl_log_ticks"  # a param holding LOG_TICKS (one copy per tab, not one per axis)
RESTART = "nl_restart"  # a param: the smoothing's running sums restart every this many points
ROWS = "__normlab_rows__"  # a chart's dataset in its expressions until named (name_rows)
SPAN = 5  # a log axis is ticked at 1-2-5 when its values span this factor, else evenly
ELEMENTS = {LOG: "nl-view-log", SMOOTH: "nl-view-smooth",  # ids of the page's hidden
            SITE: "nl-view-site"}  # inputs
# a log axis's ticks: 1, 2 and 5 per decade (Vega keeps those inside the scale's range)
LOG_TICKS = [float(f"{m}e{e}") for e in range(-15, 16) for m in (1, 2, 5)]
LOG_CONSTANT, LINEAR_CONSTANT = 1e-30, 1e30  # the symlog constant making it log / linear
DIGITS = 17  # the smoothing's sums leave out terms under 10^-DIGITS of the rest


def params(log: bool = False, smooth: float = 0.0, site: str = "post_act") -> list[dict]:
    """The params of a chart that follows the options; ``log``, ``smooth`` and ``site``:
    the values drawn when the page gives none (the server's view)."""
    return [
        {"name": f"{SITE}_in", "value": "", "bind": {"element": f"#{ELEMENTS[SITE]}"}},
        {"name": SITE, "expr": _site_expr(site)},
        {"name": TICKS, "value": LOG_TICKS},
        {"name": f"{LOG}_in", "value": "", "bind": {"element": f"#{ELEMENTS[LOG]}"}},
        {"name": LOG, "expr": _log_expr(log)},
        {"name": f"{SMOOTH}_in", "value": "", "bind": {"element": f"#{ELEMENTS[SMOOTH]}"}},
        {"name": SMOOTH, "expr": _smooth_expr(smooth)},
        {"name": RESTART, "expr": f"{SMOOTH} > 0 ? 2 * ceil({DIGITS} * LN10 / -log({SMOOTH})) "
                                  ": 1"},
    ]


def _log_expr(log: bool) -> str:
    return f"{LOG}_in === 'on' ? true : {LOG}_in === 'off' ? false : {str(bool(log)).lower()}"


def _site_expr(site: str) -> str:
    return (f"indexof({list(ACT_SITES)}, {SITE}_in) >= 0 ? {SITE}_in "
            f": {json.dumps(str(site))}")


SITE_WORDS = {"pre_norm": "before the norm", "post_norm": "after the norm",
              "post_act": "after the activation"}


def site_title(title: str) -> dict:
    """A chart title naming the site :data:`SITE` picks, e.g. 'Activation mean per layer,
    after the norm' (Vega-Lite writes it: a site change draws no new spec)."""
    return {"text": {"expr": f"{json.dumps(title + ', ')} + {json.dumps(SITE_WORDS)}[{SITE}]"}}


def _smooth_expr(smooth: float) -> str:
    # a number in [0, 0.99] from the page, else the server's
    v = f"toNumber({SMOOTH}_in)"
    return (f"{SMOOTH}_in !== '' && isFinite({v}) && {v} >= 0 && {v} < 1 ? {v} "
            f": {float(smooth)!r}")


def set_view(spec: dict, *, log: bool, smooth: float, site: str = "post_act") -> dict:
    """``spec`` (a composed tab, :func:`normlab.views.linked.compose`) with the server's
    log scale, smoothing and activation site as the params' fallback values; in place,
    returned."""
    for param in spec.get("params") or []:
        if param.get("name") == SITE:
            param["expr"] = _site_expr(site)
        if param.get("name") == LOG:
            param["expr"] = _log_expr(log)
        elif param.get("name") == SMOOTH:
            param["expr"] = _smooth_expr(smooth)
    return spec


def slot_id(name: str, slot: str) -> str:
    """The id of option ``name``'s hidden element for the charts of page slot ``slot``."""
    return f"{ELEMENTS[name]}--{slot}"


def bind_slot(spec: dict, slot: str) -> dict:
    """``spec`` (a composed tab) bound to the hidden elements of page slot ``slot``
    (:func:`slot_id`), in place, returned: the page keeps each tab's charts in both layouts
    (:mod:`normlab.views.keptslots`), and an option changed while a slot is hidden reaches
    its charts only when it is shown (:mod:`normlab.ui.viewbridge`), so hidden charts do
    not redraw at each toggle."""
    by_id = {f"#{element}": name for name, element in ELEMENTS.items()}
    for param in spec.get("params") or []:
        bind = param.get("bind")
        if isinstance(bind, dict) and bind.get("element") in by_id:
            bind["element"] = f"#{slot_id(by_id[bind['element']], slot)}"
    return spec


def follows(spec: dict) -> bool:
    """Whether ``spec`` has the options' params."""
    return any(p.get("name") == LOG for p in spec.get("params") or [])


def y_scale(loggable: bool) -> dict:
    """A y scale that follows :data:`LOG` (``loggable``), else a linear one."""
    if not loggable:
        return {"zero": False}
    return {"type": "symlog", "zero": False, "nice": {"expr": f"!{LOG}"},
            "constant": {"expr": f"{LOG} ? {LOG_CONSTANT} : {LINEAR_CONSTANT}"}}


def y_axis(loggable: bool) -> dict:
    """Its axis: on a log scale, ticks at 1, 2 and 5 per decade when the chart's values
    span a factor :data:`SPAN` or more (read from its rows' ``floor`` and ``top``), else
    evenly spaced ones (a loss between 2.2 and 2.4 has no 1-2-5 tick); Vega's own on a
    linear scale."""
    if not loggable:
        return {}
    rows = f"data('{ROWS}')"
    wide = f"length({rows}) > 0 && {rows}[0].top >= {SPAN} * {rows}[0].floor"
    return {"values": {"expr": f"{LOG} && {wide} ? {TICKS} : null"},
            "labelExpr": f"{LOG} ? format(datum.value, '~g') : datum.label"}


def name_rows(spec: dict, name: str) -> dict:
    """``spec`` with its expressions' :data:`ROWS` naming its dataset ``name``, in place."""
    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and ROWS in value:
                    node[key] = value.replace(ROWS, name)
                else:
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)
    visit(spec)
    return spec


def transforms(fields: dict[str, str], groupby: list[str], loggable: bool,
               floor: tuple[str, ...] = (), any_site: bool = False) -> list[dict]:
    """Vega-Lite transforms writing, per source field → output field of ``fields``, the
    value drawn: smoothed by :data:`SMOOTH` (per ``groupby`` series, in order of the rows'
    ``k``) and, when ``loggable`` and :data:`LOG`, null where ≤ 0 — except the ``floor``
    fields (a band's low edge), clipped up to the rows' ``floor`` instead (the smallest
    positive value of the chart, written by the server: a ``joinaggregate`` of the whole
    chart fails to compile inside a facet). Non-finite values stay null. ``any_site``: the
    rows are of every activation site, and those of :data:`SITE` are kept first.

    The browser interprets each ``calculate`` per row (Streamlit's Vega runs without
    ``eval``), so they are few: the restart period is a param, the smoothing's weights are
    shared by the fields (a band's edges are finite where its mean is), the log mask is
    part of each output, and without smoothing every weight short-circuits to 0."""
    r, w = RESTART, SMOOTH
    ok = "isValid(datum.value) && isFinite(datum.value)"
    out: list[dict] = [{"filter": f"datum.site === {SITE}"}] if any_site else []
    out += [  # the two staggered restarts a row is in, and its weight w^-(place in them)
        {"calculate": f"{w} > 0 ? floor(datum.k / {r}) : 0", "as": "_sa"},
        {"calculate": f"{w} > 0 ? floor((datum.k + {r} / 2) / {r}) : 0", "as": "_sb"},
        {"calculate": f"{w} > 0 && {ok} ? pow({w}, -(datum.k % {r})) : 0", "as": "_wa"},
        {"calculate": f"{w} > 0 && {ok} ? pow({w}, -((datum.k + {r} / 2) % {r})) : 0",
         "as": "_wb"},
    ]
    for seg in ("a", "b"):
        sums = [{"op": "sum", "field": f"_w{seg}", "as": f"_V{seg}"}]
        for src in fields:
            out.append({"calculate": f"datum._w{seg} > 0 ? datum._w{seg} * datum.{src} : 0",
                        "as": f"_x{seg}_{src}"})
            sums.append({"op": "sum", "field": f"_x{seg}_{src}", "as": f"_X{seg}_{src}"})
        out.append({"window": sums, "groupby": [*groupby, f"_s{seg}"],
                    "sort": [{"field": "k"}], "frame": [None, 0]})
    # the restart that began at least B/2 points back (or at the series' start)
    use_a = f"(datum._sa == 0 || datum.k % {r} >= {r} / 2)"
    for src, dst in fields.items():
        valid = f"isValid(datum.{src}) && isFinite(datum.{src})"
        value = (f"({w} > 0 ? ({use_a} ? datum._Xa_{src} / datum._Va "
                 f": datum._Xb_{src} / datum._Vb) : datum.{src})")
        if not loggable:
            drawn = value
        elif dst in floor:
            drawn = f"({LOG} ? max({value}, datum.floor) : {value})"
        else:
            drawn = f"({LOG} && !({value} > 0) ? null : {value})"
        out.append({"calculate": f"!({valid}) ? null : {drawn}", "as": dst})
    return out


def restart_period(weight: float) -> int:
    """B for ``weight`` (for tests and docs): the sums' restart period, in points."""
    return 2 * math.ceil(DIGITS * math.log(10) / -math.log(weight)) if weight > 0 else 1
