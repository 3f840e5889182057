"""One Vega-Lite spec per tab: a tab's charts stacked with one step axis, zoomed together.

Charts embedded one by one cannot share a selection (each is its own Vega view), so
:func:`compose` joins the specs of one tab's charts (each built by
:mod:`normlab.views.charts` / :mod:`normlab.views.layercharts`, as ``chart.to_dict()``)
into one ``vconcat`` whose x (step) scale is shared (``resolve.scale.x = 'shared'``) and
whose ``zoom`` param — an interval on x bound to the scales — is defined in every
sub-chart under one name. Vega-Lite keeps one state for a scale-bound selection across the
views that define it, so dragging or scrolling the steps of any chart of the tab moves
the steps of all of them, and a double-click resets them all (Vega-Lite's "bound scales
in multi-view displays"; the same mechanism as a ``repeat``'s zoomable matrix).

What else changes in the composition:

* ``pick_method`` (click a legend entry to highlight it) becomes one param too, so a pick
  highlights that method in every chart of the tab; the tab has one colour legend, at
  its top, over the union of the charts' methods (same palette colours);
* each chart's ``hover`` param is renamed ``hover_<i>``: a nearest-point tooltip of one
  chart must not light up points of another;
* the tab is drawn as SVG when each chart alone would have been (Streamlit switches a
  spec to a canvas above ~2,000 point-like marks, counted over the whole spec) and the
  tab has at most ``CANVAS_ROWS`` rows; else on a canvas;
* model-level charts drawn ``width='container'`` get a fixed width: two side by side
  (``halves``) share a row of ``width`` px, a lone one takes the row; faceted charts keep
  the width :func:`normlab.views.compareview.fit` gave them.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

ZOOM = "zoom"  # the scale-bound step interval of normlab.views.charts.zoom_steps
PICK = "pick_method"  # the legend pick of normlab.views.charts.legend_pick
HOVER = "hover"  # the nearest-point hover of normlab.views.charts.hover_pick
SHARED = (ZOOM, PICK)  # params the charts of a tab share
Y_AXIS = 70  # px a chart's y axis (labels and title) takes left of its plot
SPACING = 24  # px between two charts of a row, and between rows


def _rename(node, names: dict[str, str]):
    """``node`` with every param reference and view name in ``names`` renamed (in place)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("param", "name") and isinstance(value, str) and value in names:
                node[key] = names[value]
            elif key == "views" and isinstance(value, list):
                node[key] = [names.get(v, v) for v in value]
            else:
                _rename(value, names)
    elif isinstance(node, list):
        for item in node:
            _rename(item, names)
    return node


def _encodings(node, channel: str):
    """Every ``channel`` encoding (a dict) in ``node``'s units."""
    if isinstance(node, dict):
        enc = node.get("encoding")
        if isinstance(enc, dict) and isinstance(enc.get(channel), dict):
            yield enc[channel]
        for key, value in node.items():
            if key != "encoding":
                yield from _encodings(value, channel)
    elif isinstance(node, list):
        for item in node:
            yield from _encodings(item, channel)


def _view_names(node) -> set[str]:
    if isinstance(node, dict):
        own = {node["name"]} if isinstance(node.get("name"), str) and "mark" in node else set()
        return own.union(*(_view_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_view_names(v) for v in node))
    return set()


POINTY = {"point", "circle", "square", "rect", "bar", "tick", "rule", "text"}
SVG_ROWS = 2000  # Streamlit draws a spec on a canvas above this many rows of such marks
# ... and a tab is drawn on a canvas above this many rows in all (curves' points too):
#   the renderer Streamlit picked for a tab of per-layer grids when each datum had a hover
#   point; with one hover rule per step it would pick SVG, slower to draw that many paths
CANVAS_ROWS = 5000


def point_rows(spec: dict) -> int:
    """Rows drawn by point-like marks (one SVG element each) in a chart spec: what
    Streamlit weighs, summed over a whole spec, to pick a canvas over SVG."""
    sets = (spec.get("datasets") or {}).items()
    sizes = {k: len(v) for k, v in sets}
    # a curve chart's hover rules are drawn from its rows marked ``hover`` only
    hovers = {k: sum(1 for r in v if isinstance(r, dict) and r.get("hover") is True)
              for k, v in sets}

    def walk(node, rows: int, name=None) -> int:
        if not isinstance(node, dict):
            return 0
        if isinstance(node.get("data"), dict):
            name = node["data"].get("name")
            rows = sizes.get(name, 0)
        mark = node.get("mark")
        kind = mark.get("type") if isinstance(mark, dict) else mark
        if kind is not None:
            if {"filter": "datum.hover"} in node.get("transform", []):
                return hovers.get(name, 0) if kind in POINTY else 0
            return rows if kind in POINTY else 0
        children = [*node.get("layer", []), *node.get("hconcat", []), *node.get("vconcat", []),
                    *node.get("concat", []), node.get("spec")]
        return sum(walk(c, rows, name) for c in children)

    return walk(spec, 0)


ROWS = "normlab_rows"  # usermeta key of a packed spec: [rows, point-like rows]


def counts(spec: dict) -> tuple[int, int]:
    """(rows, rows of point-like marks) of a chart spec: counted from its datasets, or
    read from its ``usermeta`` when they were packed as bytes (:func:`pack`)."""
    meta = (spec.get("usermeta") or {}).get(ROWS)
    if meta is not None:
        return int(meta[0]), int(meta[1])
    return sum(len(v) for v in (spec.get("datasets") or {}).values()), point_rows(spec)


def pack(spec: dict, encode) -> dict:
    """``spec`` with each dataset replaced by ``encode(rows)`` (e.g. the Arrow bytes
    Streamlit sends, which it then passes on as they are) and its counts kept in
    ``usermeta`` for :func:`compose`; a new dict, ``spec`` untouched. Encoding a cached
    chart's rows once, not at every rerun that shows it, takes ~10 ms per 1,000 rows off
    each view toggle and live poll."""
    rows, points = counts(spec)
    return {**spec, "datasets": {k: encode(v) for k, v in (spec.get("datasets") or {}).items()},
            "usermeta": {**(spec.get("usermeta") or {}), ROWS: [rows, points]}}


def _one_legend(charts: list[dict]) -> None:
    """One colour legend for the tab: the union of the charts' domains (in order, with the
    palette colour each chart gives them), at the top, in rows (in place)."""
    from normlab.views.charts import legend

    colours = [e for e in _encodings(charts, "color") if e.get("type") == "nominal"]
    domain, rng = [], []
    for enc in colours:
        scale = enc.get("scale") or {}
        for name, colour in zip(scale.get("domain") or [], scale.get("range") or []):
            if name not in domain:
                domain.append(name)
                rng.append(colour)
    if not colours:
        return
    title = next((e["legend"].get("title") for e in colours if isinstance(e.get("legend"),
                                                                          dict)), None)
    shared = legend(title or "", domain or ["?"], below=True).to_dict()
    shared["orient"] = "top"
    for enc in colours:
        if domain:
            enc["scale"] = {"domain": domain, "range": rng}  # orders the legend too
            enc.pop("sort", None)
        if "legend" in enc and enc["legend"] is not None:
            enc["legend"] = shared
    for enc in _encodings(charts, "strokeDash"):
        if isinstance(enc.get("legend"), dict):
            enc["legend"] = {**enc["legend"], "orient": "top"}


def compose(specs: Sequence[dict], halves: Sequence[bool] | None = None,
            width: int = 800) -> dict:
    """The specs of one tab's charts as one spec: rows of one chart, or two side by side
    where ``halves`` says so (see :func:`normlab.views.compareview.chart_rows`), one shared
    x scale and one ``zoom`` param in every chart. ``width``: px of the tab's column."""
    from normlab.views.compareview import chart_rows

    if not specs:
        raise ValueError("compose needs at least one chart spec")
    halves = list(halves) if halves is not None else [False] * len(specs)
    if len(halves) != len(specs):
        raise ValueError(f"halves has {len(halves)} entries for {len(specs)} specs")
    config, datasets, params, charts = None, {}, {}, []
    sizes = [counts(s) for s in specs]
    for i, spec in enumerate(specs):
        spec = {k: v if k == "datasets" else copy.deepcopy(v) for k, v in spec.items()
                if k != "usermeta"}
        for key in ("$schema", "config", "datasets", "params"):
            value = spec.pop(key, None)
            if key == "config" and config is None:
                config = value
            elif key == "datasets" and value:
                datasets.update(value)  # names are hashes of the data: no clash
            elif key == "params" and value:
                spec["_params"] = value
        # unique across charts, still Altair's pattern (Streamlit renumbers view_<hex>[_n]
        #   names so a chart keeps its identity, and its zoom, when its data changes)
        names = {v: v.replace("view_", f"view_{i:x}a", 1) for v in _view_names(spec)
                 if v.startswith("view_")}
        names[HOVER] = f"{HOVER}_{i}"
        _rename(spec, names)
        for param in _rename(spec.pop("_params", []), names):
            if param["name"] in SHARED and param["name"] in params:
                params[param["name"]]["views"] += param.get("views", [])
            else:
                params[param["name"]] = param
        charts.append(spec)
    _one_legend(charts)
    rows = []
    for row in chart_rows(halves):
        room = (width - SPACING * (len(row) - 1)) // len(row) - Y_AXIS
        for i in row:
            if charts[i].get("width") == "container":
                charts[i]["width"] = int(max(120, room))
        rows.append(charts[row[0]] if len(row) == 1
                    else {"hconcat": [charts[i] for i in row], "spacing": SPACING})
    out = {"$schema": specs[0].get("$schema"), "vconcat": rows, "spacing": SPACING,
           "params": list(params.values())}
    drawn = sum(rows for rows, _ in sizes)
    if max(points for _, points in sizes) <= SVG_ROWS and drawn <= CANVAS_ROWS:
        # each chart alone would be SVG (Streamlit's rule): the tab stays SVG, as the
        #   charts were one by one, rather than a canvas for their sum
        out["usermeta"] = {"embedOptions": {"renderer": "svg"}}
    else:  # many rows (a tab of per-layer grids): a canvas paints them faster than SVG
        out["usermeta"] = {"embedOptions": {"renderer": "canvas"}}
    kinds = {e.get("type") for e in _encodings(charts, "color")}
    if len(kinds) > 1:  # e.g. methods beside a heatmap's fractions: a scale (legend) each
        out["resolve"] = {"scale": {"color": "independent"}}
    if config:
        out["config"] = config
    if datasets:
        out["datasets"] = datasets
    return out


def shared_zoom_views(spec: dict) -> list[str]:
    """The views a composed spec's ``zoom`` param is defined in (empty: none)."""
    return next((list(p.get("views", [])) for p in spec.get("params", [])
                 if p.get("name") == ZOOM and p.get("bind") == "scales"), [])
