"""A report that travels: one self-contained HTML file of a comparison, opened offline.

:func:`build` writes what a page shows as one HTML document that needs no server and no
network — the setup (what differs between the runs, what they share), each method's row
of :func:`normlab.views.compareview.methods_table`, the page's charts as interactive
Vega-Lite (tooltips, legend highlighting, zoom and pan on the step axis) with their data
inlined, a lab's claim and readouts, the NormLab version and the command that writes the
same report again. Vega, Vega-Lite and vega-embed are inlined from vl-convert's bundle
(:func:`vl_convert.javascript_bundle`, about 0.9 MB), so the file opens on an air-gapped
laptop.

The charts are the page's own: Compare's :data:`~normlab.views.compareview.CHART_GROUPS`
through :func:`~normlab.views.compareview.build_chart`, Layer dynamics' percentile chart,
histogram heatmap and histograms at the last step (:mod:`normlab.views.layercharts`).
The builders already thin each series to what the eye can see; each chart states how
many measured values it draws (the downsampling factor). A lab's report (``page="lab"``,
the default for a comparison a lab's preset launched: :func:`page_for`) holds the lab's
claim, its page's sections (:mod:`normlab.views.labs.sections`: the lab's own charts and
tables at the page's default choices) and the readouts the lab computes from the runs,
listed under the claim and written under their charts.

The comparison's JSON export (:func:`normlab.runs.exchange.json_doc`) is embedded too
(:mod:`normlab.runs.embedded`), so ``normlab import report.html`` brings the runs into
another store, checked like every import.
"""
from __future__ import annotations

import copy
import functools
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import pandas as pd

from normlab.runs import exchange
from normlab.runs.embedded import json_text, script_block
from normlab.runs.store import Store
from normlab.views import compareview as views
from normlab.views import layercharts, layerview
from normlab.views.labs import sections as labsections
from normlab.views.labs.sections import lab_of
from normlab.views.urlstate import VIEW_DEFAULTS, View

PAGES = ("compare", "layers", "lab")  # the pages a report can reproduce
WIDTH = 1000  # px the charts are sized for
HIDDEN = ("seed",)  # config fields not listed as "differs" (the label shows them)


@dataclass(frozen=True)
class Figure:
    """One chart of a report, with how much of the measured data it draws."""

    title: str
    spec: dict  # the chart's Vega-Lite spec, data inlined
    measured: int  # measured values behind the chart
    drawn: int  # rows of the largest dataset inlined in the spec
    lab: bool = False  # a lab's chart: its frame is drawn as it is, nothing thinned

    def note(self) -> str:
        if not self.drawn:
            return ""
        if self.lab:
            return (f"The lab page's chart with every row it draws ({self.drawn:,}; values "
                    f"rounded to {DIGITS} significant digits); the exact measured series are "
                    "in the embedded export.")
        factor = self.measured / self.drawn
        if factor <= 1.05:
            return (f"Every measured point drawn ({self.measured:,}), rounded to {DIGITS} "
                    "significant digits; the exact values are in the embedded export.")
        return (f"Downsampled about {factor:.0f}×: {self.drawn:,} points drawn of "
                f"{self.measured:,} measured (each series thinned to what the eye "
                f"can tell apart at this width). Values rounded to {DIGITS} significant digits; "
                "the exact series are in the embedded export.")


# ------------------------------------------------------------------ what is reported

def resolve(store: Store, id: str) -> tuple[str, pd.DataFrame, dict | None]:
    """(key, runs, comparison record or None) of a comparison id or comma-separated run ids.

    Raises :class:`normlab.runs.store.NotFound` naming an unknown id.
    """
    ids = [p.strip() for p in str(id).split(",") if p.strip()]
    if not ids:
        raise ValueError("give a comparison id or one or more run ids (comma-separated); "
                         "`normlab list` shows them")
    if len(ids) == 1 and store.resolve(ids[0])[0] == "comparison":
        return ids[0], store.runs(comparison=ids[0]), store.comparison(ids[0])
    for i in ids:
        if store.resolve(i)[0] != "run":
            raise ValueError(f"{i!r} is a comparison; give one comparison id or only run ids")
    return ",".join(ids), store.runs(ids=ids), None


def setup_tables(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run with the config fields that differ, the fields all runs share)."""
    configs = pd.DataFrame([c if isinstance(c, dict) else {} for c in runs["config"]])
    text = configs.astype(str)
    differs = [c for c in configs.columns if text[c].nunique() > 1 and c not in HIDDEN]
    shared = [c for c in configs.columns if text[c].nunique() <= 1]
    per_run = pd.DataFrame({"run": runs["id"].to_numpy(), "status": runs["status"].to_numpy(),
                            "steps": runs["step"].to_numpy()})
    for c in ["seed"] + differs:
        if c in configs:
            per_run[c] = configs[c].to_numpy()
    common = pd.DataFrame({"field": shared,
                           "value": [configs[c].iloc[0] if len(configs) else "" for c in shared]})
    return per_run, common


def methods_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The methods table's rows of the methods these runs use, in run order."""
    used = list(dict.fromkeys(c.get("norm") for c in runs["config"] if isinstance(c, dict)))
    table = views.methods_table().set_index("name")
    return table.loc[[m for m in used if m in table.index]].reset_index()


KEYS = ("label", "layer", "step")  # what makes one drawn point of a series


def points(frame: pd.DataFrame, every: int | None = None) -> int:
    """Measured points behind a frame's series: distinct (label, layer, step) — seeds of
    one label are one series, drawn as their mean — times ``every`` when only every
    ``every``-th step was loaded."""
    if frame.empty:
        return 0
    keys = ["label" if "label" in frame else "run", "layer", "step"]
    return len(frame[keys].astype(str).drop_duplicates()) * (every or 1)


CONTAINER = 800  # px of a chart that takes its container's width on the page


def fixed_width(node, width: int = CONTAINER):
    """``node`` (a spec) with every ``"width": "container"`` set to ``width`` px: a page's
    chart as wide as its column would have no width in the report (vega-embed's div is
    inline-block, as wide as its content) and be drawn blank."""
    if isinstance(node, dict):
        return {k: (width if k == "width" and v == "container" else fixed_width(v, width))
                for k, v in node.items()}
    if isinstance(node, list):
        return [fixed_width(v, width) for v in node]
    return node


def spec_of(chart: alt.TopLevelMixin) -> dict:
    """``chart``'s Vega-Lite spec with its data inlined (no row limit: the builders chose
    what to draw) and a fixed width for every panel (:func:`fixed_width`)."""
    with alt.data_transformers.enable("default", max_rows=None):
        spec = chart.to_dict(validate=False)
    datasets = spec.pop("datasets", None)  # the data rows are never touched
    spec = fixed_width(spec)
    if datasets is not None:
        spec["datasets"] = datasets
    return spec


def figure(title: str, chart: alt.TopLevelMixin, measured: int | None) -> Figure:
    """The chart's spec with its data inlined (no row limit: the builders thinned it);
    drawn = distinct (label, layer, step) of its largest dataset's curve rows (not the
    hover rules' rows, :func:`normlab.views.charts.hover_rows`). ``measured`` None: the
    chart shows a single step, nothing was thinned."""
    spec = spec_of(chart)
    rows = max(spec.get("datasets", {}).values(), key=len, default=[])
    rows = [r for r in rows if not r.get("hover")]  # a hover rule's rows are not points
    keys = [k for k in KEYS if rows and k in rows[0]]
    drawn = len({tuple(r.get(k) for k in keys) for r in rows}) if keys else len(rows)
    return Figure(title, spec, drawn if measured is None else measured, drawn)


def compare_figures(store: Store, runs: pd.DataFrame, view: View = VIEW_DEFAULTS
                    ) -> list[Figure]:
    """The Compare page's charts (every group of CHART_GROUPS) for ``runs``."""
    n_seeds = int(runs["seed"].nunique())
    longest = pd.to_numeric(runs["total_steps"], errors="coerce").fillna(runs["step"]).max()
    every = views.load_every(int(longest) if longest == longest else 1,
                             min(int(c.get("record_interval", 1)) for c in runs["config"]))
    out = []
    for group, specs in views.CHART_GROUPS.items():
        metrics, sites = views.group_request(group, view)
        frame = views.comparison_frame(store, list(runs["id"]), metrics, sites, every=every)
        for spec in specs:
            own = views.relevant_view(spec, view, n_seeds)
            chart = views.build_chart(frame, spec, own, n_seeds=n_seeds, width=WIDTH)
            if chart is None:
                continue
            site = own.site if spec.site == "site" else spec.site
            names = ("saturated", "dead") if spec.metric == "saturation" else (spec.metric,)
            rows = frame[frame["metric"].isin(names) & (frame["site"] == site)]
            measured = points(rows, every if site != "val" else 1)
            title = spec.title if spec.site != "site" else f"{spec.title} ({site})"
            out.append(figure(f"{group} — {title}", chart, measured))
    return out


def lab_figure(title: str, chart: alt.TopLevelMixin) -> Figure:
    """A lab chart's spec with its data inlined; drawn = rows of its largest dataset."""
    spec = spec_of(chart)
    drawn = max(map(len, spec.get("datasets", {}).values()), default=0)
    return Figure(title, spec, drawn, drawn, lab=True)


@dataclass(frozen=True)
class Part:
    """A heading of the report's charts: the page's section with its figures."""

    title: str
    figures: tuple[Figure, ...] = ()
    tables: tuple[pd.DataFrame, ...] = ()
    readouts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def lab_parts(store: Store, lab, cid: str, runs: pd.DataFrame) -> list[Part]:
    """The lab page's sections (:func:`normlab.views.labs.sections.sections`) with their
    charts as report figures."""
    return [Part(s.title, tuple(lab_figure(t, c) for t, c in s.charts), s.tables, s.readouts,
                 s.notes) for s in labsections.sections(store, lab, cid, runs)]


def layer_figures(store: Store, runs: pd.DataFrame, site: str | None = None,
                  layers: list[str] | None = None) -> list[Figure]:
    """Layer dynamics' charts: percentiles over training, the histogram over time and the
    histograms at the last step, for ``site`` (default: the page's) and ``layers``."""
    site = site or layerview.default_site(runs)[0]
    pct = layerview.load_site(store, runs, site, "percentiles")
    if pct.empty:
        return []
    found = layerview.natural_order(pct["layer"].astype(str).unique())
    unknown = [n for n in layers or () if n not in found]
    if unknown:
        raise ValueError(f"no layer {', '.join(map(repr, unknown))} measured at {site}; "
                         f"these runs have {', '.join(found)}")
    layers = layers or layerview.default_layers(found)
    pct = pct[pct["layer"].isin(layers)]
    label = layerview.SITE_LABELS[site]
    chart = views.fit(layercharts.percentile_chart(
        pct, site, title=f"{label}: 15/50/85th percentiles"), len(runs), WIDTH)
    out = [figure(f"Percentiles over training ({site})", chart, points(pct))]
    activation, kept, _ = layerview.hist_activation(runs, site)
    hist_runs, every = runs[runs["id"].isin(kept)], layerview.thin_every(runs)
    hist = layerview.load_site(store, hist_runs, site, "histogram", layers=layers,
                               every=every)
    if hist.empty:
        return out
    value_range = layerview.bulk_range(hist, site, activation)
    heat = layerview.zoom(views.fit(layercharts.hist_heatmap(
        hist, site, activation=activation, title=f"{site} histogram over time"),
        len(hist_runs), WIDTH), "y", *value_range)
    out.append(figure(f"Histogram over time ({site})", heat, points(hist, every)))
    step = layerview.step_range(pct)[1]
    rows = layerview.join_methods(layerview.load_rows(
        store, hist_runs["id"], site, "histogram", layers=layers,
        steps=layerview.step_window(hist_runs, step)), hist_runs)
    if not rows.empty:
        at = layerview.zoom(layercharts.hist_at_step(rows, site, int(step),
                                                     activation=activation), "x", *value_range)
        out.append(figure(f"Histograms at step {step} ({site})", at, None))
    return out


def command(id: str, page: str = "compare", site: str | None = None,
            layers: list[str] | None = None, default: str = "compare",
            lab: str | None = None) -> str:
    """The CLI command that writes this report again (``default``: the page the CLI
    chooses for ``id`` without --page; ``lab``: a lab other than the one that launched it)."""
    parts = ["normlab", "report", id, "-o", "report.html"]
    if lab:
        parts += ["--lab", lab]
    elif page != default:
        parts += ["--page", page]
    if site:
        parts += ["--site", site]
    if layers:
        parts += ["--layers", ",".join(layers)]
    return " ".join(parts)


def version() -> str:
    """NormLab's version (package metadata, else pyproject.toml beside the package)."""
    from importlib import metadata

    try:
        return metadata.version("normlab")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def export_doc(store: Store, key: str) -> dict:
    """The JSON export of a comparison, or of comma-separated runs (merged)."""
    bundles = [exchange.collect(store, i) for i in key.split(",")]
    comparisons = list({c["id"]: c for b in bundles for c in b.comparisons}.values())
    merged = exchange.Bundle(comparisons, [r for b in bundles for r in b.runs],
                             pd.concat([b.metrics for b in bundles], ignore_index=True))
    return exchange.json_doc(merged)


# ------------------------------------------------------------------ the HTML

DIGITS = 5  # significant digits of the values inlined in the charts (the export is exact)


def _round(v):
    return float(f"{v:.{DIGITS}g}") if isinstance(v, float) and v == v else v


def pack_dataset(rows: list[dict]) -> dict:
    """A chart dataset as columns: text columns as a dictionary and codes, floats rounded
    to DIGITS significant digits — a third of the rows' JSON; :func:`unpack_dataset` and
    the report's script rebuild the rows."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if all(v is None or isinstance(v, str) for v in values):
            words = list(dict.fromkeys(values))
            index = {w: i for i, w in enumerate(words)}
            columns[name] = {"words": words, "codes": [index[v] for v in values]}
        else:
            columns[name] = {"values": [_round(v) for v in values]}
    return {"normlab_columns": columns, "length": len(rows)}


def unpack_dataset(packed: dict) -> list[dict]:
    """The rows of :func:`pack_dataset` (what the browser draws)."""
    cols = {name: ([c["words"][i] for i in c["codes"]] if "words" in c else c["values"])
            for name, c in packed["normlab_columns"].items()}
    return [{name: col[i] for name, col in cols.items()} for i in range(packed["length"])]


def packed_spec(spec: dict) -> dict:
    """``spec`` with every inlined dataset packed by :func:`pack_dataset`."""
    out = dict(spec)
    if "datasets" in spec:
        out["datasets"] = {k: pack_dataset(v) for k, v in spec["datasets"].items()}
    return out


@functools.lru_cache(maxsize=1)
def javascript() -> str:
    """Vega, Vega-Lite and vega-embed as one script (vl-convert's bundle), built once."""
    import vl_convert

    return vl_convert.javascript_bundle().replace("</script", "<\\/script")


def _md(text: str) -> str:
    """The little markdown lab texts use (**bold**, *italic*, `code`), as escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![*\w])\*(?!\s)(.+?)\*", r"<i>\1</i>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _table(frame: pd.DataFrame) -> str:
    if not isinstance(frame.index, pd.RangeIndex):  # a lab table's row labels: a column
        frame = frame.rename_axis(frame.index.name or "").reset_index()
    return frame.to_html(index=False, border=0, classes="tbl", na_rep="", escape=True)


def _fields(common: pd.DataFrame) -> str:
    """field = value pairs in a compact grid (a config has ~35 fields)."""
    items = "".join(f"<div><span>{html.escape(str(f))}</span> {html.escape(str(v))}</div>"
                    for f, v in zip(common["field"], common["value"]))
    return f'<div class="fields">{items}</div>'


def zoomable(spec: dict) -> dict:
    """``spec`` with zoom and pan on the step axis: a scale-bound interval on the first
    line or area view whose x is a quantitative field (mouse wheel zooms, drag pans,
    double click resets)."""
    def first_unit(node):
        if not isinstance(node, dict):
            return None
        mark = node.get("mark")
        kind = mark.get("type") if isinstance(mark, dict) else mark
        x = (node.get("encoding") or {}).get("x") or {}
        if kind in ("line", "area") and x.get("type") == "quantitative":
            return node
        for key in ("layer", "hconcat", "vconcat", "concat"):
            for child in node.get(key, []):
                found = first_unit(child)
                if found is not None:
                    return found
        return first_unit(node.get("spec"))

    spec = copy.deepcopy(spec)
    unit = first_unit(spec)
    if unit is not None:
        unit.setdefault("params", []).append(
            {"name": "report_zoom", "select": {"type": "interval", "encodings": ["x"]},
             "bind": "scales"})
    return spec


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1180px;padding:0 1rem;color:#1f2430;line-height:1.45}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9rem}code{background:#f3f3f5;padding:.05rem .3rem;border-radius:3px}
.tbl{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
.tbl th,.tbl td{border-bottom:1px solid #e4e4e8;padding:.25rem .6rem;text-align:left}
.readout{background:#eef7ee;border-left:4px solid #3a9a3a;padding:.5rem .8rem;margin:.5rem 0}
.claim{background:#f5f6fa;padding:.6rem .9rem;border-radius:4px}
.note{color:#666;font-size:.82rem;margin-top:.2rem}.chart{margin-top:.6rem;overflow-x:auto}
.error{color:#b00020}
.fields{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.15rem 1rem;
font-size:.85rem}.fields span{color:#666}
"""

EMBED = """
(function(){
  var charts = document.querySelectorAll('script[data-chart]');
  charts.forEach(function(node){
    var target = document.getElementById(node.getAttribute('data-chart'));
    var spec = JSON.parse(node.textContent);
    Object.keys(spec.datasets || {}).forEach(function(name){
      var packed = spec.datasets[name], cols = packed.normlab_columns, rows = [];
      if (!cols) return;
      var names = Object.keys(cols);
      for (var i = 0; i < packed.length; i++) {
        var row = {};
        names.forEach(function(n){ var c = cols[n];
          row[n] = c.words ? c.words[c.codes[i]] : c.values[i]; });
        rows.push(row);
      }
      spec.datasets[name] = rows;
    });
    vegaEmbed(target, spec, {actions:false, renderer:'canvas'})
      .catch(function(err){ target.innerHTML = '<p class="error">This chart could not be drawn: '
        + String(err).replace(/</g,'&lt;') + '</p>'; console.error(err); });
  });
})();
"""


def _figure_html(i: int, fig: Figure, heading: str = "") -> list[str]:
    spec = packed_spec(zoomable(fig.spec))
    title = [f"<h3>{html.escape(fig.title)}</h3>"] if fig.title != heading else []
    return [*title, f'<div class="chart" id="chart-{i}"></div>',
            f'<p class="note">{html.escape(fig.note())}</p>',
            f'<script type="application/json" data-chart="chart-{i}" '
            f'id="normlab-chart-{i}">{json_text(spec)}</script>']


def render(*, title: str, subtitle: str, command_line: str, runs: pd.DataFrame,
           figures: list[Figure] = (), export: dict, lab=None, readouts=(),
           parts: list[Part] | None = None) -> str:
    """The HTML document: ``figures`` under one heading, or the lab page's ``parts``
    (each with its figures, tables, readouts and notes) — their readouts are also listed
    under the claim."""
    per_run, common = setup_tables(runs)
    per_run.insert(1, "label", per_run["run"].map(views.run_label(runs)))
    if parts is None:
        parts = [Part("Charts", tuple(figures))]
        readouts = tuple(readouts)
    else:
        readouts = tuple(r for p in parts for r in p.readouts)
    doc = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)} — NormLab report</title>",
           f"<style>{STYLE}</style>", f"<script>{javascript()}</script>",
           "</head><body>", f"<h1>{html.escape(title)}</h1>",
           f'<p class="meta">{html.escape(subtitle)}</p>',
           f'<p class="meta">NormLab {html.escape(version())} · written '
           f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} · the same report: '
           f"<code>{html.escape(command_line)}</code> · the runs: "
           "<code>normlab import report.html</code> (the export is inside this file)</p>"]
    if lab is not None:
        doc += ["<h2>The claim</h2>", f'<div class="claim"><p>{_md(lab.claim)}</p>',
                f"<p><b>What to look for.</b> {_md(lab.look_for)}</p></div>"]
    if readouts:
        doc.append('<h2>Readout</h2><div id="readouts">')
        doc += [f'<p class="readout">{_md(r)}</p>' for r in readouts]
        doc.append("</div>")
    doc += ["<h2>Setup</h2>", f"<h3>What differs between the {len(runs)} runs</h3>",
            _table(per_run), "<h3>What all runs share</h3>", _fields(common),
            "<h2>Methods</h2>", _table(methods_rows(runs))]
    hint = ('<p class="note">Hover for values; click a legend entry to highlight a '
            "method (shift-click for several); on line charts the mouse wheel zooms the "
            "step axis, drag pans, double click resets.</p>")
    n = 0
    for k, part in enumerate(parts):
        doc.append(f"<h2>{html.escape(part.title)}</h2>")
        if k == 0:
            doc.append(hint)
        doc += [f"<p>{_md(note)}</p>" for note in part.notes]
        for fig in part.figures:
            doc += _figure_html(n, fig, part.title)
            n += 1
        doc += [_table(t) for t in part.tables]
        if len(parts) > 1 or lab is not None:  # a lab page writes each under its chart
            doc += [f'<p class="readout">{_md(r)}</p>' for r in part.readouts]
    if n == 0 and not any(p.notes for p in parts):
        doc.append("<p>Nothing measured yet for these runs.</p>")
    doc += [script_block(export), f"<script>{EMBED}</script>", "</body></html>"]
    return "\n".join(doc)


def page_for(comparison: dict | None, page: str | None, lab: str | None = None) -> str:
    """The page a report reproduces: ``page``, else the lab's for a lab's comparison (or
    when ``lab`` names one), else Compare's. ``'lab'`` needs a comparison and a lab."""
    if page is not None and page not in PAGES:
        raise ValueError(f"page {page!r} has no report; use one of {', '.join(PAGES)}")
    known = lab is not None or lab_of(comparison) is not None
    if page == "lab" and (comparison is None or not known):
        raise ValueError("--page lab is for a comparison launched by a lab's preset; "
                         + ("give its comparison id, not run ids" if comparison is None
                            else "this one was not (use --page compare or layers)"))
    return page or ("lab" if comparison is not None and known else "compare")


def build(store: Store, id: str, *, page: str | None = None, view: View = VIEW_DEFAULTS,
          site: str | None = None, layers: list[str] | None = None,
          lab: str | None = None) -> str:
    """The report of comparison or runs ``id`` as the page ``page`` shows them (None: the
    lab's page for a comparison a lab launched, else Compare). ``lab``: the key of the lab
    whose page shows the comparison (default: the lab that launched it)."""
    key, runs, comparison = resolve(store, id)
    chosen = labsections.lab_by_key(lab) if lab is not None else lab_of(comparison)
    page = page_for(comparison, page, lab)
    if runs.empty:
        raise ValueError(f"{id!r} has no runs to report")
    parts, figures = None, []
    if page == "layers":
        figures = layer_figures(store, runs, site, layers)
        name = "Layer dynamics"
    elif page == "lab":
        parts = lab_parts(store, chosen, key, runs)
        name = f"Lab: {chosen.title}"
    else:
        figures = compare_figures(store, runs, view)
        name = "Compare"
    title = (comparison or {}).get("name") or f"{len(runs)} runs"
    subtitle = f"{name} · {len(runs)} runs · " + (f"comparison {key}" if comparison
                                                  else f"runs {key}")
    return render(title=title, subtitle=subtitle, runs=runs, figures=figures, parts=parts,
                  command_line=command(key, page, site, layers, page_for(comparison, None),
                                       lab if lab_of(comparison) is not chosen else None),
                  export=export_doc(store, key), lab=chosen if page == "lab" else None)


def write(store: Store, id: str, path: str | Path, **kw) -> Path:
    """:func:`build` written to ``path``; returns the path."""
    path = Path(path).expanduser()
    text = build(store, id, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
