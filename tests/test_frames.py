"""normlab.views.frames: EMA against closed forms and TensorBoard's loop, downsampling bounds and
extremes, seed aggregation against plain pandas, run-table joins, layer-dynamics frames."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normlab.views import frames as F
from normlab.measure.schema import HIST_BINS, HIST_METRICS, hist_edges


def tensorboard_ema(values, weight):
    """TensorBoard's resmoothDataset loop, transcribed (the oracle)."""
    last, n, out = 0.0, 0, []
    for v in values:
        if not np.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        debias = 1.0 if weight == 1 else 1 - weight ** n
        out.append(last / debias)
    return np.array(out)


def series(n=50, seed=0, **cols):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"step": np.arange(n), "value": rng.normal(size=n), **cols})


# ------------------------------------------------------------------------------ ema
def test_ema_closed_form():
    w = 0.5
    got = F.ema([1.0, 3.0, 2.0], w)
    # y_n = (1 - w) * sum_k w^(n-k) v_k / (1 - w^n)
    expect = [1.0, (0.25 * 1 + 0.5 * 3) / 0.75, (0.125 * 1 + 0.25 * 3 + 0.5 * 2) / 0.875]
    np.testing.assert_allclose(got, expect, rtol=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.6, 0.9, 0.99])
def test_ema_matches_tensorboard(weight):
    rng = np.random.default_rng(1)
    v = rng.normal(size=300)
    v[[0, 17, 40, 41]] = np.nan
    v[100] = np.inf
    np.testing.assert_allclose(F.ema(v, weight), tensorboard_ema(v, weight), rtol=1e-10,
                               equal_nan=True)


def test_ema_debiased_constant_is_constant():
    # Without debiasing the first output would be (1 - w) * 5 = 0.5.
    np.testing.assert_allclose(F.ema(np.full(20, 5.0), 0.9), 5.0, rtol=1e-12)


def test_ema_weight_zero_is_identity_and_bad_weight_raises():
    v = np.array([3.0, np.nan, -1.0])
    np.testing.assert_array_equal(F.ema(v, 0.0), v)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="weight"):
            F.ema(v, bad)


def test_smooth_per_series_keeps_row_order():
    a = series(40, 0, run="a", layer="model", site="train", metric="loss")
    b = series(30, 1, run="b", layer="model", site="train", metric="loss")
    df = pd.concat([a, b]).sample(frac=1.0, random_state=0)  # shuffled rows
    out = F.smooth(df, 0.8)
    assert list(out["step"]) == list(df["step"]) and list(out["run"]) == list(df["run"])
    for run, part in (("a", a), ("b", b)):
        got = out[out["run"] == run].sort_values("step")["value"].to_numpy()
        np.testing.assert_allclose(got, tensorboard_ema(part["value"].to_numpy(), 0.8))


# ------------------------------------------------------------------------ downsample
def test_downsample_bounds_keeps_ends_and_extremes():
    rng = np.random.default_rng(2)
    n = 10_000
    v = rng.normal(size=n)
    v[1234], v[8765] = 50.0, -50.0  # spikes that must survive
    steps = np.sort(rng.choice(100_000, n, replace=False))  # irregular steps
    big = pd.DataFrame({"run": "a", "metric": "loss", "step": steps, "value": v,
                        "lo": v - 1, "hi": v + 1})
    small = pd.DataFrame({"run": "b", "metric": "loss", "step": np.arange(10),
                          "value": np.arange(10.0), "lo": 0.0, "hi": 1.0})
    out = F.downsample(pd.concat([big, small]), max_points=600)
    a = out[out["run"] == "a"]
    assert 300 <= len(a) <= 600
    assert a["step"].iloc[0] == steps[0] and a["step"].iloc[-1] == steps[-1]
    assert a["step"].is_monotonic_increasing
    assert a["value"].max() == 50.0 and a["value"].min() == -50.0
    np.testing.assert_array_equal(a["lo"], a["value"] - 1)  # whole rows are kept
    assert set(a["step"]) <= set(steps)
    pd.testing.assert_frame_equal(out[out["run"] == "b"].reset_index(drop=True),
                                  small.reset_index(drop=True))


def test_downsample_noop_when_short_and_rejects_tiny_budget():
    df = series(100, run="a")
    pd.testing.assert_frame_equal(F.downsample(df, 600), df)
    with pytest.raises(ValueError, match="max_points"):
        F.downsample(df, 2)


# --------------------------------------------------------------------- aggregate_seeds
def seeds_frame():
    rng = np.random.default_rng(3)
    parts = []
    for method in ("batch", "layer"):
        for seed in range(3):
            for metric in ("loss", "acc"):
                parts.append(pd.DataFrame({
                    "run": f"{method}{seed}", "method": method, "label": method, "seed": seed,
                    "step": np.arange(0, 50, 5), "layer": "model", "site": "train",
                    "metric": metric, "value": rng.normal(size=10)}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("band", ["minmax", "std", None])
def test_aggregate_seeds_exact(band):
    df = seeds_frame()
    out = F.aggregate_seeds(df, band=band)
    keys = ["method", "label", "layer", "site", "metric", "step"]
    ref = df.groupby(keys)["value"]
    merged = out.set_index(keys).sort_index()
    np.testing.assert_allclose(merged["value"], ref.mean().sort_index(), rtol=1e-12)
    assert (merged["n_seeds"] == 3).all()
    if band == "minmax":
        np.testing.assert_allclose(merged["lo"], ref.min().sort_index())
        np.testing.assert_allclose(merged["hi"], ref.max().sort_index())
    elif band == "std":
        sd = ref.std(ddof=1).sort_index()
        np.testing.assert_allclose(merged["lo"], ref.mean().sort_index() - sd, rtol=1e-12)
        np.testing.assert_allclose(merged["hi"], ref.mean().sort_index() + sd, rtol=1e-12)
    else:
        assert "lo" not in out and "hi" not in out
    assert len(out) == ref.ngroups


def test_aggregate_single_seed_std_band_is_the_value_and_bad_band_raises():
    df = seeds_frame()
    one = F.aggregate_seeds(df[df["seed"] == 0], band="std")
    np.testing.assert_array_equal(one["lo"], one["value"])
    with pytest.raises(ValueError, match="band"):
        F.aggregate_seeds(df, band="iqr")


# ------------------------------------------------------------------------ with_methods
def runs_table():
    return pd.DataFrame({
        "id": ["r1", "r2", "r3", "r4"], "norm": ["batch", "batch", "layer", "batch"],
        "seed": pd.array([0, 1, 0, 0], dtype="Int64"), "name": ["b0", "b1", "l0", "b-other"],
        "comparison_id": ["c1", "c1", "c1", "c2"], "config": [{}, {}, {}, {}]})


def metric_rows(run_ids):
    run = pd.Categorical(np.repeat(run_ids, 3))  # the store returns categoricals
    return pd.DataFrame({"run": run, "step": np.tile([0, 1, 2], len(run_ids)),
                         "layer": "model", "site": "train", "metric": "loss", "value": 1.0})


def test_with_methods_labels():
    runs = runs_table()
    one = F.with_methods(metric_rows(["r1", "r2", "r3", "zz"]), runs)
    assert len(one) == 9  # unknown run dropped
    assert one.groupby("run", observed=True)["method"].first().to_dict() == {
        "r1": "batch", "r2": "batch", "r3": "layer"}
    assert set(one["label"]) == {"batch", "layer"}  # one comparison: label = method
    assert one["seed"].dtype == np.int64 and list(one["seed"].unique()) == [0, 1]
    two = F.with_methods(metric_rows(["r1", "r3", "r4"]), runs,
                         comparison_names={"c2": "lr sweep"})
    labels = two.groupby("run", observed=True)["label"].first().to_dict()
    assert labels == {"r1": "batch · c1", "r3": "layer", "r4": "batch · lr sweep"}
    named = F.with_methods(metric_rows(["r1"]), runs, label="name")
    assert set(named["label"]) == {"b0"}
    with pytest.raises(ValueError, match="label"):
        F.with_methods(metric_rows(["r1"]), runs, label="seed")


def test_with_methods_labels_say_which_setting_differs():
    """Runs of one method at several learning rates (from two comparisons): the label says
    the lr in words, seeds of one lr share it; a method at one setting keeps its name."""
    cfg = lambda lr, seed: {"lr": lr, "seed": seed, "width": 100, "norm": "batch"}  # noqa: E731
    runs = pd.DataFrame({
        "id": ["a0", "a1", "b0", "b1", "l0"], "norm": ["batch"] * 4 + ["layer"],
        "seed": pd.array([0, 1, 0, 1, 0], dtype="Int64"), "name": [None] * 5,
        "comparison_id": ["c1", "c1", "c2", "c2", "c1"],
        "config": [cfg(0.1, 0), cfg(0.1, 1), cfg(0.01, 0), cfg(0.01, 1), cfg(0.1, 0)]})
    out = F.with_methods(metric_rows(["a0", "a1", "b0", "b1", "l0"]), runs)
    labels = out.groupby("run", observed=True)["label"].first().to_dict()
    assert labels == {"a0": "batch · lr 0.1", "a1": "batch · lr 0.1", "b0": "batch · lr 0.01",
                      "b1": "batch · lr 0.01", "l0": "layer"}
    assert list(F.setting_labels(runs["config"])) == ["lr 0.1"] * 2 + ["lr 0.01"] * 2 + ["lr 0.1"]
    assert list(F.setting_labels(runs["config"], among=[0, 1])) == [""] * 5  # only seeds differ


# ------------------------------------------------------------------ layer-dynamics frames
def hist_rows(steps, seeds=(0, 1), layer="hidden1", site="pre_norm", seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for s in seeds:
        h = rng.random((len(steps), HIST_BINS))
        h /= h.sum(axis=1, keepdims=True)
        for i, m in enumerate(HIST_METRICS):
            parts.append(pd.DataFrame({"run": f"batch{s}", "method": "batch", "label": "batch",
                                       "seed": s, "step": steps, "layer": layer, "site": site,
                                       "metric": m, "value": h[:, i]}))
    return pd.concat(parts, ignore_index=True)


def test_hist_time_frame_fractions_and_edges():
    df = hist_rows(np.arange(0, 100, 10))
    out = F.hist_time_frame(df, "pre_norm")
    sums = out.groupby(["method", "layer", "step"])["fraction"].sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-12)
    edges = hist_edges("pre_norm")
    np.testing.assert_array_equal(out["lo"], edges[out["bin"]])
    np.testing.assert_array_equal(out["hi"], edges[out["bin"] + 1])
    assert (out["step_end"] - out["step"] == 10).all()
    # the mean over seeds, bin 5 at step 30
    ref = df[(df["step"] == 30) & (df["metric"] == "hist_05")]["value"].mean()
    got = out[(out["step"] == 30) & (out["bin"] == 5)]["fraction"].item()
    assert got == pytest.approx(ref)


def test_hist_time_frame_buckets_steps():
    df = hist_rows(np.arange(1000))
    out = F.hist_time_frame(df, "pre_norm", max_steps=50)
    assert out["step"].nunique() == 50 and (out["step_end"] - out["step"] == 20).all()
    np.testing.assert_allclose(out.groupby("step")["fraction"].sum(), 1.0, rtol=1e-12)
    ref = df[(df["step"] < 20) & (df["metric"] == "hist_00")]["value"].mean()
    assert out[(out["step"] == 0) & (out["bin"] == 0)]["fraction"].item() == pytest.approx(ref)


def test_hist_step_frame_nearest_step():
    df = pd.concat([hist_rows(np.arange(0, 100, 10)),
                    hist_rows(np.arange(0, 100, 25), layer="hidden2")])
    out = F.hist_step_frame(df, "pre_norm", 33)
    assert out.groupby("layer")["step"].first().to_dict() == {"hidden1": 30, "hidden2": 25}
    assert len(out) == 2 * HIST_BINS
    np.testing.assert_allclose(out.groupby("layer")["fraction"].sum(), 1.0)


def test_percentile_frame_wide_mean_over_seeds():
    rows = []
    for seed in (0, 1):
        for p, base in (("p15", -1.0), ("p50", 0.0), ("p85", 1.0)):
            rows.append(pd.DataFrame({"method": "rms", "label": "rms", "seed": seed,
                                      "step": [0, 10], "layer": "hidden1", "site": "post_norm",
                                      "metric": p, "value": [base + seed, base + 2 * seed]}))
    out = F.percentile_frame(pd.concat(rows), "post_norm")
    assert list(out.columns) == ["method", "label", "layer", "step", "p15", "p50", "p85",
                                 "p50_lo", "p50_hi"]
    np.testing.assert_allclose(out["p15"], [-0.5, 0.0])
    np.testing.assert_allclose(out["p85"], [1.5, 2.0])
    assert out["p50_lo"].isna().all()  # runs stored before the interval was recorded


def _hist_run(run, seed, lo, hi, fractions, under=0.0, over=0.0, step=0):
    metrics = [f"hist_{i:02d}" for i in range(32)] + ["hist_lo", "hist_hi", "hist_under",
                                                       "hist_over"]
    return pd.DataFrame({"run": run, "method": "none", "label": "none", "seed": seed,
                         "step": step, "layer": "hidden1", "site": "post_norm",
                         "metric": metrics, "value": list(fractions) + [lo, hi, under, over]})


def test_hist_frames_use_each_runs_recorded_range_and_report_overflow():
    frac = np.zeros(32)
    frac[[0, 31]] = [0.25, 0.5]
    df = pd.concat([_hist_run("r1", 0, -2.0, 6.0, frac, under=0.1, over=0.15),
                    _hist_run("r1", 0, -2.0, 6.0, frac, over=0.3, step=5)])
    out = F.hist_step_frame(df, "post_norm", 0)
    np.testing.assert_allclose(out["lo"], np.linspace(-2, 6, 33)[:-1])  # bins of 0.25
    np.testing.assert_allclose(out["hi"], np.linspace(-2, 6, 33)[1:])
    np.testing.assert_allclose(out["fraction"], frac)
    heat = F.hist_time_frame(df, "post_norm")
    assert heat["lo"].min() == -2.0 and heat["hi"].max() == 6.0
    worst = F.overflow_frame(df, "post_norm").iloc[0]
    assert (worst["under"], worst["over"]) == (0.1, 0.3)


def test_seeds_with_different_fitted_ranges_are_not_averaged_bin_by_bin():
    a, b = np.zeros(32), np.zeros(32)
    a[10], b[20] = 1.0, 1.0
    df = pd.concat([_hist_run("r1", 0, -2.0, 6.0, a), _hist_run("r2", 1, -4.0, 4.0, b)])
    out = F.hist_step_frame(df, "post_norm", 0)
    assert out["fraction"].sum() == 1.0 and out.loc[out["fraction"] > 0, "bin"].tolist() == [10]


def test_natural_order():
    assert F.natural_order(["out", "hidden10", "hidden2", "hidden1"]) == [
        "hidden1", "hidden2", "hidden10", "out"]
