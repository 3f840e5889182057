"""Probes against references: torch's own norms of the same tensors, numpy's percentiles
and histograms, the SGD closed form of the update ratio, and hook hygiene."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.training.config import RunConfig
from normlab.training.models import build_model
from normlab.measure.handoff import sample_index as _sample_index
from normlab.measure.probes import Probe, find_layers, saturation
from normlab.measure.schema import HIST_BINS, hist_edges


def one_step(model, probe, x, y, lr=0.1, extra=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe.arm(0)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    probe.after_backward()
    opt.step()
    probe.after_update(extra)
    return probe.flush().to_frame()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return build_model(RunConfig(width=32, depth=2, activation="sigmoid", norm="batch"), (12,), 4)


def test_layer_names_mlp_cnn_and_user_model():
    assert [lay.name for lay in find_layers(build_model(RunConfig(depth=3), (64,), 10))] == \
        ["hidden1", "hidden2", "hidden3", "out"]
    cnn = build_model(RunConfig(model="cnn", depth=2, width=8, norm="weight"), (1, 8, 8), 10)
    layers = find_layers(cnn)
    assert [lay.name for lay in layers] == ["conv1", "conv2", "out"]
    user = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    found = find_layers(user)  # no block: every module under its own path
    assert [lay.name for lay in found] == ["0", "1", "2", "3"]
    assert found[0].weight is user[0] and not found[0].record_output  # BN takes its output
    assert found[1].norm is user[1] and found[2].act is user[2] and found[2].activation == "relu"
    assert found[3].weight is user[3] and found[3].record_output  # the head's output


def test_capture_is_always_undone_and_survives_a_deepcopy(mlp):
    x = torch.randn(8, 12)
    mlp.eval()
    want = mlp(x)
    with pytest.raises(RuntimeError):
        with Probe(mlp) as probe:
            wrapped = [m for m in mlp.modules() if "forward" in m.__dict__]
            assert len(wrapped) == 2 * 2 + 1  # norm and activation of both hidden layers, head
            twin = copy.deepcopy(mlp)  # e.g. keeping the best model: runs its own layers
            probe.arm(0)
            torch.testing.assert_close(twin(x), want)
            assert all(t is None for t in probe._captured)  # the copy feeds nothing
            raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ or m._forward_hooks for m in mlp.modules())
    torch.testing.assert_close(mlp(x), want)


def test_activation_stats_match_reference(mlp):
    x, y = torch.randn(40, 12), torch.randint(0, 4, (40,))
    seen = {}
    mlp.hidden1.norm.register_forward_hook(lambda m, i, o: seen.update(pre=i[0].detach(), post=o.detach()))
    mlp.hidden1.act.register_forward_hook(lambda m, i, o: seen.update(act=o.detach()))
    with Probe(mlp, sample=None) as probe:
        frame = one_step(mlp, probe, x, y)
    got = frame.set_index(["layer", "site", "metric"])["value"]
    for site, key in [("pre_norm", "pre"), ("post_norm", "post"), ("post_act", "act")]:
        t = seen[key].double().numpy().ravel()
        assert got["hidden1", site, "mean"] == pytest.approx(t.mean(), abs=1e-6)
        assert got["hidden1", site, "var"] == pytest.approx(t.var(), rel=1e-5, abs=1e-7)
        for q in (15, 50, 85):
            assert got["hidden1", site, f"p{q}"] == pytest.approx(np.percentile(t, q), abs=1e-6)
        # the range is fitted to this (first) step: it holds min/max widened by a quarter
        # of the span each side, bins of a power-of-two width (sigmoid's [0, 1] is fixed)
        lo, hi = got["hidden1", site, "hist_lo"], got["hidden1", site, "hist_hi"]
        span = t.max() - t.min()
        if site == "post_act":
            assert (lo, hi) == (0.0, 1.0)
        else:
            assert lo <= t.min() - 0.25 * span and hi >= t.max() + 0.25 * span
            assert hi - lo < 4 * 1.5 * span  # at most twice the padded span, plus a bin
            width = (hi - lo) / HIST_BINS
            assert np.log2(width) == round(np.log2(width)) and lo / width == round(lo / width)
        edges = np.linspace(got["hidden1", site, "hist_lo"], got["hidden1", site, "hist_hi"],
                            HIST_BINS + 1)
        ref = np.histogram(t, bins=edges)[0] / t.size
        hist = np.array([got["hidden1", site, f"hist_{i:02d}"] for i in range(HIST_BINS)])
        np.testing.assert_allclose(hist, ref, atol=1e-12)
        assert got["hidden1", site, "hist_under"] == got["hidden1", site, "hist_over"] == 0
        assert got["hidden1", site, "p50_lo"] == got["hidden1", site, "p50_hi"] == \
            got["hidden1", site, "p50"]  # every value: no sampling error
    sat_ref = ((seen["act"] * (1 - seen["act"])) < 0.05 * 0.25).double().mean().item()
    assert got["hidden1", "post_act", "saturated"] == pytest.approx(sat_ref)


def test_sampled_percentiles_are_the_samples_percentiles(mlp):
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    seen = {}
    mlp.hidden2.norm.register_forward_hook(lambda m, i, o: seen.update(pre=i[0].detach()))
    with Probe(mlp, sample=101) as probe:
        frame = one_step(mlp, probe, x, y)
        index = _sample_index(64 * 32, probe.sample)
    got = frame.set_index(["layer", "site", "metric"])["value"]
    sample = seen["pre"].reshape(-1)[index].double().numpy()
    assert len(sample) == 101
    for q in (15, 50, 85):
        assert got["hidden2", "pre_norm", f"p{q}"] == pytest.approx(np.percentile(sample, q), abs=1e-6)
    # mean and variance always use every value
    assert got["hidden2", "pre_norm", "mean"] == pytest.approx(seen["pre"].double().mean().item(), abs=1e-6)


def test_gradient_weight_norms_and_sgd_update_ratio(mlp):
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    lr = 0.05
    with Probe(mlp) as probe:
        opt = torch.optim.SGD(mlp.parameters(), lr=lr)
        probe.arm(0)
        F.cross_entropy(mlp(x), y).backward()
        grads = {n: p.grad.clone() for n, p in mlp.named_parameters()}
        w1 = mlp.hidden1.layer.weight.double().norm().item()  # the model as it was measured
        probe.after_backward()
        opt.step()
        probe.after_update()
        got = probe.flush().to_frame().set_index(["layer", "site", "metric"])["value"]
    total = torch.sqrt(sum(g.double().square().sum() for g in grads.values())).item()
    assert got["model", "train", "grad_norm"] == pytest.approx(total, rel=1e-6)
    g1 = grads["hidden1.layer.weight"].double().norm().item()
    assert got["hidden1", "param", "grad_norm"] == pytest.approx(g1, rel=1e-6)
    assert got["hidden1", "param", "weight_norm"] == pytest.approx(w1, rel=1e-6)
    assert mlp.hidden1.layer.weight.double().norm().item() != pytest.approx(w1, rel=1e-9)
    # plain SGD: Δw = −lr·g, so update_ratio · ‖w‖ = lr · ‖g‖ (closed form)
    assert got["hidden1", "param", "update_ratio"] * w1 == pytest.approx(lr * g1, rel=1e-5)


def test_only_recorded_steps_produce_rows(mlp):
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with Probe(mlp, every=3) as probe:
        for step in range(10):
            probe.arm(step)
            F.cross_entropy(mlp(x), y).backward()
            probe.after_backward()
            opt.step()
            opt.zero_grad()
            probe.after_update()
        batch = probe.flush()
    assert batch.steps.tolist() == [0, 3, 6, 9]
    assert probe.flush() is None


def test_saturation_closed_forms():
    y = torch.tensor([[0.001, 0.5, 0.999, 0.3]])
    assert saturation(y, "sigmoid") == pytest.approx(0.5)
    assert saturation(torch.tensor([[0.99, 0.0, -0.999, 0.5]]), "tanh") == pytest.approx(0.5)
    relu_out = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])  # unit 0 dead
    assert saturation(relu_out, "relu") == pytest.approx(1 / 3)
    conv_out = torch.zeros(2, 4, 3, 3)
    conv_out[1, 2, 0, 0] = 1.0  # only channel 2 alive
    assert saturation(conv_out, "relu") == pytest.approx(3 / 4)


def test_probe_refuses_models_without_layers():
    with pytest.raises(ValueError, match="no Linear/Conv"):
        Probe(nn.Sequential(nn.ReLU()))


def test_a_float64_model_is_measured_like_its_float32_twin(mlp):
    """Tensors that are not float32 are copied before the kernels read them."""
    twin = copy.deepcopy(mlp).double()
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    with Probe(mlp) as probe:
        single = one_step(mlp, probe, x, y).set_index(["layer", "site", "metric"])["value"]
    with Probe(twin) as probe:
        double = one_step(twin, probe, x.double(), y).set_index(["layer", "site", "metric"])["value"]
    assert single.index.equals(double.index)
    close = np.isclose(single, double, rtol=1e-4, atol=1e-5)
    hist = single.index.get_level_values("metric").str.startswith("hist_")
    assert close[~hist].all()  # a histogram may move a value across a bin edge
    assert close[hist].mean() > 0.97


def test_a_step_left_unfinished_leaves_no_row_and_no_trace(mlp):
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with Probe(mlp) as probe:
        probe.arm(0)
        mlp(x)
        probe.after_forward()  # e.g. the loss came out NaN: the loop skips the step
        probe.arm(1)
        out = mlp(x * 3)
        probe.after_forward()
        with torch.no_grad():  # step 1's activations (not step 0's), before the update
            pre = mlp.hidden1.layer(x * 3)
        F.cross_entropy(out, y).backward()
        probe.after_backward()
        opt.step()
        probe.after_update()
        frame = probe.flush().to_frame().set_index(["layer", "site", "metric"])
    assert frame["step"].unique().tolist() == [1]
    assert frame.loc[("hidden1", "pre_norm", "mean"), "value"] == pytest.approx(pre.double().mean().item(), abs=1e-6)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
], ids=["sgd", "momentum", "adam"])
def test_gradients_read_after_the_update_equal_those_after_backward(mlp, make_opt):
    """The trainer skips after_backward: the optimizers leave the gradients as they are,
    so after_update reads the same ones (with weight decay, which adds to them)."""
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    frames = []
    for call_after_backward in (True, False):
        model = copy.deepcopy(mlp)
        opt = make_opt(model.parameters())
        with Probe(model) as probe:
            for step in range(3):
                probe.arm(step)
                out = model(x)
                probe.after_forward()
                opt.zero_grad(set_to_none=False)
                F.cross_entropy(out, y).backward()
                if call_after_backward:
                    probe.after_backward()
                opt.step()
                probe.after_update()
            frames.append(probe.flush().to_frame())
    assert frames[0]["value"].notna().all()
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_statistics_on_the_helper_thread_equal_those_taken_in_line(monkeypatch):
    """The compiled kernels take the activation statistics on a helper thread while the
    loss and the backward pass run (the parameter statistics, ~10 µs, stay in line); the
    records are bit-identical to taking them in the training
    thread, with records at every step or every third one, including a diverging run's
    last steps and a step left unfinished; the thread ends with the probe."""
    import threading

    from normlab.measure import kernels, probes
    from normlab.training.trainer import train

    assert kernels.RELEASES_GIL
    where: dict[str, set] = {"activation_stats": set(), "parameter_stats": set()}
    for name in where:
        real = getattr(kernels, name)

        def spy(*args, real=real, name=name):
            where[name].add(threading.current_thread().name)
            return real(*args)
        monkeypatch.setattr(kernels, name, spy)
    cfg = RunConfig(dataset="digits", model="mlp", depth=2, width=24, activation="sigmoid",
                    norm="batch", steps=40, record_interval=1, eval_interval=20, seed=3)
    diverging = cfg.replace(norm="none", lr=1e4, init="normal", init_scale=10.0,
                            activation="relu", steps=200, eval_interval=50)
    for config in (cfg, cfg.replace(record_interval=3), diverging):
        monkeypatch.setattr(kernels, "RELEASES_GIL", True)
        threaded, outcome = train(config)
        assert where == {"activation_stats": {"normlab-probe"}, "parameter_stats": {"MainThread"}}
        assert not any(t.name == "normlab-probe" for t in threading.enumerate())
        for name in where:
            where[name].clear()
        monkeypatch.setattr(kernels, "RELEASES_GIL", False)
        inline, _ = train(config)
        assert where == {"activation_stats": {"MainThread"}, "parameter_stats": {"MainThread"}}
        for name in where:
            where[name].clear()
        pd.testing.assert_frame_equal(threaded.to_frame(), inline.to_frame())
    assert outcome.status == "diverged"
    with Probe(build_model(cfg, (64,), 10)) as probe:  # a user's loop (the logger): in line
        assert not probe.threaded
    probes.stop_statistics_thread()  # what the engine does before it forks its workers
    assert not any(t.name == "normlab-probe" for t in threading.enumerate())


def test_the_trainer_uses_the_helper_thread_only_with_a_second_core(monkeypatch):
    from normlab.training import trainer as trainer_module

    cfg = RunConfig(dataset="digits", model="mlp", depth=1, width=8, steps=2)
    monkeypatch.setattr(trainer_module, "usable_cores", lambda: 1)
    assert not trainer_module.Trainer(cfg).probe.threaded
    monkeypatch.setattr(trainer_module, "usable_cores", lambda: 2)
    assert trainer_module.Trainer(cfg).probe.threaded
    assert not trainer_module.Trainer(cfg, probe_threaded=False).probe.threaded
    assert trainer_module.usable_cores() >= 1
