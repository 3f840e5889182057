"""normlab.views.runtable (the Runs table and its actions) and normlab.views.layerview (what the Layer
dynamics page loads), on a store of tiny runs trained in-process.

Oracles: pandas over the very ``RecordBatch`` es appended (final metrics), plain pandas
masks (filters), a fresh store (export → import round trips).
"""
from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pandas as pd
import pytest

from normlab.views import layerview, runtable
from normlab.training.config import RunConfig
from normlab.views.frames import with_methods
from normlab.views.layercharts import hist_at_step, hist_heatmap
from normlab.measure.schema import HIST_METRICS, hist_edges
from normlab.runs.store import Store
from normlab.training.trainer import train

TINY = RunConfig(steps=20, width=8, depth=2, eval_interval=10)


def train_into(store: Store, configs, *, name=None, tags=(), finish=True, grid=None,
               base=None) -> tuple[str, list[str], dict]:
    """A comparison of ``configs`` trained in this process; (cid, run ids, run -> batch)."""
    cid, ids = store.create_comparison([c.to_dict() for c in configs], name=name, tags=tags,
                                       grid=grid, base=None if base is None else base.to_dict())
    batches = {}
    for _ in ids:
        rid, cfg = store.claim_run(os.getpid())
        batch, outcome = train(RunConfig.from_dict(cfg))
        store.append(rid, batch)
        store.progress(rid, outcome.step)
        batches[rid] = batch
        if finish:
            store.finish(rid, outcome.status, step=outcome.step)
    return cid, ids, batches


def build(path) -> tuple[Store, dict]:
    """Two finished comparisons (digits: batch/layer; moons relu: batch/none, 2 seeds) and
    one with a running and a queued run."""
    store = Store(path)
    a, a_ids, a_b = train_into(store, [TINY.replace(norm=n) for n in ("batch", "layer")],
                               name="digits bn vs ln", tags=["lecture"],
                               grid={"norm": ["batch", "layer"]}, base=TINY)
    moons = TINY.replace(dataset="moons", activation="relu", n_samples=200)
    b, b_ids, b_b = train_into(store, [moons.replace(norm=n, seed=s) for n in ("batch", "none")
                                       for s in (0, 1)], name="moons")
    store.tag(b_ids[0], ["keep", "demo"])
    store.annotate(b_ids[1], "odd one")
    c, c_ids = store.create_comparison([TINY.replace(norm="rms").to_dict()] * 2, name="live")
    rid, _ = store.claim_run(os.getpid())
    live_batch, _ = train(TINY.replace(norm="rms"))
    store.append(rid, live_batch)
    store.progress(rid, 20)
    return store, {"a": a, "a_ids": a_ids, "b": b, "b_ids": b_ids, "c": c, "c_ids": c_ids,
                   "batches": {**a_b, **b_b, rid: live_batch}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store, info = build(tmp_path_factory.mktemp("rt") / "store.sqlite")
    yield store, info
    store.close()


@pytest.fixture
def fresh(tmp_path):
    """A store of its own, for tests that change it."""
    store, info = build(tmp_path / "store.sqlite")
    yield store, info
    store.close()


# --------------------------------------------------------------------------- the table
def test_table_has_one_row_per_run_newest_comparison_first(built):
    store, info = built
    table = runtable.run_table(store)
    assert list(table.columns) == list(runtable.TABLE_COLUMNS)
    assert list(table["id"]) == info["c_ids"] + info["b_ids"] + info["a_ids"]
    row = table.set_index("id").loc[info["a_ids"][1]]
    assert (row["comparison"], row["method"], row["seed"], row["dataset"], row["model"],
            row["activation"], row["status"], row["step"], row["total_steps"]) == (
        "digits bn vs ln", "layer", 0, "digits", "mlp", "sigmoid", "done", 20, 20)
    assert row["comparison_tags"] == ["lecture"] and row["tags"] == []
    b = table.set_index("id")
    assert b.at[info["b_ids"][0], "tags"] == ["keep", "demo"]
    assert b.at[info["b_ids"][1], "notes"] == "odd one"
    assert b.loc[info["c_ids"], "status"].tolist() == ["running", "queued"]
    created = pd.to_datetime(store.run(info["a_ids"][0])["created_at"], unit="s", utc=True)
    assert abs(row["created"] - created.tz_convert(dt.datetime.now().astimezone().tzinfo)
               .tz_localize(None)) < pd.Timedelta(seconds=1)


def test_final_metrics_are_the_last_recorded_values(built):
    store, info = built
    table = runtable.run_table(store).set_index("id")
    for rid, batch in info["batches"].items():
        rows = batch.to_frame(rid)
        for col in runtable.FINAL_METRICS:
            site, metric = col.split("_")
            series = rows[(rows.layer == "model") & (rows.site == site) & (rows.metric == metric)]
            expected = series.sort_values("step")["value"].iloc[-1]
            assert table.at[rid, col] == pytest.approx(expected, rel=0, abs=0), (rid, col)
    queued = info["c_ids"][1]
    assert table.loc[queued, list(runtable.FINAL_METRICS)].isna().all()


def test_final_metrics_pure_and_empty():
    frame = pd.DataFrame({"run": ["r1"] * 4 + ["r2"], "step": [0, 5, 3, 10, 1],
                          "layer": ["model"] * 4 + ["hidden1"],
                          "site": ["train", "train", "train", "val", "post_act"],
                          "metric": ["loss", "loss", "acc", "acc", "mean"],
                          "value": [2.0, 1.0, 0.5, 0.9, 7.0]})
    out = runtable.final_metrics(frame)
    assert list(out.index) == ["r1"]
    assert out.loc["r1"].tolist()[:2] == [1.0, 0.5] and np.isnan(out.at["r1", "val_loss"])
    assert out.at["r1", "val_acc"] == 0.9
    assert runtable.final_metrics(frame.iloc[:0]).empty


# ---------------------------------------------------------------------------- filters
FILTERS = [
    {}, {"datasets": ["moons"]}, {"methods": ["batch"]}, {"statuses": ["done"]},
    {"statuses": ["queued", "running"]}, {"tags": ["lecture"]}, {"tags": ["demo"]},
    {"tags": ["nope"]}, {"methods": ["batch", "none"], "datasets": ["moons"]},
    {"methods": []}, {"comparisons": "AB"},
]


@pytest.mark.parametrize("kw", FILTERS)
def test_filters_match_pandas(built, kw):
    store, info = built
    table = runtable.run_table(store)
    if kw.get("comparisons") == "AB":
        kw = {"comparisons": [info["a"], info["b"]]}
    got = runtable.filter_runs(table, **kw)
    mask = pd.Series(True, index=table.index)
    for col, key in (("dataset", "datasets"), ("method", "methods"), ("status", "statuses"),
                     ("comparison_id", "comparisons")):
        if kw.get(key):
            mask &= table[col].isin(kw[key])
    if kw.get("tags"):
        mask &= np.array([bool(set(kw["tags"]) & (set(a) | set(b)))
                          for a, b in zip(table["tags"], table["comparison_tags"])])
    assert got["id"].tolist() == table.loc[mask, "id"].tolist()


def test_date_filter_inclusive(built):
    store, _ = built
    table = runtable.run_table(store)
    today = table["created"].max().date()
    assert len(runtable.filter_runs(table, since=today, until=today)) == len(table)
    assert runtable.filter_runs(table, since=today + dt.timedelta(days=1)).empty
    assert runtable.filter_runs(table, until=today - dt.timedelta(days=1)).empty


def test_filter_options(built):
    store, info = built
    opts = runtable.filter_options(runtable.run_table(store))
    assert opts["datasets"] == ["digits", "moons"]
    assert opts["methods"] == ["none", "batch", "layer", "rms"]  # canonical palette order
    assert opts["statuses"] == ["queued", "running", "done"]
    assert opts["tags"] == ["demo", "keep", "lecture"]
    assert opts["comparisons"] == [info["c"], info["b"], info["a"]]
    assert opts["dates"][0] == opts["dates"][1]


# ---------------------------------------------------------------------------- actions
def test_targets_and_link_params(built):
    store, info = built
    table = runtable.run_table(store)
    picked = [info["a_ids"][0], info["b_ids"][0]]
    kinds = [(t.kind, t.id) for t in runtable.targets(table, picked)]
    assert kinds == [("runs", None), ("run", picked[0]), ("run", picked[1]),
                     ("comparison", info["a"]), ("comparison", info["b"])]
    whole = runtable.targets(table, [info["a_ids"][0]])[-1]
    assert whole.run_ids == tuple(info["a_ids"]) and whole.name == "digits bn vs ln"
    assert whole.tags == ("lecture",)
    assert [t.kind for t in runtable.targets(table, ["nope"])] == []
    assert runtable.link_params(table, info["a_ids"]) == {"comparison": info["a"]}
    assert runtable.link_params(table, picked) == {"runs": ",".join(picked)}
    assert runtable.link_params(table, info["a_ids"][:1]) == {"runs": info["a_ids"][0]}
    assert runtable.link_params(table, []) == {}


def test_edits(fresh):
    store, info = fresh
    table = runtable.run_table(store)
    run_t, *_, comp_t = runtable.targets(table, [info["b_ids"][0]])
    assert runtable.apply_edits(store, run_t, name=" star ", tags=["a", "b"],
                                notes="n") == ["name", "tags", "notes"]
    rec = store.run(info["b_ids"][0])
    assert (rec["name"], rec["tags"], rec["notes"]) == ("star", ["a", "b"], "n")
    assert runtable.apply_edits(store, run_t, name="", tags=run_t.tags, notes=run_t.notes) == []
    with pytest.raises(ValueError, match="needs a name"):
        runtable.apply_edits(store, comp_t, name="  ")
    runtable.apply_edits(store, comp_t, name="renamed")
    assert store.comparison(info["b"])["name"] == "renamed"
    several = runtable.targets(table, info["a_ids"])[0]
    assert runtable.apply_edits(store, several, name="ignored", tags=["x"]) == ["tags"]
    assert [store.run(r)["tags"] for r in info["a_ids"]] == [["x"], ["x"]]
    assert runtable.parse_tags(" a, b,,a , c ") == ["a", "b", "c"]


def test_delete_run_set_and_comparison(fresh):
    store, info = fresh
    table = runtable.run_table(store)
    several = runtable.targets(table, [info["a_ids"][0], info["b_ids"][0]])[0]
    text = runtable.deletion_summary(table, several)
    assert info["a_ids"][0] in text and info["b_ids"][0] in text and "2 run(s)" in text
    assert runtable.delete(store, several) == [info["a_ids"][0], info["b_ids"][0]]
    assert runtable.delete(store, several) == []  # already gone: nothing, no error
    table = runtable.run_table(store)
    comp = runtable.targets(table, [info["c_ids"][0]])[-1]
    assert "still training" in runtable.deletion_summary(table, comp)
    assert runtable.delete(store, comp) == info["c_ids"]
    assert set(runtable.run_table(store)["id"]) == {info["a_ids"][1], *info["b_ids"][1:]}
    with pytest.raises(ValueError, match="nothing to delete"):
        runtable.delete(store, runtable.Target("runs", None, (), "none"))


def test_rerun_queues_the_stored_configs(fresh):
    store, info = fresh
    table = runtable.run_table(store)
    comp = runtable.targets(table, [info["a_ids"][0]])[-1]
    cid, ids = runtable.rerun(store, comp, start=False)
    new = store.comparison(cid)
    assert new["name"] == "re-run of digits bn vs ln" and new["grid"] == {"norm": ["batch",
                                                                                   "layer"]}
    assert store.runs(comparison=cid)["config"].tolist() == \
        store.runs(comparison=info["a"])["config"].tolist()
    assert store.runs(comparison=cid)["status"].tolist() == ["queued", "queued"]
    mixed = runtable.targets(table, [info["a_ids"][0], info["b_ids"][1]])[0]
    cid2, ids2 = runtable.rerun(store, mixed, start=False)
    assert [store.run(r)["config"] for r in ids2] == \
        [store.run(info["a_ids"][0])["config"], store.run(info["b_ids"][1])["config"]]


def test_rerun_of_an_invalid_config_is_a_clear_error(fresh):
    store, _ = fresh
    cid, (rid,) = store.create_comparison([{**TINY.to_dict(), "dataset": "csv:/no/such.csv"}])
    target = runtable.targets(runtable.run_table(store), [rid])[0]
    with pytest.raises(ValueError, match="no/such.csv"):
        runtable.rerun(store, target, start=False)


# ------------------------------------------------------------------ downloads, uploads
@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_export_bytes_round_trip(built, tmp_path, fmt):
    store, info = built
    data = runtable.export_bytes(store, info["b"], fmt)
    with Store(tmp_path / "other.sqlite") as other:
        result = runtable.import_bytes(other, data, f"download.{fmt}")
        assert result.added == info["b_ids"] and result.skipped == ""
        got, want = other.metrics(comparison=info["b"]), store.metrics(comparison=info["b"])
        pd.testing.assert_frame_equal(got, want)
        assert other.comparison(info["b"])["name"] == "moons"
        assert other.run(info["b_ids"][0])["tags"] == ["keep", "demo"]
        again = runtable.import_bytes(other, data, f"download.{fmt}")
        assert again.added == [] and "skipped 4 run(s)" in again.skipped
        assert "download" in again.skipped and "normlab-import" not in again.skipped


def test_export_csv_is_the_tidy_rows(built, tmp_path):
    store, info = built
    rid = info["a_ids"][0]
    path = tmp_path / "x.csv"
    path.write_bytes(runtable.export_bytes(store, rid, "csv"))
    rows = pd.read_csv(path)
    assert list(rows.columns) == ["run", "step", "layer", "site", "metric", "value",
                                  "label", "method", "seed", "comparison_name"]
    assert len(rows) == len(store.metrics(runs=rid)) and set(rows["run"]) == {rid}
    run = store.run(rid)
    assert set(zip(rows["method"], rows["seed"], rows["comparison_name"])) == \
        {(run["norm"], run["seed"], store.comparison(info["a"])["name"])}
    with pytest.raises(ValueError, match="unknown download format"):
        runtable.export_bytes(store, rid, "xlsx")


def test_import_errors_name_the_file_and_the_fix(built, tmp_path):
    store, _ = built
    with Store(tmp_path / "other.sqlite") as other:
        with pytest.raises(ValueError, match=r"runs.json.*JSON or Parquet"):
            runtable.import_bytes(other, b"run,step\n", "metrics.csv")
        with pytest.raises(ValueError, match=r"notes.txt is not a NormLab export"):
            runtable.import_bytes(other, b"hello", "notes.txt")
        with pytest.raises(ValueError, match=r"cannot import broken.json: it is not valid JSON"):
            runtable.import_bytes(other, b"{oops", "broken.json")
        with pytest.raises(ValueError, match=r"broken.json.*not a NormLab export"):
            runtable.import_bytes(other, json.dumps({"a": 1}).encode(), "broken.json")
        with pytest.raises(ValueError, match=r"bad.parquet"):
            runtable.import_bytes(other, b"PAR1 not really", "bad.parquet")
        assert other.runs().empty


def test_chart_bytes(built):
    store, info = built
    runs = store.runs(comparison=info["a"])
    rows = layerview.load_site(store, runs, "post_act", "histogram")
    chart = hist_heatmap(rows, "post_act", activation="sigmoid")
    assert runtable.chart_bytes(chart, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in runtable.chart_bytes(chart, "svg")[:200]


# ------------------------------------------------------------------------- layerview
def test_resolve_selection(built):
    store, info = built
    sel = layerview.resolve_selection(store, info["a"])
    assert (sel.comparison, sel.runs, sel.errors) == (info["a"], info["a_ids"], [])
    sel = layerview.resolve_selection(store, None, f" {info['b_ids'][1]},,{info['b_ids'][0]} ")
    assert (sel.comparison, sel.runs, sel.errors) == (info["b"], info["b_ids"][1::-1], [])
    mixed = f"{info['a_ids'][0]},rnope,{info['b_ids'][0]}"
    sel = layerview.resolve_selection(store, None, mixed)
    assert sel.comparison is None and sel.runs == [info["a_ids"][0], info["b_ids"][0]]
    assert len(sel.errors) == 1 and "rnope" in sel.errors[0]
    sel = layerview.resolve_selection(store, "cnope")
    assert sel.runs == [] and "cnope" in sel.errors[0] and "Runs page" in sel.errors[0]
    sel = layerview.resolve_selection(store, "'; drop table runs; --")
    assert sel.runs == [] and len(sel.errors) == 1
    sel = layerview.resolve_selection(store, info["a"], info["b_ids"][0])
    assert sel.runs == info["a_ids"] and "not in comparison" in sel.errors[0]


def test_url_params():
    assert layerview.url_params("c1", ["r1", "r2"], ["r1", "r2"]) == {"comparison": "c1"}
    assert layerview.url_params("c1", ["r2"], ["r1", "r2"]) == {"comparison": "c1", "runs": "r2"}
    assert layerview.url_params(None, ["r1", "r9"]) == {"runs": "r1,r9"}
    assert layerview.url_params("", []) == {}


def test_load_site_reads_only_the_asked_metrics(built):
    store, info = built
    runs = store.runs(comparison=info["b"])
    pct = layerview.load_site(store, runs, "pre_norm", "percentiles", comparison_names={})
    assert set(pct["metric"].astype(str)) == {"p15", "p50", "p85", "p50_lo", "p50_hi"}
    assert set(pct["site"].astype(str)) == {"pre_norm"}
    assert {"method", "seed", "label"} <= set(pct.columns)
    hist = layerview.load_site(store, runs, "post_norm", "histogram", layers=["hidden2"],
                               every=5)
    assert set(hist["metric"].astype(str)) == set(HIST_METRICS) | {
        "hist_under", "hist_over", "hist_lo", "hist_hi"}
    assert set(hist["layer"].astype(str)) == {"hidden2"} and (hist["step"] % 5 == 0).all()
    near = layerview.load_rows(store, runs["id"], "post_norm", "histogram",
                               steps=layerview.step_window(runs, 7))
    assert set(near["step"]) == {6, 7, 8}
    with pytest.raises(ValueError, match="activation site"):
        layerview.load_rows(store, runs["id"], "param", "histogram")


def test_join_methods_equals_with_methods(built):
    store, info = built
    runs = store.runs()
    rows = layerview.load_rows(store, runs["id"], "post_act", "percentiles")
    names = {info["a"]: "A"}
    got = layerview.join_methods(rows, runs.iloc[1:], names)
    want = with_methods(rows, runs.iloc[1:], comparison_names=names)
    pd.testing.assert_frame_equal(got.astype({"run": str}), want.astype({"run": str}),
                                  check_categorical=False)


def test_hist_activation_and_thinning(built):
    store, info = built
    runs = store.runs(ids=info["a_ids"] + info["b_ids"])
    act, drawn, note = layerview.hist_activation(runs, "post_act")
    assert act == "sigmoid" and drawn == info["a_ids"] and "relu" in note
    assert layerview.hist_activation(runs, "pre_norm")[1:] == (list(runs["id"]), "")
    assert layerview.thin_every(runs) is None
    long = runs.assign(total_steps=10_000, config=[{"record_interval": 3}] * len(runs))
    every = layerview.thin_every(long)
    assert every % 3 == 0 and 10_000 / every <= layerview.MAX_HIST_STEPS
    ended = pd.DataFrame({"step": [300, 400], "config": [{"record_interval": 2}] * 2})
    assert layerview.step_window(ended, 399) == (297, 401)  # reaches the shorter run's end
    assert layerview.step_window(ended, 10) == (8, 12)
    assert layerview.step_range(pd.DataFrame({"step": [0, 5, 10, 20]})) == (0, 20, 5)
    assert layerview.step_range(pd.DataFrame({"step": []})) == (0, 0, 1)
    assert layerview.default_layers([f"hidden{i}" for i in range(1, 4)]) == \
        ["hidden1", "hidden2", "hidden3"]
    assert layerview.default_layers([f"hidden{i}" for i in range(1, 11)]) == \
        ["hidden1", "hidden4", "hidden7", "hidden10"]


def test_bulk_range_and_zoom():
    edges = hist_edges("pre_norm")
    rows = pd.DataFrame({"metric": ["hist_15", "hist_16", "hist_20", "hist_00"],
                         "value": [0.5, 0.49, 0.02, 0.001], "site": "pre_norm"})
    assert layerview.bulk_range(rows, "pre_norm") == (edges[14], edges[22])  # an older run
    assert layerview.bulk_range(rows.iloc[3:], "pre_norm") == (-8.0, 8.0)
    # a run with its recorded range -2..6 (bins of 0.25): bins 15..20 plus one on each side
    fitted = pd.concat([rows.assign(run="r", layer="hidden1", step=0),
                        pd.DataFrame({"run": "r", "layer": "hidden1", "step": 0,
                                      "site": "pre_norm", "metric": ["hist_lo", "hist_hi"],
                                      "value": [-2.0, 6.0]})])
    assert layerview.bulk_range(fitted, "pre_norm") == (-2.0 + 14 * 0.25, -2.0 + 22 * 0.25)
    assert layerview.full_range(fitted, "pre_norm") == (-2.0, 6.0)
    frame = pd.DataFrame({"run": "r", "method": "batch", "seed": 0, "label": "batch",
                          "layer": "hidden1", "site": "pre_norm", "step": np.repeat([0, 1], 32),
                          "metric": list(HIST_METRICS) * 2, "value": 1 / 32})
    for chart, channel in ((hist_heatmap(frame, "pre_norm"), "y"),
                           (hist_at_step(frame, "pre_norm", 1), "x")):
        spec = layerview.zoom(chart, channel, -2.0, 2.0).to_dict()
        for layer in spec["spec"]["layer"]:
            assert layer["encoding"][channel]["scale"]["domain"] == [-2.0, 2.0]
            assert layer["mark"]["clip"] is True
        assert "domain" not in str(chart.to_dict()["spec"]["layer"][-1]["encoding"][channel]
                                   .get("scale", {})) or channel == "y"  # original untouched
