"""The sweep view's computing (normlab.views.sweep) against hand-computed values, the range
syntax of grids (normlab.runs.comparisons.parse_values), and the CLI's ranges and sweep
table."""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from normlab import cli
from normlab.runs.comparisons import parse_values
from normlab.runs.store import Store
from normlab.training.config import ConfigError, RunConfig
from normlab.views import sweep


def rows(values: dict[str, list[tuple[int, float]]], metric="acc") -> pd.DataFrame:
    return pd.DataFrame([{"run": r, "step": s, "layer": "model", "site": "val",
                          "metric": metric, "value": v}
                         for r, pairs in values.items() for s, v in pairs])


def runs_frame(specs: list[tuple[str, str, float, int, str]], field="lr") -> pd.DataFrame:
    """(id, norm, x, seed, status) → a Store.runs-like frame."""
    return pd.DataFrame({
        "id": [s[0] for s in specs], "status": [s[4] for s in specs],
        "error": [None] * len(specs),
        "config": [RunConfig(norm=s[1], seed=s[3], **{field: s[2]}).to_dict() for s in specs]})


def test_final_values_last_best_and_mean_of_last_k():
    r = rows({"a": [(0, 0.1), (20, 0.9), (10, 0.5), (30, 0.7)], "b": [(0, 0.3)]})
    assert sweep.final_values(r, "last").to_dict() == {"a": 0.7, "b": 0.3}
    assert sweep.final_values(r, "best").to_dict() == {"a": 0.9, "b": 0.3}
    mean = sweep.final_values(r, "mean_last", k=2)
    assert mean["a"] == pytest.approx((0.9 + 0.7) / 2) and mean["b"] == 0.3
    loss = rows({"a": [(0, 2.0), (10, 0.5), (20, 0.8)]}, metric="loss")
    assert sweep.final_values(loss, "best")["a"] == 0.5  # lower is better for a loss
    with pytest.raises(ValueError, match="unknown final 'median'"):
        sweep.final_values(r, "median")


def test_aggregate_matches_hand_computed_means_and_counts():
    specs = [("r1", "batch", 0.1, 0, "done"), ("r2", "batch", 0.1, 1, "done"),
             ("r3", "batch", 1.0, 0, "done"), ("r4", "batch", 1.0, 1, "diverged"),
             ("r5", "none", 0.1, 0, "done"), ("r6", "none", 0.1, 1, "running")]
    finals = pd.Series({"r1": 0.8, "r2": 0.6, "r3": 0.9, "r4": 0.95, "r5": 0.2, "r6": 0.3})
    frame = sweep.sweep_frame(runs_frame(specs), finals, "lr")
    assert frame["diverged"].tolist() == [False, False, False, True, False, False]
    assert frame["pending"].tolist() == [False] * 5 + [True]
    agg = sweep.aggregate(frame).set_index(["method", "x"])
    b01 = agg.loc[("batch", 0.1)]
    assert b01["mean"] == pytest.approx(0.7) and b01["std"] == pytest.approx(0.1)
    assert (b01["min"], b01["max"], b01["n"]) == (0.6, 0.8, 2)
    b1 = agg.loc[("batch", 1.0)]  # the diverged seed's 0.95 never enters the mean
    assert b1["mean"] == 0.9 and b1["n"] == 1 and b1["n_diverged"] == 1
    n01 = agg.loc[("none", 0.1)]  # the running seed's value is not final
    assert n01["mean"] == 0.2 and n01["n_pending"] == 1
    assert list(agg.index.get_level_values("method").unique()) == ["none", "batch"]
    table = sweep.sweep_table(frame, "lr")
    assert table.loc["0.1", "batch"] == "0.700 ± 0.100"
    assert table.loc["1", "batch"] == "0.900 ÷1" and table.loc["0.1", "none"] == "0.200 …"
    assert table.loc["1", "none"] == ""


def test_swept_fields_and_series_split_by_an_independent_field():
    configs = [RunConfig(lr=lr, weight_decay=wd, seed=s).to_dict()
               for lr in (0.1, 1.0) for wd in (0.0, 0.01) for s in (0, 1)]
    assert sweep.swept_fields(configs) == ["lr", "weight_decay"]
    assert sweep.swept_fields(configs, {"weight_decay": [0, 0.01]})[0] == "weight_decay"
    runs = pd.DataFrame({"id": [f"r{i}" for i in range(8)], "status": "done",
                         "error": None, "config": configs})
    frame = sweep.sweep_frame(runs, pd.Series(1.0, index=runs["id"]), "lr")
    assert set(frame["series"]) == {"batch · weight_decay=0", "batch · weight_decay=0.01"}
    # a field tied to the swept one (lr ∝ batch size) does not split the lines
    tied = [RunConfig(batch_size=b, lr=0.1 * b / 32).to_dict() for b in (2, 8, 32)]
    runs = pd.DataFrame({"id": ["a", "b", "c"], "status": "done", "error": None,
                         "config": tied})
    frame = sweep.sweep_frame(runs, pd.Series(1.0, index=["a", "b", "c"]), "batch_size")
    assert set(frame["series"]) == {"batch"}


def test_log_spacing_decides_the_axis():
    assert sweep.log_spaced([0.001, 0.01, 0.1, 1])
    assert sweep.log_spaced([2, 4, 8, 16, 32])
    assert not sweep.log_spaced([1, 2, 3, 4, 5])
    assert not sweep.log_spaced([-1, 0, 1])


def test_sweep_chart_draws_band_line_dots_and_crosses():
    specs = [("r1", "batch", 0.01, 0, "done"), ("r2", "batch", 0.01, 1, "done"),
             ("r3", "batch", 1.0, 0, "diverged"), ("r4", "batch", 1.0, 1, "done"),
             ("r5", "none", 0.01, 0, "done"), ("r6", "none", 1.0, 0, "done")]
    finals = pd.Series({"r1": 0.5, "r2": 0.7, "r3": 0.1, "r4": 0.9, "r5": 0.2, "r6": 0.4})
    frame = sweep.sweep_frame(runs_frame(specs), finals, "lr")
    spec = sweep.sweep_chart(frame, "lr", y_title="validation acc (last)").to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in spec["layer"]]
    assert marks == ["area", "line", "circle", "point"]
    assert spec["layer"][1]["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["layer"][3]["mark"]["shape"] == "cross"
    datasets = list(spec["datasets"].values())
    crosses = next(d for d in datasets if len(d) == 1 and d[0].get("diverged"))
    assert crosses[0]["run"] == "r3" and crosses[0]["value"] == 0.0  # at the axis bottom
    loss = sweep.sweep_chart(frame, "lr", log_y=True, band=None).to_dict()
    assert [layer["mark"]["type"] for layer in loss["layer"]][0] == "line"
    assert loss["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"


def test_parse_values_ranges_and_lists():
    assert parse_values("lr", "logspace:0.001:10:9") == [0.001, 0.00316, 0.01, 0.0316, 0.1,
                                                         0.316, 1.0, 3.16, 10.0]
    assert parse_values("batch_size", "logspace:2:128:7") == [2, 4, 8, 16, 32, 64, 128]
    assert parse_values("init_scale", "linspace:0.5:2:4") == [0.5, 1.0, 1.5, 2.0]
    assert parse_values("width", "linspace:10:11:5") == [10, 11]  # ints rounded, de-duplicated
    assert parse_values("norm", "batch, layer") == ["batch", "layer"]
    for bad, msg in (("logspace:0:1:3", "above 0"), ("logspace:1:2", "is not a range"),
                     ("linspace:1:2:0", "N between 1"), ("0.1,,0.2", "empty item")):
        with pytest.raises(ConfigError, match=msg):
            parse_values("lr", bad)
    with pytest.raises(ConfigError, match="numeric fields"):
        parse_values("norm", "logspace:1:10:3")


def test_cli_ranges_make_the_grid(tmp_path, monkeypatch, capsys):
    import normlab.runs.comparisons as comparisons

    monkeypatch.setattr(comparisons, "ensure_engine", lambda *a, **k: None)
    store = tmp_path / "s.sqlite"
    code = cli.main(["run", "--lr", "logspace:0.01:1:3", "--batch_size", "logspace:8:32:3",
                     "--no-wait", "--store", str(store), "--steps", "5"])
    assert code == 0
    runs = Store(store).runs()
    assert sorted({c["lr"] for c in runs["config"]}) == [0.01, 0.1, 1.0]
    assert sorted({c["batch_size"] for c in runs["config"]}) == [8, 16, 32]
    assert cli.main(["run", "--lr", "logspace:0:1:3", "--store", str(store)]) == 2
    assert "logspace needs LOW and HIGH above 0" in capsys.readouterr().err


def test_cli_show_prints_the_sweep_table(tmp_path, capsys):
    from normlab.training.trainer import train

    store = Store(tmp_path / "s.sqlite")
    configs = [RunConfig(norm="layer", lr=lr, steps=10, width=8, depth=1, eval_interval=5,
                         record_interval=5) for lr in (0.01, 1.0)]
    cid, ids = store.create_comparison([c.to_dict() for c in configs], grid={"lr": [0.01, 1]})
    accs = []
    for rid, cfg in zip(ids, configs):
        batch, outcome = train(cfg)
        store.append(rid, batch)
        store.finish(rid, outcome.status, outcome.step)
        f = batch.to_frame()
        accs.append(f[(f.site == "val") & (f.metric == "acc")].sort_values("step").value.iloc[-1])
    assert cli.main(["show", cid, "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "sweep over lr" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("0.01 "))
    assert f"{accs[0]:.3f}" in line


def test_reading_final_metrics_of_many_runs_is_fast(tmp_path):
    """A quick version of benchmarks/bench_sweep.py: 300 runs' finals well under a second."""
    from benchmarks.bench_sweep import fill_store, read_finals

    store = fill_store(tmp_path / "s.sqlite", n_runs=300)
    t = time.perf_counter()
    frame = read_finals(store)
    elapsed = time.perf_counter() - t
    assert len(frame) == 300 and frame["value"].notna().all()
    assert elapsed < 1.5, elapsed
