"""The report that travels (normlab.views.report): one HTML file that parses, holds one
chart spec per chart of the page with the page builders' data, re-imports its runs into a
fresh store with the same values, refuses an HTML file without (or with a damaged)
export with a clear message, and opens in a real browser with no network request and no
console error, its charts drawn."""
from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normlab import cli
from normlab.runs import embedded, exchange
from normlab.runs.store import Store
from normlab.views import compareview as views
from normlab.views import layercharts, layerview, report
from normlab.views.urlstate import VIEW_DEFAULTS

from test_pages import TINY, fill, store  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A store with one finished comparison (2 methods × 2 seeds) and its two reports."""
    folder = tmp_path_factory.mktemp("report")
    store = Store(folder / "runs.sqlite")
    cid, ids = fill(store, TINY, ("none", "batch"), (0, 1))
    compare = report.write(store, cid, folder / "compare.html")
    layers = report.write(store, cid, folder / "layers.html", page="layers")
    yield store, cid, ids, compare, layers
    store.close()


class _Doc(HTMLParser):
    """Tags, the JSON script blocks by id, and the chart divs of a report."""

    def __init__(self):
        super().__init__()
        self.stack, self.blocks, self.divs, self.current = [], {}, [], None
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("meta", "link", "br", "img"):
            return
        self.stack.append(tag)
        if tag == "script" and a.get("type") == "application/json":
            self.current = a["id"]
            self.blocks[self.current] = ""
        if tag == "div" and a.get("class") == "chart":
            self.divs.append(a["id"])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()
        if tag == "script":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.blocks[self.current] += data


def parse(path: Path) -> _Doc:
    doc = _Doc()
    doc.feed(path.read_text(encoding="utf-8"))
    doc.close()
    assert doc.stack == [] and doc.doctype.lower() == "doctype html"
    return doc


def chart_specs(path: Path) -> list[dict]:
    doc = parse(path)
    specs = [json.loads(doc.blocks[f"normlab-chart-{i}"]) for i in range(len(doc.divs))]
    assert len([k for k in doc.blocks if k.startswith("normlab-chart-")]) == len(doc.divs)
    return specs


def rows_of(spec: dict) -> list[list[dict]]:
    return [report.unpack_dataset(d) for d in spec.get("datasets", {}).values()]


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The inlined rows equal the builder's, floats to report.DIGITS significant digits."""
    assert len(got) == len(want) and len(want) > 0
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k, v in w.items():
            if isinstance(v, float) and not math.isnan(v):
                assert g[k] == pytest.approx(v, rel=10 ** (1 - report.DIGITS)), k
            else:
                assert g[k] == v, k


def test_the_report_parses_and_has_one_spec_per_compare_chart_with_the_page_data(made):
    store, cid, ids, path, _ = made
    specs = chart_specs(path)
    runs = store.runs(comparison=cid)
    n_seeds = int(runs["seed"].nunique())
    expected = []  # what pages/1_compare.py draws (normlab.ui.live._group), group by group
    for group, group_specs in views.CHART_GROUPS.items():
        metrics, sites = views.group_request(group, VIEW_DEFAULTS)
        frame = views.comparison_frame(store, ids, metrics, sites, every=1)
        for spec in group_specs:
            chart = views.build_chart(frame, spec, views.relevant_view(spec, VIEW_DEFAULTS,
                                                                       n_seeds),
                                      n_seeds=n_seeds, width=report.WIDTH)
            if chart is not None:
                expected.append(chart.to_dict())
    assert len(specs) == len(expected) == 11  # loss & accuracy 4, gradients 4, activations 3
    assert all("report_zoom" in json.dumps(s) for s in specs)  # wheel zoom on the step axis
    for got, want in zip(specs, expected):
        assert got["$schema"] == want["$schema"] and "vega-lite" in got["$schema"]
        for g, w in zip(rows_of(got), want["datasets"].values()):
            assert_same_rows(g, w)
    # independently of the builders: the validation accuracy drawn (linear axis) is the
    # stored one, mean over the two seeds, its band the seeds' min and max
    acc = pd.DataFrame([r for r in rows_of(specs[3])[0] if not r.get("hover")])  # curve rows
    stored = store.metrics(ids, metrics=["acc"], sites=["val"])
    stored["method"] = stored["run"].astype(str).map(dict(zip(runs["id"], runs["norm"])))
    agg = stored.groupby(["method", "step"])["value"].agg(["mean", "min", "max"])
    assert len(acc) == len(agg) > 4
    for row in acc.itertuples():
        want = tuple(agg.loc[(row.method, row.step)])
        assert (row.value, row.lo, row.hi) == pytest.approx(want, rel=1e-4)


def test_layer_report_holds_the_layer_page_charts(made):
    store, cid, ids, _, path = made
    specs = chart_specs(path)
    assert len(specs) == 3  # percentiles, heatmap, histograms at the last step
    runs = store.runs(comparison=cid)
    site = layerview.default_site(runs)[0]
    pct = layerview.load_site(store, runs, site, "percentiles")
    layers = layerview.default_layers(layerview.natural_order(pct["layer"].unique()))
    want = layercharts.percentile_chart(pct[pct["layer"].isin(layers)], site).to_dict()
    assert_same_rows(rows_of(specs[0])[0], list(want["datasets"].values())[0])
    text = path.read_text()
    assert f"--page layers" in text and "NormLab " in text


def test_setup_and_methods_tables(made):
    store, cid, _, path, _ = made
    per_run, common = report.setup_tables(store.runs(comparison=cid))
    assert {"norm", "seed"} <= set(per_run.columns) and len(per_run) == 4
    assert dict(zip(common["field"], common["value"]))["steps"] == TINY.steps
    assert "norm" not in set(common["field"])
    methods = report.methods_rows(store.runs(comparison=cid))
    assert list(methods["name"]) == ["none", "batch"]
    text = path.read_text()
    for title in methods["method"]:
        assert title in text
    assert f"normlab report {cid} -o report.html" in text


def test_import_round_trips_into_a_fresh_store(made, tmp_path):
    store, cid, ids, path, _ = made
    assert exchange.sniff(path) == "html"
    fresh = Store(tmp_path / "other.sqlite")
    added = exchange.import_file(fresh, path)
    assert sorted(added) == sorted(ids)
    a, b = store.runs(comparison=cid), fresh.runs(comparison=cid)
    assert list(a["config"]) == list(b["config"]) and list(a["status"]) == list(b["status"])
    key = ["run", "layer", "site", "metric", "step"]
    ma = store.metrics(ids).astype({"run": str}).sort_values(key).reset_index(drop=True)
    mb = fresh.metrics(ids).astype({"run": str}).sort_values(key).reset_index(drop=True)
    assert len(ma) > 1000
    pd.testing.assert_frame_equal(ma, mb, check_categorical=False)
    assert np.array_equal(ma["value"].to_numpy(), mb["value"].to_numpy())
    fresh.close()


def test_an_html_file_without_or_with_a_damaged_export_fails_clearly(made, tmp_path, capsys):
    _, _, _, path, _ = made
    plain = tmp_path / "page.html"
    plain.write_text("<!DOCTYPE html><html><body><p>hi</p></body></html>")
    with pytest.raises(ValueError, match=r"page\.html.*without an embedded NormLab export"):
        exchange.read_bundle(plain)
    text = path.read_text()
    start = text.index('id="normlab-export">') + len('id="normlab-export">')
    cut = tmp_path / "cut.html"
    cut.write_text(text[:start + 5000] + text[start + 9000:])
    with pytest.raises(ValueError, match=r"cut\.html.*damaged.*download the report again"):
        exchange.read_bundle(cut)
    fresh = tmp_path / "fresh.sqlite"
    assert cli.main(["import", str(plain), "--store", str(fresh)]) == 2
    assert "normlab export ID -o runs.json" in capsys.readouterr().err
    assert Store(fresh).runs().empty  # nothing written


def test_pack_round_trip_and_script_safety():
    rows = [{"a": "x</script>", "b": 1.234567891, "c": 3, "d": None},
            {"a": "y", "b": float("inf"), "c": 4, "d": "z"}]
    assert report.unpack_dataset(report.pack_dataset(rows)) == [
        {"a": "x</script>", "b": 1.2346, "c": 3, "d": None},
        {"a": "y", "b": float("inf"), "c": 4, "d": "z"}]
    block = embedded.script_block({"format": "normlab", "note": "</script><b>"})
    assert "</script><b>" not in block
    assert embedded.extract(f"<!doctype html><html>{block}</html>")["note"] == "</script><b>"


def test_cli_report(made, tmp_path, capsys):
    store, cid, ids, _, _ = made
    out = tmp_path / "r.html"
    assert cli.main(["report", ",".join(ids[:2]), "-o", str(out), "--store",
                     str(store.path)]) == 0
    assert "wrote" in capsys.readouterr().out and len(chart_specs(out)) >= 4
    assert cli.main(["report", cid, "-o", str(out), "--page", "layers", "--site", "nope",
                     "--store", str(store.path)]) == 2
    assert "--site 'nope' is not an activation site" in capsys.readouterr().err


def test_the_report_opens_offline_in_a_browser(made, tmp_path):
    from test_browser import ARGS, CHROMIUM, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    from normlab.views.labs import whitening
    from test_lab_report import lab_comparison

    _, _, _, path, layers = made
    labs = Store(tmp_path / "lab.sqlite")  # and a lab's report: the whitening lab's
    white = lab_comparison(labs, whitening.LAB, "whitening", {"norm": ["batch", "whiten"]})
    lab = report.write(labs, white, tmp_path / "lab.html")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for name, file in (("compare", path), ("layers", layers), ("lab", lab)):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                asked, errors = [], []
                page.route("**/*", lambda route: (asked.append(route.request.url),
                                                  route.continue_() if route.request.url
                                                  .startswith("file://") else route.abort()))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                        else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(file.as_uri())
                n = len(chart_specs(file))
                assert n >= 3
                page.wait_for_function(
                    f"document.querySelectorAll('.chart canvas').length >= {n}",
                    timeout=60_000)
                assert [u for u in asked if not u.startswith("file://")] == []
                assert errors == [] and page.locator(".error").count() == 0
                widths = page.evaluate("Array.from(document.querySelectorAll('.chart'))"
                                       ".map(d => d.offsetWidth)")
                assert len(widths) == n and min(widths) > 100  # every chart drawn wide
                page.screenshot(path=str(ARTIFACTS / f"report-{name}.png"), full_page=True)
                page.close()
        finally:
            browser.close()


def test_the_downsampling_factor_is_the_builders():
    from normlab.views.charts import metric_chart

    steps = np.arange(1000)
    frame = pd.DataFrame({"run": "r1", "step": steps, "layer": "model", "site": "train",
                          "metric": "loss", "value": 1.0 + np.exp(-steps / 300),
                          "method": "batch", "seed": 0, "label": "batch"})
    fig = report.figure("loss", metric_chart(frame, "loss", "train", max_points=100),
                        report.points(frame))
    assert fig.measured == 1000 and 90 <= fig.drawn <= 110
    assert f"about {1000 / fig.drawn:.0f}×" in fig.note()


def test_compare_page_has_the_download_button(made, monkeypatch):
    import normlab.ui.common
    from test_pages import compare, ok

    store, cid, _, _, _ = made
    monkeypatch.setenv("NORMLAB_STORE", str(store.path))
    monkeypatch.setattr(normlab.ui.common, "ensure_engine", lambda *a, **k: None)
    at = ok(compare(comparison=cid))
    buttons = at.get("download_button")
    assert any(b.proto.label == "Download report" for b in buttons)


def test_a_lab_page_reports_its_claim_and_the_readouts_it_shows(store, monkeypatch):  # noqa: F811
    from normlab.training.config import RunConfig
    from normlab.views.labs import sections, sensitivity
    from test_lab_report import readouts_in
    from test_pages import ok
    from test_pages_labs import TINY as LAB_TINY, fill as lab_fill, lab_page

    configs = [RunConfig(norm=n, lr=lr, **LAB_TINY) for n in ("batch", "none")
               for lr in (0.01, 0.1)]
    cid, _ = lab_fill(store, configs, "Learning rate and initialization · test",
                      {"norm": ["batch", "none"], "lr": [0.01, 0.1]})
    at = ok(lab_page("pages/8_lr_init.py", comparison=cid))
    assert any(b.proto.label == "Download report" for b in at.get("download_button"))
    shown = [s.value for s in at.success]  # what the page shows at its defaults ...
    runs = store.runs(comparison=cid)
    lab = sections.lab_of(store.comparison(cid))  # (stored without an origin: by its name)
    assert lab is sensitivity.LR_LAB
    assert shown and sections.readouts(sections.sections(store, lab, cid, runs)) == shown
    monkeypatch.setattr(report, "javascript", lambda: "")  # charts are tested above
    path = report.write(store, cid, store.path.parent / "lab.html")  # ... is in its report
    assert readouts_in(path) == shown and report._md(lab.claim) in path.read_text()
