"""normlab.views.compareview: what the pages show, checked without Streamlit on real (tiny) runs.

Oracles: the registry for the methods table, config.errors for form messages,
frames.with_methods over Store.metrics for the joined frame, the store's own run
records for progress."""
from __future__ import annotations

import re
from dataclasses import replace

import altair as alt
import numpy as np
import pandas as pd
import pytest

import normlab.runs.comparisons
from normlab.views import compareview as views, livespecs
from normlab.training.config import RunConfig
from normlab.views.frames import with_methods
from normlab.methods.registry import NORMS, norms_for
from normlab.measure.schema import RecordBatch
from normlab.runs.store import Store
from normlab.training.trainer import train
from normlab.views.urlstate import View

TINY = RunConfig(steps=40, width=8, depth=2, eval_interval=10, record_interval=1,
                 batch_size=32)
METHODS = ("none", "batch", "layer")
SEEDS = (0, 1)


def fill(store: Store, base: RunConfig, methods, seeds) -> tuple[str, list[str]]:
    """A finished comparison of really trained runs (no engine)."""
    configs = views.configs_for(base, methods, seeds)
    cid, ids = store.create_comparison([c.to_dict() for c in configs], base=base.to_dict(),
                                       grid={"norm": list(methods), "seed": list(seeds)})
    for rid, cfg in zip(ids, configs):
        batch, outcome = train(cfg)
        store.append(rid, batch)
        store.finish(rid, outcome.status, outcome.step)
    return cid, ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("views") / "runs.sqlite")
    cid, ids = fill(store, TINY, METHODS, SEEDS)
    relu, _ = fill(store, TINY.replace(activation="relu"), ("batch",), (0,))
    yield store, cid, ids, relu
    store.close()


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr(normlab.runs.comparisons, "ensure_engine", lambda *a, **k: None)


# --------------------------------------------------------------------------- home
def test_methods_table_is_the_registry():
    table = views.methods_table()
    assert list(table["name"]) == list(NORMS)
    for col in ("method", "μ (shift)", "σ (scale)", "reduction axes", "learnable",
                "train vs eval", "paper"):
        assert table[col].map(bool).all(), col
    row = table.set_index("name").loc["batch"]
    assert row["method"] == "BatchNorm" and "Ioffe" in row["paper"]
    assert table.set_index("name").loc["instance", "applies to"] == "CNN"


def test_quick_start_is_valid_and_uses_every_mlp_method():
    assert views.form_errors(views.QUICK_START, norms_for("mlp"), views.QUICK_SEEDS) == {}
    assert views.QUICK_START.dataset == "digits" and views.QUICK_START.model == "mlp"


# --------------------------------------------------------------------------- form
def test_form_errors_valid_is_empty():
    assert views.form_errors(TINY, METHODS, SEEDS) == {}


def test_form_errors_name_each_field():
    errs = views.form_errors(RunConfig(batch_size=1), ["batch", "instance", "layer"], [0])
    assert "at least 2" in errs["batch_size"] and "'batch'" in errs["batch_size"]
    assert "'instance' needs a CNN" in errs["methods"]
    errs = views.form_errors(RunConfig(model="cnn", dataset="moons"), ["batch"], [0])
    assert "CNN needs image or signal data" in errs["model"]
    errs = views.form_errors(RunConfig(batch_size=5000), ["layer"], [0])
    assert "larger than the training set" in errs["batch_size"]
    errs = views.form_errors(RunConfig(dataset="csv:/no/such/file.csv"), ["layer"], [0])
    assert "/no/such/file.csv" in errs["dataset"]
    assert views.form_errors(TINY, [], [0])["methods"] == "pick at least one method"
    assert "seed" in views.form_errors(TINY, ["batch"], [])["seeds"]


def test_form_errors_name_every_bad_method():
    errs = views.form_errors(RunConfig(model="mlp"), ["instance", "batch"], [0])
    assert "instance" in errs["methods"] and "batch" not in errs["methods"]


def test_configs_for_varies_methods_slowest():
    configs = views.configs_for(TINY, ["a", "b"], [0, 1])
    assert [(c.norm, c.seed) for c in configs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_launch_queues_one_run_per_method_and_seed(tmp_path, no_engine):
    store = Store(tmp_path / "s.sqlite")
    cid, errors = views.launch(store, TINY, ["batch", "layer"], [0, 3])
    assert errors == {}
    runs = store.runs(comparison=cid)
    assert list(zip(runs["norm"], runs["seed"])) == [("batch", 0), ("batch", 3), ("layer", 0),
                                                     ("layer", 3)]
    assert (runs["status"] == "queued").all()
    record = store.comparison(cid)
    assert record["base"] == TINY.to_dict()
    assert record["grid"] == {"norm": ["batch", "layer"], "seed": [0, 3]}
    assert "digits" in record["name"] and "2 methods" not in record["name"]


def test_launch_refuses_bad_settings_and_stores_nothing(tmp_path, no_engine):
    store = Store(tmp_path / "s.sqlite")
    cid, errors = views.launch(store, TINY.replace(batch_size=1), ["batch"], [0])
    assert cid is None and "batch_size" in errors
    assert store.comparisons().empty


# ---------------------------------------------------------------------- progress
def test_progress_table_and_summary(tmp_path, no_engine):
    store = Store(tmp_path / "s.sqlite")
    cid, ids = store.create_comparison([TINY.replace(norm=m, steps=100).to_dict()
                                        for m in ("none", "batch", "layer", "rms")])
    run, _ = store.claim_run(1)  # the first: running at step 40, 20 steps/s
    store.progress(run, 40, 20.0)
    store.append(run, RecordBatch(np.array([0, 20]), [("model", "val", "acc")],
                                  np.array([[0.1], [0.5]])))
    done, _ = store.claim_run(1)
    store.finish(done, "diverged", 30, "diverged at step 30")
    store.request(ids[3], "pause")  # queued, held
    table = views.progress_table(store, store.runs(comparison=cid))
    assert list(table["method"]) == ["none", "batch", "layer", "rms"]
    assert list(table["status"]) == ["running", "diverged", "queued", "queued"]
    assert table["done"].tolist() == pytest.approx([0.4, 0.3, 0.0, 0.0])
    assert table.loc[0, "eta"] == "3 s" and table.loc[0, "steps_per_sec"] == "20"
    assert table.loc[0, "val_acc"] == "0.500" and table.loc[2, "val_acc"] == ""
    assert table.loc[1, "eta"] == "—" and "diverged" in table.loc[1, "message"]
    assert table.loc[2, "eta"] == "waiting for a worker"
    assert views.progress_table(store, ids).equals(table)  # run ids work too
    summary = views.progress_summary(store.runs(comparison=cid))
    # the diverged run counts as complete: (40 + 100) / 400 steps
    assert summary["fraction"] == pytest.approx(0.35)
    assert not summary["finished"]
    assert "1 of 4 runs finished" in summary["text"] and "1 running" in summary["text"]
    assert "2 queued" in summary["text"] and "1 diverged" in summary["text"]
    assert "left" in summary["text"] and "waiting" not in summary["text"]
    waiting = views.progress_summary(store.runs(ids=ids[2:]))  # queued only: say why
    assert waiting["text"].startswith("0 of 2 runs finished · 2 queued · waiting for a worker")


def test_progress_of_finished_runs(trained):
    store, cid, ids, _ = trained
    runs = store.runs(comparison=cid)
    summary = views.progress_summary(runs)
    assert summary == {"fraction": 1.0, "finished": True,
                       "text": f"{len(ids)} of {len(ids)} runs finished"}
    table = views.progress_table(store, runs)
    assert (table["done"] == 1).all() and (table["eta"] == "—").all()
    assert table["val_acc"].str.match(r"^0\.\d{3}$|^1\.000$").all()
    assert views.finished(runs) and views.finished(runs.iloc[:0])


def test_labels_and_choices(trained):
    store, cid, ids, relu = trained
    labels = views.run_label(store.runs(comparison=cid))
    assert labels[ids[0]] == "none · seed 0" and labels[ids[3]] == "batch · seed 1"
    assert views.run_label(store.runs(comparison=relu)) == {
        store.comparison(relu)["runs"][0]: "batch"}
    choices = views.comparison_choices(store)
    assert list(choices) == [relu, cid]  # newest first
    assert "6 runs" in choices[cid] and cid in choices[cid]
    assert views.comparison_record(store, "cnope") is None


# ------------------------------------------------------------------------ frames
@pytest.mark.parametrize("total, ri, every", [(1000, 1, 1), (2000, 1, 1), (10_000, 1, 5),
                                              (10_000, 3, 6), (500, 5, 1), (100_000, 7, 56)])
def test_load_every(total, ri, every):
    assert views.load_every(total, ri) == every
    assert every % ri == 0 or every == 1
    assert total / every <= views.LOAD_POINTS * 1.01 or every == 1


def test_comparison_frame_equals_with_methods(trained):
    store, cid, ids, _ = trained
    metrics, sites = ["loss", "acc", "grad_norm"], ["train", "val"]
    got = views.comparison_frame(store, ids, metrics, sites)
    want = with_methods(store.metrics(ids, metrics=metrics, sites=sites),
                        store.runs(comparison=cid))
    assert len(got) == len(want) > 0
    for col in ("run", "step", "layer", "site", "metric", "method", "label"):
        assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col
    assert got["seed"].tolist() == want["seed"].tolist()
    assert np.array_equal(got["value"].to_numpy(), want["value"].to_numpy())


def test_comparison_frame_thins_all_but_validation(trained):
    store, cid, ids, _ = trained
    full = views.comparison_frame(store, ids, ["loss"], ["train", "val"])
    thin = views.comparison_frame(store, ids, ["loss"], ["train", "val"], every=4)
    assert (thin.loc[thin["site"] == "train", "step"] % 4 == 0).all()
    val = lambda f: f[f["site"] == "val"].sort_values(["run", "step"])["value"].tolist()  # noqa
    assert val(thin) == val(full)  # every validation point kept
    assert set(thin["method"].astype(str)) == set(METHODS)
    everything = views.comparison_frame(store, ids[:1], every=4)
    assert set(everything["site"].astype(str)) >= {"train", "val", "param", "post_act"}
    empty = views.comparison_frame(store, [], ["loss"], ["train"])
    assert empty.empty and {"method", "seed", "label"} <= set(empty.columns)


# ------------------------------------------------------------------------ charts
def _sizes(chart):
    spec = chart.to_dict()
    inner = spec.get("spec", spec)
    return spec, inner.get("width"), inner.get("height")


@pytest.mark.parametrize("layout", ["overlay", "side"])
@pytest.mark.parametrize("present", [False, True])
def test_every_chart_builds_from_the_frame_it_asks_for(trained, layout, present):
    store, cid, ids, _ = trained
    for group, specs in views.CHART_GROUPS.items():
        view = View(layout=layout, present=present, log=True, band="std", smooth=0.5,
                    site="pre_norm")
        metrics, sites = views.group_request(group, view)
        frame = views.comparison_frame(store, ids, metrics, sites)
        for spec in specs:
            chart = views.build_chart(frame, spec, view, n_seeds=len(SEEDS), width=1000)
            assert chart is not None, spec.key
            d, w, h = _sizes(chart)
            if spec.per_layer or layout == "side":
                assert "facet" in d
                n_cols = len(METHODS) if spec.per_layer and layout == "side" else (
                    d.get("columns") or 1)
                assert n_cols * w <= 1000, (spec.key, n_cols, w)
            if present:
                assert d["config"]["axis"]["labelFontSize"] > 12


def test_chart_options_reach_the_spec(trained):
    store, cid, ids, _ = trained
    frame = views.comparison_frame(store, ids, ["loss"], ["train"])
    spec = views.CHART_SPECS["train_loss"]
    log = views.build_chart(frame, spec, View(log=True), n_seeds=2).to_dict()
    lin = views.build_chart(frame, spec, View(log=False), n_seeds=2).to_dict()
    assert '"type": "log"' in str(log).replace("'", '"')
    assert '"type": "log"' not in str(lin).replace("'", '"')
    acc = views.build_chart(views.comparison_frame(store, ids, ["acc"], ["val"]),
                            views.CHART_SPECS["val_acc"], View(log=True), n_seeds=2)
    assert "log" not in str(acc.to_dict())  # accuracy ignores the log toggle
    band = views.build_chart(frame, spec, View(band="minmax"), n_seeds=2).to_dict()
    single = views.build_chart(frame, spec, View(band="minmax"), n_seeds=1).to_dict()
    area = "'type': 'area'"  # a band's mark (the config names every mark type)
    assert area in str(band) and area not in str(single)


def _data_refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["data"]["name"]] if isinstance(node.get("data"), dict) and "name" in \
            node["data"] else []
        return own + [r for k, v in node.items() if k != "datasets" for r in _data_refs(v)]
    return [r for v in node for r in _data_refs(v)] if isinstance(node, list) else []


@pytest.mark.parametrize("key,layout", [("train_loss", "side"), ("layer_grad", "overlay")])
def test_stable_data_names_the_data_so_new_rows_keep_the_spec(trained, key, layout):
    """Two polls of a live chart (fewer steps, then all) differ only in the datasets' rows
    once named: the browser swaps the rows in instead of drawing the chart anew."""
    store, cid, ids, _ = trained
    spec, view = views.CHART_SPECS[key], View(layout=layout, smooth=0.5)
    metrics, sites = views.group_request("Gradients" if spec.per_layer else "Loss & accuracy",
                                         view)
    frame = views.comparison_frame(store, ids, metrics, sites)
    early, late = (views.build_chart(f, spec, view, n_seeds=2).to_dict()
                   for f in (frame[frame["step"] < 20], frame))
    want = [list(d["datasets"].values()) for d in (early, late)]
    assert want[0] != want[1] and early["datasets"].keys() != late["datasets"].keys()
    for d, rows in zip((early, late), want):
        assert views.stable_data(d, key) is d
        assert list(d["datasets"]) == [key] and list(d["datasets"].values()) == rows
        assert set(_data_refs(d)) == {key}  # every reference follows the rename
    rest = [{k: v for k, v in d.items() if k != "datasets"} for d in (early, late)]
    assert rest[0] == rest[1]


def _spec(frame, spec, view, n_seeds, client=False):
    import altair as alt

    chart = views.build_chart(frame, spec, view, n_seeds=n_seeds, width=900, client=client)
    with alt.data_transformers.disable_max_rows():
        return views.stable_data(chart.to_dict(validate=False), spec.key)


@pytest.mark.parametrize("key", ["train_loss", "val_acc", "layer_grad", "act_var",
                                 "saturation"])
@pytest.mark.parametrize("layout,log,n_seeds", [("overlay", True, 2), ("side", False, 1)])
@pytest.mark.parametrize("client", [False, True])
def test_a_spec_built_once_takes_new_rows_as_a_new_build_would(trained, key, layout, log,
                                                                n_seeds, client):
    """The live view builds a chart's spec once per livespecs.chart_key and gives it the
    rows of each later poll, smoothing weight and site (chart_data, with_rows) when
    their data_shape is the one it was built with: that must be exactly the spec a full
    build of those rows gives, the shapes must match for these (or nothing is reused), and
    the key must change whenever the spec does (other runs shown, another layout). With
    ``client`` (the live view's charts: the browser applies the log scale), the other log
    scale is one more view of the same key."""
    store, cid, ids, _ = trained
    spec = views.CHART_SPECS[key]
    first = View(layout=layout, log=log, smooth=0.0, site="post_norm")
    group = next(g for g, specs in views.CHART_GROUPS.items() if spec in specs)
    frames = {}
    for site in ("post_norm", "post_act"):
        metrics, sites = views.group_request(group, View(site=site), client=client)
        frames[site] = views.comparison_frame(store, ids, metrics, sites)
    base = frames["post_norm"]
    early = base[base["step"] < 10]
    kw = {"n_seeds": n_seeds, "client": client}
    key0 = livespecs.chart_key(early, spec, first, width=900, **kw)
    skeleton = _spec(early, spec, first, n_seeds, client)
    rows = livespecs.chart_data(early, spec, first, **kw)
    assert livespecs.with_rows(skeleton, rows) == skeleton  # the rows are what Altair writes
    built = livespecs.data_shape(pd.DataFrame(next(iter(skeleton["datasets"].values()))))
    assert livespecs.data_shape(rows) == built
    laters = [first, replace(first, smooth=0.6), replace(first, site="post_act")]
    if client:
        laters.append(replace(first, log=not log))
    for later in laters:
        frame = frames[later.site]
        assert livespecs.chart_key(frame, spec, later, width=900, **kw) == key0, later
        rows = livespecs.chart_data(frame, spec, later, **kw)
        assert livespecs.data_shape(rows) == built, later  # reused, not built again
        assert livespecs.with_rows(skeleton, rows) == _spec(frame, spec, later, n_seeds,
                                                            client), later
    fewer = base[base["run"].isin(ids[:2])]  # one method's runs only: another legend
    assert livespecs.chart_key(fewer, spec, first, width=900, **kw) != key0
    other = replace(first, layout="overlay" if layout == "side" else "side")
    assert livespecs.chart_key(base, spec, other, width=900, **kw) != key0


def test_values_of_writes_rows_as_altair_does():
    """livespecs.values_of is Altair's to_values, column by column: NaN, ±inf and missing
    text to None, numpy numbers to Python's, categories and text as their values; and
    Altair's own for what it does not handle (dates)."""
    import altair as alt

    rows = pd.DataFrame({
        "method": pd.Categorical(["batch", None, "layer", "batch"]),
        "label": pd.array(["a", None, "c", "d"], dtype="string"),
        "text": ["x", None, np.nan, "y"],
        "step": np.array([0, 5, 10, 2**40], dtype=np.int64),
        "small": np.array([1, 2, 3, 4], dtype=np.uint8),
        "value": [1.5, np.nan, np.inf, -np.inf],
        "f32": np.array([0.1, np.nan, 3.0, -1e-30], dtype=np.float32),
        "flag": [True, False, True, False],
        "hover": [None, True, None, True],
    })
    expected = alt.utils.data.to_values(rows)["values"]
    got = livespecs.values_of(rows)
    assert got == expected
    assert [type(v) for v in got[0].values()] == [type(v) for v in expected[0].values()]
    assert livespecs.values_of(rows.iloc[:0]) == []
    dated = rows.assign(when=pd.to_datetime(["2026-01-01"] * 4))
    assert livespecs.values_of(dated) == alt.utils.data.to_values(dated)["values"]


def test_a_method_the_log_scale_drops_changes_the_shape_not_the_key(trained):
    """A method whose every loss a log scale drops (<= 0) is in the frame, so in
    the key, but not in the chart's rows: their data_shape differs from a spec built when it
    had values, and the live view builds the chart again rather than reuse a spec whose
    legend and tooltip name it."""
    store, cid, ids, _ = trained
    spec, view = views.CHART_SPECS["train_loss"], View(log=True)
    metrics, sites = views.group_request("Loss & accuracy", view)
    frame = views.comparison_frame(store, ids, metrics, sites)
    broken = frame.copy()
    broken.loc[broken["run"].isin(ids[:2]), "value"] = 0.0  # both seeds of none: <= 0
    key = livespecs.chart_key(frame, spec, view, n_seeds=2, width=900)
    assert livespecs.chart_key(broken, spec, view, n_seeds=2, width=900) == key
    skeleton = _spec(frame, spec, view, 2)
    built = livespecs.data_shape(pd.DataFrame(next(iter(skeleton["datasets"].values()))))
    rows = livespecs.chart_data(broken, spec, view, n_seeds=2)
    assert livespecs.data_shape(rows) != built
    assert "none" not in set(rows["method"].dropna())  # its curve and legend entry are gone
    # ... and the spec built again from these rows is indeed another one
    assert _spec(broken, spec, view, 2)["datasets"] != skeleton["datasets"]
    redrawn = {k: v for k, v in _spec(broken, spec, view, 2).items() if k != "datasets"}
    assert redrawn != {k: v for k, v in skeleton.items() if k != "datasets"}


def test_kept_specs_build_once_per_key_and_again_when_the_shape_changes(trained):
    """KeptSpecs (the live view's store of built specs) calls the full build once for two
    polls of one key, returns what a full build would for the second, and builds again
    when the rows' shape is not the kept one."""
    store, cid, ids, _ = trained
    spec, view = views.CHART_SPECS["train_loss"], View(log=True)
    metrics, sites = views.group_request("Loss & accuracy", view)
    frame = views.comparison_frame(store, ids, metrics, sites)
    kept, builds = livespecs.KeptSpecs(size=2), []

    def get(f):
        def build():
            builds.append(1)
            return _spec(f, spec, view, 2)
        return kept.spec_for(f, spec, view, n_seeds=2, width=900, build=build)

    early = frame[frame["step"] < 10]
    assert get(early) == _spec(early, spec, view, 2) and len(builds) == 1
    assert get(frame) == _spec(frame, spec, view, 2) and len(builds) == 1  # rows only
    broken = frame.copy()
    broken.loc[broken["run"].isin(ids[:2]), "value"] = 0.0  # none: dropped by log
    assert get(broken) == _spec(broken, spec, view, 2) and len(builds) == 2
    assert get(frame[frame["run"].isin(ids[:2])]) is not None and len(kept) == 2  # bounded
    assert get(frame.iloc[:0]) is None


@pytest.fixture(scope="module")
def starting(tmp_path_factory):
    """A comparison of three runs with none, one and all of them trained (three stores)."""
    stages = []
    for trained_runs in (0, 1, 3):
        store = Store(tmp_path_factory.mktemp("starting") / "runs.sqlite")
        configs = views.configs_for(TINY, METHODS, (0,))
        cid, ids = store.create_comparison([c.to_dict() for c in configs],
                                           base=TINY.to_dict(), grid={"norm": list(METHODS)})
        for rid, cfg in list(zip(ids, configs))[:trained_runs]:
            batch, outcome = train(cfg)
            store.append(rid, batch)
            store.finish(rid, outcome.status, outcome.step)
        stages.append((store, ids))
    yield stages
    for store, _ in stages:
        store.close()


@pytest.mark.parametrize("key", ["train_loss", "val_acc", "grad_norm", "layer_grad"])
@pytest.mark.parametrize("layout,log", [("overlay", True), ("side", False)])
def test_a_live_spec_names_every_run_from_the_start_and_keeps_it_while_they_start(
        starting, key, layout, log):
    """With ``pending`` (the live view), a run without values is in the frame as one row
    without value per series: a model-level chart is built before any run has a value,
    names all three methods then, and that spec takes the rows of one run, then of all
    (no rebuild as each run starts), equal to full builds. A per-layer chart waits for a
    run's layers, then names every run in each layer."""
    spec = views.CHART_SPECS[key]
    group = next(g for g, specs in views.CHART_GROUPS.items() if spec in specs)
    view = View(layout=layout, log=log, smooth=0.0)
    metrics, sites = views.group_request(group, view)
    keys, shapes = [], []
    for store, ids in starting:
        frame = views.comparison_frame(store, ids, metrics, sites,
                                       pending=views.pending_series(group))
        plain = views.comparison_frame(store, ids, metrics, sites)
        assert frame["value"].notna().sum() == len(plain)  # the padding holds no value
        keys.append(livespecs.chart_key(frame, spec, view, n_seeds=1, width=900))
        if keys[-1] is None:
            continue
        rows = livespecs.chart_data(frame, spec, view, n_seeds=1)
        assert set(rows["method"].dropna()) == set(METHODS)  # all named, drawn or not
        built = _spec(frame, spec, view, 1)
        shapes.append(livespecs.data_shape(pd.DataFrame(next(iter(built["datasets"].values())))))
        assert livespecs.data_shape(rows) == shapes[-1]
        if len(shapes) > 1:  # the first spec with these rows is this build
            assert livespecs.with_rows(first, rows) == built
        else:
            first = built
    if spec.per_layer:
        assert keys[0] is None and keys[1] == keys[2] and shapes[0] == shapes[1]
    else:
        assert keys[0] == keys[1] == keys[2] and shapes[0] == shapes[1] == shapes[2]
        domain = first["layer"][0]["encoding"]["color"]["scale"]["domain"] if "layer" in first \
            else first["spec"]["layer"][0]["encoding"]["color"]["scale"]["domain"]
        assert sorted(domain) == sorted(METHODS)  # the legend, before any value


def test_with_rows_needs_one_dataset():
    two = {"datasets": {"a": [{"x": 1}], "b": []}, "mark": "line"}
    assert livespecs.with_rows(two, pd.DataFrame({"x": [2]})) is None
    one = {"datasets": {"a": [{"x": 1}]}, "mark": "line"}
    out = livespecs.with_rows(one, pd.DataFrame({"x": [2.0, float("nan")]}))
    assert out == {"datasets": {"a": [{"x": 2.0}, {"x": None}]}, "mark": "line"}
    assert one["datasets"]["a"] == [{"x": 1}]  # untouched


def test_stable_data_numbers_several_datasets_and_keeps_inline_values():
    spec = {"datasets": {"data-a": [{"x": 1}], "data-b": [{"x": 2}]},
            "layer": [{"data": {"name": "data-a"}}, {"data": {"name": "data-b"}},
                      {"data": {"values": [{"x": 3}]}}]}
    out = views.stable_data(spec, "c")
    assert out["datasets"] == {"c": [{"x": 1}], "c-1": [{"x": 2}]}
    assert [lay["data"] for lay in out["layer"]] == [{"name": "c"}, {"name": "c-1"},
                                                     {"values": [{"x": 3}]}]
    assert views.stable_data({"mark": "line"}, "c") == {"mark": "line"}


def test_saturation_picks_saturated_or_dead(trained):
    store, cid, ids, relu = trained
    spec = views.CHART_SPECS["saturation"]
    sig = views.comparison_frame(store, ids, ["saturated", "dead"], ["post_act"])
    assert "saturated" in str(views.build_chart(sig, spec, View()).to_dict())
    relu_ids = store.comparison(relu)["runs"]
    rel = views.comparison_frame(store, relu_ids, ["saturated", "dead"], ["post_act"])
    assert "dead" in str(views.build_chart(rel, spec, View()).to_dict())


def test_no_rows_no_chart(trained):
    store, cid, ids, _ = trained
    frame = views.comparison_frame(store, ids, ["loss"], ["train"])
    assert views.build_chart(frame, views.CHART_SPECS["val_acc"], View()) is None


def test_fit_narrows_wide_grids_and_keeps_small_ones():
    df = pd.DataFrame({"run": "r", "step": [0, 1], "layer": "h1", "site": "param",
                       "metric": "grad_norm", "value": [1.0, 2.0]})
    frames = [df.assign(method=m, seed=0, label=m, run=m) for m in ("batch", "layer")]
    from normlab.views.layercharts import layer_chart
    chart = layer_chart(pd.concat(frames), "grad_norm", "param", layout="side")
    wide = views.fit(chart.copy(deep=True), 2, 2000)
    assert isinstance(wide, alt.FacetChart) and wide.spec.width == chart.spec.width
    narrow = views.fit(chart.copy(deep=True), 12, 1000)
    assert narrow.spec.width == views.PANEL_MIN
    big = views.fit(chart.copy(deep=True), 2, 2000, 1.4)
    assert big.spec.width == int(chart.spec.width * 1.4)
    assert big.to_dict()["config"]["title"]["fontSize"] == round(16 * 1.4)


def test_relevant_view_drops_options_a_chart_ignores():
    view = View(layout="side", log=True, smooth=0.3, band="std", site="pre_norm")
    acc = views.relevant_view(views.CHART_SPECS["val_acc"], view, n_seeds=1)
    assert acc == View(layout="side", log=False, smooth=0.3, band="none", site="post_act")
    var = views.relevant_view(views.CHART_SPECS["act_var"], view, n_seeds=3)
    assert var == view


def test_fit_grid_width_fits_the_column():
    """A grid with method rows: row headers + y axis + columns × (panel + gap) <= width."""
    df = pd.DataFrame({"step": [0, 1], "site": "param", "metric": "grad_norm",
                       "value": [1.0, 2.0], "seed": 0})
    frames = [df.assign(method=m, label=m, run=m + l, layer=l)
              for m in ("batch", "layer", "rms") for l in ("h1", "h2", "h3", "h4")]
    from normlab.views.layercharts import layer_chart
    chart = layer_chart(pd.concat(frames), "grad_norm", "param", layout="side")
    got = views.fit(chart.copy(deep=True), 4, 800)
    total = (views.BESIDE_PANELS + views.ROW_HEADERS
             + 4 * (got.spec.width + views.FACET_GAP))
    assert total <= 800 and got.spec.width < chart.spec.width
    over = views.fit(layer_chart(pd.concat(frames), "grad_norm", "param"), 3, 800)
    assert views.BESIDE_PANELS + 3 * (over.spec.width + views.FACET_GAP) <= 800


def test_chart_rows_pair_half_charts_and_leave_none_alone():
    assert views.chart_rows([True] * 4) == [[0, 1], [2, 3]]
    assert views.chart_rows([True, False, False]) == [[0], [1], [2]]  # Gradients: global alone
    assert views.chart_rows([True, True, True, False]) == [[0, 1], [2], [3]]
    assert views.chart_rows([False, True, True]) == [[0], [1, 2]]
    assert views.chart_rows([]) == []


def test_explorer_lists_every_series_but_histogram_bins(trained):
    from normlab.views import explorer
    store, cid, ids, _ = trained
    runs = store.runs(ids=ids)
    names = explorer.series_catalog(store, ids, runs["config"])
    every = store.metrics(ids)
    expect = {explorer.series_name(m, s, l) for m, s, l in
              every[["metric", "site", "layer"]].astype(str).drop_duplicates().itertuples(
                  index=False) if not m.startswith("hist_")}
    assert set(names) == expect and len(names) == len(expect)
    assert "update_ratio · param · hidden1" in names and "loss · train · model" in names
    assert explorer.parse_series("var · post_norm · hidden2") == ("var", "post_norm", "hidden2")
    with pytest.raises(ValueError, match="metric · site · layer"):
        explorer.parse_series("grad_norm")
    frame = views.comparison_frame(store, ids, ["weight_norm"], ["param"], layers=["hidden1"])
    chart = explorer.explore_chart(frame, "weight_norm · param · hidden1", View(), n_seeds=2)
    data = pd.DataFrame(next(iter(chart.to_dict()["datasets"].values())))
    data = data[data["hover"].isna()]  # the curves' rows, not the hover rules'
    ref = frame.groupby(["method", "step"])["value"].mean()
    np.testing.assert_allclose(data.set_index(["method", "step"])["value"], ref.loc[
        list(zip(data["method"], data["step"]))])
    assert explorer.explore_chart(frame, "weight_norm · param · nowhere", View()) is None


def test_chart_signature_buckets_live_steps_and_keeps_finished_ones():
    runs = pd.DataFrame({"id": ["a", "b", "c"], "status": ["running", "running", "done"],
                         "step": [0, 1049, 333], "total_steps": [2000, 2000, 500]})
    assert views.chart_signature(runs, redraws=40) == (("a", "running", 0),
                                                       ("b", "running", 1000),
                                                       ("c", "done", 333))
    later = runs.assign(step=[40, 1020, 333])  # same buckets (50 steps each): same key
    assert views.chart_signature(later, 40) == views.chart_signature(runs, 40)
    assert views.chart_signature(runs.assign(step=[50, 1049, 333]), 40)[0] == ("a", "running", 50)


# ------------------------------------------------------------------ one spec per tab
def _units(node):
    """(view name, x field) of every unit with a name in a Vega-Lite spec."""
    if isinstance(node, dict):
        if "mark" in node and "name" in node:
            yield node["name"], ((node.get("encoding") or {}).get("x") or {}).get("field")
        for value in node.values():
            yield from _units(value)
    elif isinstance(node, list):
        for item in node:
            yield from _units(item)


def _x_scales(vega: dict):
    """(name, domainRaw) of every x scale of a compiled Vega spec, at any depth."""
    for scale in vega.get("scales", []):
        if scale["name"] == "x" or scale["name"].endswith("_x"):
            yield scale["name"], scale.get("domainRaw")
    for mark in vega.get("marks", []):
        if isinstance(mark, dict):
            yield from _x_scales(mark)


@pytest.mark.parametrize("layout,groups", [("overlay", ("Loss & accuracy", "Gradients")),
                                           ("side", ("Loss & accuracy",))])
def test_a_tab_is_one_spec_whose_charts_zoom_their_steps_together(trained, layout, groups):
    """Every chart of a tab in one spec: one 'zoom' param (an interval on x bound to the
    scales) defined in every chart, and — compiled by Vega-Lite — every chart's x scale
    takes its domain from that one selection; hover stays per chart; rows fit the width."""
    import json

    import vl_convert as vlc

    from normlab.views import linked

    store, cid, ids, _ = trained
    view = View(layout=layout, log=True)
    for group in groups:  # pairs of model-level charts; one beside per-layer grids
        specs = views.CHART_GROUPS[group]
        metrics, sites = views.group_request(group, view)
        frame = views.comparison_frame(store, ids, metrics, sites)
        built = [(s, views.build_chart(frame, s, views.relevant_view(s, view, 2),
                                       n_seeds=2, width=800)) for s in specs]
        charts = [c.to_dict() for _, c in built]
        halves = [layout == "overlay" and not s.per_layer for s, _ in built]
        tab = linked.compose(charts, halves, 800)
        names = [p["name"] for p in tab["params"]]
        assert len(names) == len(set(names)), names  # one param per name
        zoom = [p for p in tab["params"] if p["name"] == "zoom"]
        assert len(zoom) == 1 and zoom[0]["bind"] == "scales"
        assert zoom[0]["select"] == {"type": "interval", "encodings": ["x"]}
        rows = [r.get("hconcat", [r]) for r in tab["vconcat"]]
        subs = [c for row in rows for c in row]
        assert len(subs) == len(charts)
        for sub in subs:  # the param is in each chart, on a unit drawing x = step
            units = dict(_units(sub))
            assert any(units.get(v) == "step" for v in zoom[0]["views"]), group
        hovers = [p for p in tab["params"] if p["name"].startswith("hover")]
        assert len(hovers) == len(charts)  # hover stays per chart
        for i, sub in enumerate(subs):
            used = set(re.findall(r'"param": "(hover[^"]*)"', json.dumps(sub)))
            assert used == {f"hover_{i}"}, used
        for row in rows:  # two model-level charts side by side share the column
            if len(row) == 2:
                assert sum(c["width"] + linked.Y_AXIS for c in row) + linked.SPACING <= 800
        assert set(tab["datasets"]) == {k for c in charts for k in c["datasets"]}
        # small charts: SVG as they were one by one (hover points = rows of the data)
        assert max(map(linked.point_rows, charts)) <= linked.SVG_ROWS
        assert tab["usermeta"]["embedOptions"]["renderer"] == "svg"
        compiled = vlc.vegalite_to_vega(tab)
        scales = list(_x_scales(compiled))
        assert len(scales) == len(charts), scales  # one x scale per chart (own width) ...
        # ... each with its domain taken from the one shared selection
        assert all(raw == {"signal": 'zoom["step"]'} for _, raw in scales), scales
        tops = [s for s in compiled["signals"] if s["name"] == "zoom_step"]
        assert len(tops) == 1  # one state: the chart zoomed last sets every chart's steps


def test_point_rows_counts_point_marks_of_their_data():
    from normlab.views import linked

    spec = {"datasets": {"a": [{}] * 5, "b": [{}] * 7}, "data": {"name": "a"},
            "layer": [{"mark": "line"}, {"mark": {"type": "point"}},
                      {"data": {"name": "b"}, "mark": "rect"}]}
    assert linked.point_rows(spec) == 5 + 7  # the line's rows are not counted
    big = {**spec, "datasets": {"a": [{}] * 2500, "b": []}}
    assert linked.compose([big])["usermeta"]["embedOptions"]["renderer"] == "canvas"
    # a curve chart's hover rules: only its rows marked hover are drawn by the rule
    curve = {"datasets": {"a": [{}] * 900 + [{"hover": True}] * 100}, "data": {"name": "a"},
             "layer": [{"mark": "line"}, {"mark": "rule", "transform": [
                 {"filter": "datum.hover"}]}]}
    assert linked.point_rows(curve) == 100
    assert linked.compose([curve])["usermeta"]["embedOptions"]["renderer"] == "svg"
    many = {**curve, "datasets": {"a": [{}] * (linked.CANVAS_ROWS + 1)}}
    assert linked.compose([many])["usermeta"]["embedOptions"]["renderer"] == "canvas"


def test_compose_refuses_nothing_and_mismatched_halves():
    from normlab.views import linked

    with pytest.raises(ValueError, match="at least one"):
        linked.compose([])
    with pytest.raises(ValueError, match="halves has 1 entries for 2 specs"):
        linked.compose([{"mark": "line"}, {"mark": "line"}], [True])
