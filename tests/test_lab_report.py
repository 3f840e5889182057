"""A lab's report (normlab.views.report, page "lab"): a comparison records the lab and
preset that launched it (kept through export and import); its report — the CLI's default
for it — holds the lab's claim, one chart spec per chart the lab's page draws with the
data of the lab's own chart builders, and the readouts the lab's own functions compute
from the runs. Tiny runs of two labs (learning rate, whitening) trained in-process."""
from __future__ import annotations

import json
import re
from html import unescape

import pytest

from normlab import cli
from normlab.runs import exchange
from normlab.runs.store import Store
from normlab.training.trainer import train
from normlab.views import report, sweep
from normlab.views.labs import sensitivity
from normlab.views.labs import whitening as wh
from normlab.views.labs.scaffold import launch, origin, preset_configs, with_changes
from normlab.views.labs.sections import lab_of

from test_report import assert_same_rows, chart_specs, rows_of

TINY = dict(steps=12, width=8, depth=2, eval_interval=6, record_interval=3)


def lab_comparison(store: Store, lab, key: str, grid: dict, **base) -> str:
    """``lab``'s preset ``key`` made tiny, stored as launch stores it, trained here."""
    preset = with_changes(lab.preset(key), {**TINY, **base}, grid)
    configs = preset_configs(preset)
    cid, ids = store.create_comparison(
        [c.to_dict() for c in configs], name=preset.name(lab.title), base=preset.base.to_dict(),
        grid={k: list(v) for k, v in preset.grid.items()}, origin=origin(lab, preset))
    for rid, cfg in zip(ids, configs):
        batch, outcome = train(cfg)
        store.append(rid, batch)
        store.finish(rid, outcome.status, outcome.step)
    return cid


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """A store with a tiny learning-rate sweep and a tiny whitening comparison, and the
    CLI's report of each (no --page: the lab's)."""
    folder = tmp_path_factory.mktemp("labreport")
    store = Store(folder / "runs.sqlite")
    lr = lab_comparison(store, sensitivity.LR_LAB, "lr",
                        {"norm": ["none", "batch"], "lr": [0.01, 0.1], "seed": [0]})
    white = lab_comparison(store, wh.LAB, "whitening", {"norm": ["batch", "whiten"]})
    paths = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "javascript", lambda: "")  # test_report's browser test draws one
        for name, cid in (("lr", lr), ("white", white)):
            paths[name] = folder / f"{name}.html"
            assert cli.main(["report", cid, "-o", str(paths[name]), "--store",
                             str(store.path)]) == 0
    yield store, {"lr": lr, "white": white}, paths
    store.close()


def readouts_in(path) -> list[str]:
    """The readouts listed under the claim, as text."""
    block = re.search(r'<div id="readouts">(.*?)</div>', path.read_text(), re.S).group(1)
    return [unescape(re.sub(r"<[^>]+>", "", p))
            for p in re.findall(r'<p class="readout">(.*?)</p>', block, re.S)]


def assert_same_charts(path, expected) -> None:
    """One spec per expected chart, in order, each with the chart's datasets."""
    specs = chart_specs(path)
    assert len(specs) == len(expected)
    for got, chart in zip(specs, expected):
        want = chart.to_dict()
        assert len(rows_of(got)) == len(want["datasets"]) > 0
        for g, w in zip(rows_of(got), want["datasets"].values()):
            assert_same_rows(g, w)


def test_launch_records_the_origin_and_export_import_carry_it(tmp_path, monkeypatch):
    import normlab.runs.comparisons

    monkeypatch.setattr(normlab.runs.comparisons, "ensure_engine", lambda *a, **k: None)
    store = Store(tmp_path / "a.sqlite")
    preset = with_changes(sensitivity.LR_LAB.preset("init"), TINY,
                          {"norm": ["batch"], "init_scale": [1.0], "seed": [0]})
    cid, _ = launch(preset, sensitivity.LR_LAB, store=store)
    assert store.comparison(cid)["origin"] == {"lab": "lr_init", "preset": "init"}
    assert lab_of(store.comparison(cid)) is sensitivity.LR_LAB
    doc = exchange.json_doc(exchange.collect(store, cid))
    assert doc["comparisons"][0]["origin"] == {"lab": "lr_init", "preset": "init"}
    fresh = Store(tmp_path / "b.sqlite")
    exchange.import_file(fresh, exchange.export(store, cid, tmp_path / "c.json"))
    assert fresh.comparison(cid)["origin"] == {"lab": "lr_init", "preset": "init"}
    # an export made before origins imports with none; its lab is found by its name
    del doc["comparisons"][0]["origin"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    older = Store(tmp_path / "old.sqlite")
    exchange.import_file(older, tmp_path / "old.json")
    assert older.comparison(cid)["origin"] is None
    assert lab_of(older.comparison(cid)) is sensitivity.LR_LAB
    doc["comparisons"][0]["origin"] = {"lab": 3}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"origin.*\{'lab': 3\}.*\"lab\": key"):
        exchange.import_file(Store(tmp_path / "bad.sqlite"), tmp_path / "bad.json")


def test_the_sweep_lab_report_holds_its_chart_and_readout(labs):
    store, cids, paths = labs
    runs = store.runs(comparison=cids["lr"])
    text = paths["lr"].read_text()
    assert "Lab: Learning rate and initialization" in text
    assert report._md(sensitivity.LR_LAB.claim) in text
    assert f"normlab report {cids['lr']} -o report.html<" in text  # the default: the lab
    # what pages/8_lr_init.py draws at its defaults: the sweep over the grid's first field
    rows = store.metrics(list(runs["id"]), metrics=["acc"], sites=["val"])
    frame = sweep.sweep_frame(runs, sweep.final_values(rows, "last", 3, "acc"), "lr")
    assert frame["value"].notna().sum() == 4
    chart = sweep.sweep_chart(frame, "lr", y_title=sweep.metric_title("acc", "val", "last"))
    assert_same_charts(paths["lr"], [chart])
    assert readouts_in(paths["lr"]) == [sensitivity.tolerance_readout(frame, "lr")]


def test_the_whitening_lab_report_holds_its_charts_and_readout(labs):
    from normlab.measure.decorrelation import CURVE_METRICS, CURVE_SITES, MATRIX_SITES

    store, cids, paths = labs
    runs = store.runs(comparison=cids["white"])
    ids = list(runs["id"])
    curves = wh.curve_frame(store.metrics(ids, metrics=list(CURVE_METRICS),
                                          sites=list(CURVE_SITES)), runs)
    layers = sorted(curves["layer"].unique())
    layer = layers[len(layers) // 2]  # pages/5_whitening.py's default layer ...
    step = wh.snapshot_steps_of(store.metrics(ids, metrics=["eig00"],
                                              sites=["matrix_out"]))[-1]  # ... and snapshot
    shot = store.metrics(ids, layers=[layer], sites=list(MATRIX_SITES), steps=(step, step))
    assert_same_charts(paths["white"], [
        wh.heatmap_chart(wh.matrix_frame(shot, runs, layer, step)),
        wh.spectrum_chart(wh.spectrum_frame(shot, runs, layer, step)),
        wh.curve_chart(curves, layer)])
    assert readouts_in(paths["white"]) == [wh.readout(curves)]
    assert report._md(wh.LAB.claim) in paths["white"].read_text()


def test_the_cli_chooses_the_lab_and_lets_the_user_choose(labs, tmp_path, capsys,
                                                          monkeypatch):
    store, cids, _ = labs
    monkeypatch.setattr(report, "javascript", lambda: "")
    out, s = tmp_path / "r.html", ["--store", str(store.path)]
    drawn = []  # Compare's charts are tested in test_report: here, only that they are asked
    monkeypatch.setattr(report, "compare_figures", lambda st, runs, view: drawn.append(
        len(runs)) or [])
    assert cli.main(["report", cids["lr"], "-o", str(out), "--page", "compare", *s]) == 0
    text = out.read_text()
    assert drawn == [4] and "Compare · 4 runs" in text and "The claim" not in text
    assert f"{cids['lr']} -o report.html --page compare" in text
    # the lr sweep as the whitening lab's page would show it: its view has nothing to draw
    assert cli.main(["report", cids["lr"], "-o", str(out), "--lab", "whitening", *s]) == 0
    text = out.read_text()
    assert "Lab: How far from whitening?" in text and "--lab whitening" in text
    assert "did not measure decorrelation" in text and chart_specs(out) == []
    capsys.readouterr()
    assert cli.main(["report", cids["lr"], "-o", str(out), "--lab", "nope", *s]) == 2
    assert "no lab 'nope'; use one of one_formula, whitening" in capsys.readouterr().err
    plain, _ = store.create_comparison([dict(TINY, norm="batch")], name="plain")
    assert cli.main(["report", plain, "-o", str(out), "--page", "lab", *s]) == 2
    assert "--page lab is for a comparison launched by a lab's preset" in capsys.readouterr().err


def test_a_chart_as_wide_as_its_column_gets_a_width_in_the_report():
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    base = alt.Chart(frame).mark_line().encode(x="x:Q", y="y:Q")
    chart = alt.hconcat(base.properties(width="container"), base.properties(width=200))
    fig = report.lab_figure("t", chart)
    assert [c["width"] for c in fig.spec["hconcat"]] == [report.CONTAINER, 200]
    assert fig.drawn == 2 and "every row it draws (2;" in fig.note()
