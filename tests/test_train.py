"""The trainer: validation before training, determinism across processes, divergence,
the record layout, every registered method training on both model kinds, and the
re-scaling invariances that motivate normalization (Ba et al. 2016, Table 1)."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from normlab.training.config import ConfigError, RunConfig
from normlab.training.models import build_model
from normlab.methods.registry import NORM_NAMES, norms_for
from normlab.training.trainer import Trainer, train

QUICK = dict(steps=30, eval_interval=10, width=16, depth=2)


def test_config_errors_come_before_training_one_per_field():
    with pytest.raises(ConfigError) as info:
        Trainer(RunConfig(lr=-0.1, steps=0, norm="nope"))
    assert set(info.value.errors) == {"lr", "steps", "norm"}
    assert "-0.1" in info.value.errors["lr"]


def test_batch_norm_with_batch_size_one_is_refused():
    with pytest.raises(ConfigError, match="at least 2"):
        Trainer(RunConfig(norm="batch", batch_size=1))


def test_batch_larger_than_training_set_is_refused():
    with pytest.raises(ConfigError, match="larger than the training set"):
        Trainer(RunConfig(dataset="moons", n_samples=50, batch_size=64))


def test_instance_on_mlp_explains_cnn():
    with pytest.raises(ConfigError, match="CNN"):
        Trainer(RunConfig(norm="instance"))


def test_records_layout_and_validation_cadence():
    batch, outcome = train(RunConfig(**QUICK))
    assert (outcome.status, outcome.step) == ("done", 30)
    frame = batch.to_frame()
    val = frame[(frame.site == "val") & (frame.metric == "loss")]
    assert val.step.tolist() == [0, 10, 20, 30]
    assert set(frame.layer) == {"model", "hidden1", "hidden2", "out"}
    assert set(frame[frame.layer == "hidden1"].site) == {"pre_norm", "post_norm", "post_act", "param"}
    train_loss = frame[(frame.site == "train") & (frame.metric == "loss")]
    assert train_loss.step.tolist() == list(range(30))
    assert frame.value.notna().all()


def _digest(cfg_kwargs: dict) -> str:
    code = ("import hashlib, sys; from normlab.training.config import RunConfig; from normlab.training.trainer import train;"
            f"b, o = train(RunConfig(**{cfg_kwargs!r}));"
            "print(hashlib.sha256(b.values.tobytes() + b.steps.tobytes()).hexdigest())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_same_config_is_bit_identical_in_fresh_processes():
    cfg = dict(QUICK, norm="batch_renorm", seed=3)
    first, second = _digest(cfg), _digest(cfg)
    assert first == second and len(first) == 64
    batch, _ = train(RunConfig(**cfg))
    assert hashlib.sha256(batch.values.tobytes() + batch.steps.tobytes()).hexdigest() == first
    assert _digest(dict(cfg, seed=4)) != first


def test_probing_does_not_change_the_run():
    every1, _ = train(RunConfig(**QUICK, record_interval=1))
    every7, _ = train(RunConfig(**QUICK, record_interval=7))
    f1, f7 = every1.to_frame(), every7.to_frame()
    val1 = f1[f1.site == "val"].reset_index(drop=True)
    val7 = f7[f7.site == "val"].reset_index(drop=True)
    assert val1.equals(val7)  # bit-identical validation curve
    loss1 = f1[(f1.site == "train") & (f1.metric == "loss")].set_index("step").value
    loss7 = f7[(f7.site == "train") & (f7.metric == "loss")].set_index("step").value
    assert loss7.index.tolist() == [0, 7, 14, 21, 28]
    assert (loss1[loss7.index] == loss7).all()
    # recording every step, the trainer copies the weights for the next step in the same
    # pass that measures this one's update (carry_weights); every 7th, before the step:
    # the same bits either way
    params = ["weight_norm", "update_ratio", "grad_norm"]
    p1, p7 = (f[(f.site == "param") & f.metric.isin(params)].set_index(["step", "layer", "metric"])
              .value for f in (f1, f7))
    assert len(p7) == 5 * 3 * 3 and p1[p7.index].equals(p7)


def test_divergence_stops_cleanly_and_keeps_records():
    batch, outcome = train(RunConfig(norm="none", lr=1e4, init="normal", init_scale=10.0,
                                     activation="relu", steps=200, eval_interval=50))
    assert outcome.status == "diverged"
    assert outcome.message.startswith(f"diverged at step {outcome.step}")
    frame = batch.to_frame()
    steps = frame[(frame.site == "train") & (frame.metric == "loss")].step
    assert steps.max() == outcome.step - 1 and len(steps) == outcome.step


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_method_trains(norm, model):
    if norm not in norms_for(model):
        pytest.skip(f"{norm} does not apply to {model}")
    cfg = RunConfig(norm=norm, model=model, dataset="digits", width=16, depth=2, steps=60,
                    eval_interval=60, lr=0.1, optimizer="momentum", activation="relu")
    batch, outcome = train(cfg)
    frame = batch.to_frame()
    loss = frame[(frame.site == "train") & (frame.metric == "loss")].value.to_numpy()
    assert outcome.status == "done"
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()  # it learns something in 60 steps
    # (validation is not asserted: e.g. whitening's running matrix can lag badly early on,
    # which is a finding the dashboard should show, not hide)
    assert np.isfinite(frame.value).all()


@pytest.mark.parametrize("norm,scale", [("batch", "unit"), ("layer", "matrix"),
                                        ("weight", "unit"), ("cosine", "unit"),
                                        ("group", "matrix"), ("rms", "matrix")])
def test_weight_rescaling_invariance(norm, scale):
    """Ba et al. 2016 Table 1: the layer's output is unchanged when the incoming weights are
    re-scaled — per unit (BN, WN, CosineNorm) or the whole matrix (LN, GN, RMSNorm)."""
    torch.manual_seed(0)
    # eps ~ 0 so the invariance is exact (eps breaks it slightly, as the paper notes)
    cfg = RunConfig(norm=norm, width=8, depth=1, activation="tanh", eps=1e-12)
    model = build_model(cfg, (5,), 3)
    model.train()
    x = torch.randn(16, 5, dtype=torch.float64)
    model = model.double()
    before = model(x)
    layer = model.hidden1.layer
    weight = layer.v if norm == "weight" else layer.weight
    with torch.no_grad():
        factor = torch.rand(weight.shape[0], 1, dtype=weight.dtype) * 5 + 0.2 if scale == "unit" else 3.7
        weight.mul_(factor)
        if norm not in ("weight", "cosine") and layer.bias is not None:
            layer.bias.mul_(factor.squeeze(1) if scale == "unit" else factor)
    torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-8)


def test_without_normalization_rescaling_changes_the_output():
    """The control for the invariance test above: with ``none`` it must not hold."""
    torch.manual_seed(0)
    model = build_model(RunConfig(norm="none", width=8, depth=1, activation="tanh"), (5,), 3).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        model.hidden1.layer.weight.mul_(3.7)
    assert not torch.allclose(model(x), before, rtol=1e-3)


def test_a_live_run_flushes_after_its_first_step_then_at_doubling_gaps(monkeypatch):
    # a fake clock: 10 ms per reading, so the gaps are counted in readings, not wall time
    import types

    import normlab.training.trainer as trainer_module

    clock = iter(range(10**6))
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(
        monotonic=lambda: next(clock) * 0.01))
    cfg = RunConfig(steps=120, width=8, depth=1, eval_interval=1000)
    batches = list(Trainer(cfg).batches(flush_seconds=0.5, first_flush_after=1))
    steps = [np.unique(b.steps).astype(int) for b in batches]
    assert list(steps[0]) == [0]  # the first step at once: a chart has something to show
    # then each batch is about twice as long as the last (a step reads the clock once),
    #   from 0.05 s (5 readings) up to 0.5 s (50)
    sizes = [len(s) for s in steps[1:-1]]
    assert sizes[:4] == sorted(sizes[:4]) and sizes[0] <= 6 and max(sizes) <= 51
    assert sizes[3] >= 3 * sizes[0]
    recorded = np.concatenate(steps)  # every step exactly once, in order
    assert list(recorded) == list(range(cfg.steps + 1))
    # without first_flush_after (a run trained in-process), no ramp: one batch here
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(monotonic=lambda: 0.0))
    assert len(list(Trainer(cfg).batches(flush_seconds=0.5))) == 1
