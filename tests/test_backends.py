"""Which statistics kernels a probe uses, and that the numpy fallback records what the
compiled kernels record (:mod:`normlab.measure.backends`)."""
import numpy as np
import pytest
import torch

from normlab.measure import backends, fallback, kernels, precompile
from normlab.training.config import RunConfig
from normlab.training.trainer import train


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "normlab-kernels-test.ready"
    monkeypatch.setattr(backends, "marker", lambda: path)
    monkeypatch.setattr(backends, "_started", False)
    return path


def test_auto_uses_numpy_and_starts_one_compile_until_the_marker_exists(marker, monkeypatch):
    started = []
    monkeypatch.setattr(backends.subprocess, "Popen", lambda *a, **k: started.append(a[0]))
    monkeypatch.setenv(backends.MODE_ENV, "auto")
    assert backends.current() is fallback and backends.current() is fallback
    assert len(started) == 1 and started[0][-3:] == [backends.sys.executable, "-m",
                                                     "normlab.measure.precompile"]  # once
    if backends.shutil.which("nice"):  # the lowest priority: the first run comes first
        assert started[0][:3] == ["nice", "-n", "19"]
    marker.write_text("compiled\n")
    assert backends.current() is kernels


def test_a_probe_on_numpy_moves_to_the_compiled_kernels_at_a_flush(marker, monkeypatch):
    from torch import nn

    from normlab.measure.probes import Probe

    monkeypatch.setattr(backends.subprocess, "Popen", lambda *a, **k: None)
    monkeypatch.setenv(backends.MODE_ENV, "auto")
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))
    with Probe(model) as probe:
        assert probe.kernels is fallback
        probe.flush()
        assert probe.kernels is fallback  # nothing compiled yet
        marker.write_text("compiled\n")
        probe.arm(0)
        model(torch.randn(5, 3)).sum().backward()
        probe.after_update()
        assert len(probe.flush()) > 0 and probe.kernels is kernels
    monkeypatch.setenv(backends.MODE_ENV, "fallback")  # a forced choice is kept
    with Probe(model) as probe:
        probe.flush()
        assert probe.kernels is fallback


def test_the_mode_is_obeyed_and_a_bad_one_names_the_good_ones(marker, monkeypatch):
    monkeypatch.setattr(backends.subprocess, "Popen", lambda *a, **k: pytest.fail("no compile"))
    monkeypatch.setenv(backends.MODE_ENV, "fallback")
    assert backends.current() is fallback
    monkeypatch.setenv(backends.MODE_ENV, "compiled")
    assert backends.current() is kernels
    monkeypatch.setenv(backends.MODE_ENV, "fast")
    with pytest.raises(ValueError, match="NORMLAB_KERNELS='fast'.*auto, compiled, fallback"):
        backends.current()


def test_compile_writes_the_marker_and_a_held_lock_skips_it(marker):
    import fcntl

    with open(f"{marker}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert precompile.compile_kernels() is False and not marker.exists()
    assert precompile.compile_kernels() is True and marker.exists()  # the kernels are cached


def test_the_marker_names_this_source_and_sits_in_numbas_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    path = backends.marker()
    assert path.parent == tmp_path and path.name.startswith("normlab-kernels-")
    assert path.name.endswith(".ready") and backends._key() in path.name


@pytest.mark.parametrize("cfg", [
    RunConfig(norm="batch", activation="sigmoid", steps=30, record_interval=3),
    RunConfig(model="cnn", norm="group", activation="relu", width=8, steps=12),
    RunConfig(norm="weight", activation="tanh", steps=12, lr=5.0),  # saturates
], ids=["mlp-batch-sigmoid", "cnn-group-relu", "mlp-weight-tanh"])
def test_a_run_records_the_same_with_numpy_as_compiled(cfg, monkeypatch):
    monkeypatch.setenv(backends.MODE_ENV, "compiled")
    compiled, _ = train(cfg, threads=1)
    monkeypatch.setenv(backends.MODE_ENV, "fallback")
    numpy_, _ = train(cfg, threads=1)
    a, b = compiled.to_frame(), numpy_.to_frame()
    assert len(a) == len(b) > 0
    pd_cols = ["step", "layer", "site", "metric"]
    assert (a[pd_cols].values == b[pd_cols].values).all()
    sums = a["metric"].isin(["mean", "var", "grad_norm", "weight_norm", "update_ratio",
                             "grad_norm_v", "grad_norm_g"]) | a["metric"].str.startswith("grad")
    np.testing.assert_allclose(b["value"][sums], a["value"][sums], rtol=1e-12, atol=1e-300)
    # order statistics, histograms, saturation, accuracy, loss: the very same numbers
    np.testing.assert_array_equal(b["value"][~sums].values, a["value"][~sums].values)


def test_numpy_kernels_read_memory_in_place_without_copying():
    t = torch.arange(6, dtype=torch.float32)
    view = fallback._view(t.data_ptr(), 6)
    t[2] = 42.0
    assert view[2] == 42.0
