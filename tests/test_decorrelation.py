"""Lab 2's statistics (normlab.measure.decorrelation) against numpy and constructed cases,
the opt-in config fields through the trainer, the storage estimate, the CLI and exports."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from normlab.measure import decorrelation as dc
from normlab.training.config import ConfigError, RunConfig, validate
from normlab.training.limits import snapshot_values, values_per_record
from normlab.training.trainer import train


def correlated(n=400, c=12, seed=0) -> np.ndarray:
    """Samples with correlated features of different means and scales."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) + 2 * np.eye(c)
    return rng.normal(size=(n, c)) @ mix + rng.normal(size=c) * 3


def test_correlation_and_spectra_match_numpy():
    x = correlated()
    mean, cov = dc.covariance(x)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x.T, bias=True), atol=1e-10)
    corr = dc.correlation(cov)
    ref = np.corrcoef(x.T)
    np.testing.assert_allclose(corr, ref, atol=1e-12)
    iu = np.triu_indices(12, 1)
    assert dc.mean_abs_offdiag(corr) == pytest.approx(np.abs(ref[iu]).mean())
    within = [abs(ref[i, j]) for i, j in zip(*iu) if i // 4 == j // 4]
    assert dc.mean_abs_offdiag(corr, 4) == pytest.approx(np.mean(within))
    np.testing.assert_allclose(dc.spectrum(cov), np.sort(np.linalg.eigvalsh(cov))[::-1])
    blocks = np.concatenate([np.linalg.eigvalsh(np.cov(x[:, a:a + 4].T, bias=True))
                             for a in (0, 4, 8)])
    np.testing.assert_allclose(dc.group_spectrum(cov, 4), np.sort(blocks)[::-1], atol=1e-10)
    var = x.var(0)
    ms, vs = dc.spreads(mean, np.diag(cov))
    assert ms == pytest.approx(np.std(x.mean(0)) / np.sqrt(var.mean()))
    assert vs == pytest.approx(np.std(var) / var.mean())
    snap = dc.matrix_values(x, 8, 4, spectra=True)
    assert snap["r02_07"] == pytest.approx(np.corrcoef(x[:, :8].T)[2, 7])
    assert len([k for k in snap if k.startswith("r")]) == 28 == 8 * 7 // 2
    assert len(snap) == dc.values_per_snapshot(8) // 2 + 8  # one triangle, two spectra
    np.testing.assert_allclose([snap[f"eig{k:02d}"] for k in range(8)],
                               np.linalg.eigvalsh(np.cov(x[:, :8].T, bias=True))[::-1])


def test_whitened_data_has_no_correlation_and_a_flat_spectrum():
    x = correlated(n=300, c=8, seed=1)
    mean, cov = dc.covariance(x)
    lam, U = np.linalg.eigh(cov)
    white = (x - mean) @ U @ np.diag(lam ** -0.5) @ U.T  # ZCA: identity covariance
    values = dc.curve_values(white, 4)
    assert values["corr_offdiag"] < 1e-10 and values["corr_offdiag_group"] < 1e-10
    assert values["mean_spread"] < 1e-10 and values["var_spread"] < 1e-10
    snap = dc.matrix_values(white, 8, 4, spectra=True)
    eig = [v for k, v in snap.items() if "eig" in k]
    np.testing.assert_allclose(eig, 1.0, atol=1e-10)
    assert dc.curve_values(x, 4)["corr_offdiag"] > 0.1  # and the raw data is not


def test_a_constant_feature_has_no_correlation_and_is_left_out():
    x = correlated(c=4)
    x[:, 1] = 3.0
    corr = dc.correlation(dc.covariance(x)[1])
    assert np.isnan(corr[1]).all() and np.isnan(corr[:, 1]).all()
    keep = [0, 2, 3]
    ref = np.corrcoef(x[:, keep].T)
    assert dc.mean_abs_offdiag(corr) == pytest.approx(np.abs(ref[np.triu_indices(3, 1)]).mean())


def test_conv_channels_are_the_features():
    t = torch.randn(5, 3, 4, 2)
    x = dc.features_of(t)
    assert x.shape == (40, 3)
    np.testing.assert_allclose(x[:, 1], t[:, 1].reshape(-1).double().numpy())


def test_snapshot_steps_are_log_spaced_from_the_first_to_the_last():
    assert dc.snapshot_steps(1000, 6) == [0, 3, 15, 62, 250, 999]
    assert dc.snapshot_steps(1000, 1) == [999]
    assert dc.snapshot_steps(3, 6) == [0, 1, 2]
    assert dc.snapshot_steps(1000, 0) == []
    assert dc.matrix_features(64, 16) == 32 and dc.matrix_features(100, 10) == 30
    assert dc.matrix_features(8, 16) == 8 and dc.matrix_features(100, 64) == 32


def test_the_fields_are_off_by_default_and_checked():
    assert not RunConfig().decorrelation and RunConfig().corr_snapshots == 0
    with pytest.raises(ConfigError, match="corr_snapshots must be 0 .none. to 12 .got 13."):
        validate(RunConfig(corr_snapshots=13))
    on = RunConfig(decorrelation=True, depth=3)
    assert values_per_record(on) - values_per_record(RunConfig(depth=3)) == 3 * 8


TINY = dict(dataset="digits", width=16, depth=2, batch_size=64, steps=6, record_interval=2,
            eval_interval=6, group_size=8)


@pytest.fixture(scope="module")
def whiten_run():
    cfg = RunConfig(norm="whiten", decorrelation=True, corr_snapshots=3, **TINY)
    return cfg, train(cfg)[0].to_frame()


def test_whiten_in_training_mode_decorrelates_within_its_groups_only(whiten_run):
    cfg, frame = whiten_run
    out = frame[frame["site"] == "xhat"].set_index(["step", "layer", "metric"])["value"]
    assert sorted(frame[frame["site"] == "xhat"]["step"].unique()) == [0, 2, 4]
    for layer in ("hidden1", "hidden2"):
        assert out[(4, layer, "corr_offdiag_group")] < 1e-3
        assert out[(4, layer, "corr_offdiag")] > 0.02  # across groups: not decorrelated
        assert out[(4, layer, "mean_spread")] < 1e-4 and out[(4, layer, "var_spread")] < 1e-2
    snaps = frame[frame["site"] == "matrix_out"]
    assert sorted(snaps["step"].unique()) == dc.snapshot_steps(cfg.steps, 3) == [0, 1, 5]
    last = snaps[(snaps["step"] == 5) & (snaps["layer"] == "hidden1")].set_index("metric")["value"]
    np.testing.assert_allclose(last[[f"geig{k:02d}" for k in range(16)]], 1.0, atol=1e-2)
    assert last["eig00"] > 1.1  # all 16 features together are not white
    within = [last[dc.corr_metric(i, j)] for i in range(16) for j in range(i + 1, 16)
              if i // 8 == j // 8]
    assert np.abs(within).max() < 1e-2
    # everything stored is what the storage estimate counts, and no more
    assert len(frame[frame["site"].isin(dc.MATRIX_SITES)]) == snapshot_values(cfg)


def test_the_snapshot_is_the_correlation_of_what_the_norm_saw():
    """An independent check: hooks of our own capture the norm's input and output, and
    numpy's corrcoef of those equals the stored matrix; batch's x̂ undoes random g, b."""
    cfg = RunConfig(norm="batch", corr_snapshots=1, decorrelation=True, **{**TINY, "steps": 1})
    from normlab.training.trainer import Trainer

    trainer = Trainer(cfg)
    norm = trainer.model.hidden1.norm
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    seen = {}

    def keep(module, inputs, output):  # the first training pass only (not validation)
        if module.training:
            seen.setdefault("x", inputs[0].detach().clone())

    handle = norm.register_forward_hook(keep)
    frame = next(iter(trainer.batches(flush_seconds=float("inf")))).to_frame()
    handle.remove()
    rows = frame[(frame["layer"] == "hidden1") & (frame["step"] == 0)]
    stored = rows[rows["site"] == "matrix_in"].set_index("metric")["value"]
    ref = np.corrcoef(seen["x"].double().numpy()[:, :16].T)
    assert stored[dc.corr_metric(3, 11)] == pytest.approx(ref[3, 11], abs=1e-9)
    xhat = rows[rows["site"] == "xhat"].set_index("metric")["value"]
    assert xhat["mean_spread"] < 1e-5 and xhat["var_spread"] < 1e-3  # (x − μ)/σ per feature
    assert xhat["corr_offdiag"] == pytest.approx(
        np.abs(np.corrcoef(seen["x"].double().numpy().T)[np.triu_indices(16, 1)]).mean(),
        rel=1e-6)


def test_default_runs_record_nothing_new():
    frame = train(RunConfig(norm="batch", **{**TINY, "steps": 2}))[0].to_frame()
    assert not frame["site"].isin(["xhat", *dc.MATRIX_SITES]).any()
    assert not frame["metric"].isin(dc.CURVE_METRICS).any()


def test_cli_flags_and_exports(tmp_path, whiten_run):
    from normlab.cli import _grid, build_parser
    from normlab.runs import exchange
    from normlab.runs.store import Store

    cfg, _ = _grid(build_parser().parse_args(
        ["run", "--decorrelation", "true", "--corr_snapshots", "4", "--norms", "whiten"]))
    assert cfg.decorrelation and cfg.corr_snapshots == 4
    run_cfg, frame = whiten_run
    store = Store(tmp_path / "s.sqlite")
    cid, (rid,) = store.create_comparison([run_cfg.to_dict()], name="t")
    store.append(rid, train(run_cfg)[0])
    back = exchange.read_bundle(exchange.export(store, cid, tmp_path / "e.json")).metrics
    for site in ("xhat", "matrix_in", "matrix_out"):
        assert (back["site"] == site).sum() == (frame["site"] == site).sum() > 0


def test_a_cnn_whitens_its_channels_over_examples_and_positions():
    cfg = RunConfig(model="cnn", norm="whiten", width=8, depth=1, group_size=4, steps=2,
                    batch_size=16, eval_interval=2, decorrelation=True, corr_snapshots=1)
    frame = train(cfg)[0].to_frame()
    out = frame[(frame["site"] == "xhat") & (frame["layer"] == "conv1")
                & (frame["step"] == 1)].set_index("metric")["value"]
    assert out["corr_offdiag_group"] < 1e-3 < out["corr_offdiag"]
    eig = frame[(frame["site"] == "matrix_out") & frame["metric"].str.startswith("geig")]
    np.testing.assert_allclose(eig["value"], 1.0, atol=1e-2)
