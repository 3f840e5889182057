"""Lab 3's measurements (normlab.measure.ics) against independent computations."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn

from normlab.measure.ics import IcsMeter, unit_values, unit_w1
from normlab.training.config import RunConfig
from normlab.training.trainer import train


def test_unit_w1_matches_scipy_per_unit():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (300, 4))
    b = rng.gamma(2.0, 1.0, (300, 4))
    got = unit_w1(torch.tensor(a), torch.tensor(b))
    want = [wasserstein_distance(a[:, u], b[:, u]) for u in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_unit_w1_of_shifted_normals_is_the_shift():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(0, 1, (200_000, 1)))
    b = torch.tensor(rng.normal(0.7, 1, (200_000, 1)))
    assert float(unit_w1(a, b)[0]) == pytest.approx(0.7, abs=0.01)
    assert float(unit_w1(a, a + 0.3)[0]) == pytest.approx(0.3, abs=1e-12)  # exactly


def test_unit_values_puts_positions_with_examples():
    t = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 2, 2)  # (B, C, H, W)
    v = unit_values(t)
    assert v.shape == (8, 3)
    assert sorted(v[:, 1].tolist()) == sorted(t[:, 1].flatten().tolist())
    assert v[:4, 0].tolist() == t[0, 0].flatten().tolist()  # first example's rows first


class Tiny(nn.Module):
    """hidden1 (linear, no activation) → tanh → hidden2 → tanh → out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden1, self.hidden2, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden2(torch.tanh(self.hidden1(x)))))

    def blocks(self):
        return [(n, getattr(self, n), getattr(self, n)) for n in ("hidden1", "hidden2", "out")]


def _rows(batch):
    return {(k[0], k[2]): v for k, v in zip(batch.keys, batch.values[0])}


def test_santurkar_ics_matches_a_hand_computation():
    lr = 0.3
    model = Tiny().double()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, generator=g).double(), torch.randint(0, 2, (16,), generator=g)
    meter = IcsMeter(model, model.blocks(), F.cross_entropy, lr,
                     torch.randn(8, 3, generator=g).double())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    before = copy.deepcopy(model)
    meter.arm(model)
    F.cross_entropy(model(x), y).backward()
    meter.take_gradient(model)
    opt.step()
    rows = _rows(meter.measure(model, x, y, 0))

    def grads(net, layer):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        return torch.cat([p.grad.flatten() for p in getattr(net, layer).parameters()])

    for layer, below in (("hidden2", ["hidden1"]), ("out", ["hidden1", "hidden2"])):
        G = grads(before, layer)
        stepped = copy.deepcopy(before)  # the layers below take one SGD step by hand
        G_all = {n: p.grad.clone() for n, p in _with_grads(before, x, y)}
        with torch.no_grad():
            for n, p in stepped.named_parameters():
                if n.split(".")[0] in below:
                    p -= lr * G_all[n]
        G2 = grads(stepped, layer)
        assert rows[(layer, "ics_diff")] == pytest.approx(float((G - G2).norm()), rel=1e-9)
        cos = float(G @ G2 / (G.norm() * G2.norm()))
        assert rows[(layer, "ics_cos")] == pytest.approx(cos, rel=1e-9)
        assert rows[(layer, "ics_rel")] == pytest.approx(float((G - G2).norm() / G.norm()),
                                                         rel=1e-9)
        assert 0 < rows[(layer, "ics_diff")]  # not trivially zero
    assert ("hidden1", "ics_diff") not in rows  # nothing below the first layer


def _with_grads(net, x, y):
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return list(net.named_parameters())


def test_drift_of_a_bias_shift_is_the_shift_in_initial_sigma():
    """hidden2's input is hidden1's linear output after tanh; out's input after another
    tanh: shift hidden1's bias by δ with tanh replaced by identity → hidden2's input moves
    by exactly δ per unit."""
    model = Tiny().double()
    model.forward = lambda x: model.out(model.hidden2(model.hidden1(x)))  # linear net
    g = torch.Generator().manual_seed(5)
    probe = torch.randn(64, 3, generator=g).double()
    x, y = probe[:8], torch.zeros(8, dtype=torch.long)
    meter = IcsMeter(model, model.blocks(), F.cross_entropy, 0.1, probe)
    meter.shadow.forward = lambda x: meter.shadow.out(meter.shadow.hidden2(
        meter.shadow.hidden1(x)))

    def measure(step):
        meter.arm(model)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        meter.take_gradient(model)
        return _rows(meter.measure(model, x, y, step))

    first = measure(0)
    with torch.no_grad():
        h = model.hidden1(probe).numpy()
    sigma0 = np.sqrt(h.var(0).mean())
    floor = np.mean([wasserstein_distance(h[:32, u], h[32:, u]) for u in range(4)]) / sigma0
    assert first[("hidden2", "drift_floor")] == pytest.approx(floor, rel=1e-9)
    assert ("hidden2", "drift") not in first  # no previous step yet
    again = measure(1)
    assert again[("hidden2", "drift")] == pytest.approx(0, abs=1e-12)  # nothing moved
    with torch.no_grad():
        model.hidden1.bias += 0.25
    moved = measure(2)
    assert moved[("hidden2", "drift")] == pytest.approx(0.25 / sigma0, rel=1e-9)
    assert moved[("hidden2", "drift_noise")] == pytest.approx(0, abs=1e-9)  # both halves
    assert moved[("hidden2", "drift_total")] == pytest.approx(0.25 / sigma0, rel=1e-9)


class Quadratic(nn.Module):
    """Parameters θ = (a, c) as the 'logits'; with loss ½ Σ hᵢ θᵢ² the Hessian is diag(h)."""

    def __init__(self, theta):
        super().__init__()
        self.first, self.second = nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(theta[:1].reshape(1, 1))
            self.second.weight.copy_(theta[1:].reshape(2, 1))

    def forward(self, x):
        theta = torch.cat([self.first.weight.flatten(), self.second.weight.flatten()])
        return theta.expand(len(x), 3) + 0 * self.second(self.first(x)).sum()


def test_smoothness_on_a_quadratic_has_the_closed_form():
    h = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    model = Quadratic(theta).double()

    def loss_fn(logits, y):
        return 0.5 * (h * logits[0] ** 2).sum()

    lr = 0.2
    x, y = torch.ones(4, 1, dtype=torch.float64), torch.zeros(4)
    meter = IcsMeter(model, [("first", model.first, model.first),
                             ("second", model.second, model.second)], loss_fn, lr, x)
    meter.arm(model)
    loss_fn(model(x), y).backward()
    meter.take_gradient(model)
    rows = _rows(meter.measure(model, x, y, 0))
    th, hh = theta.numpy(), h.numpy()
    etas = lr * np.array([0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4])
    losses = [0.5 * (hh * (th * (1 - e * hh)) ** 2).sum() for e in etas]  # θ − η H θ
    changes = etas * np.linalg.norm(hh * hh * th)  # ‖∇L(θ − ηg) − ∇L(θ)‖ = η ‖H² θ‖
    assert rows[("model", "loss_min")] == pytest.approx(min(losses), rel=1e-12)
    assert rows[("model", "loss_max")] == pytest.approx(max(losses), rel=1e-12)
    assert rows[("model", "grad_change_min")] == pytest.approx(changes[0], rel=1e-12)
    assert rows[("model", "grad_change_max")] == pytest.approx(changes[-1], rel=1e-12)
    beta = np.linalg.norm(hh * hh * th) / np.linalg.norm(hh * th)
    assert rows[("model", "beta")] == pytest.approx(beta, rel=1e-12)


@pytest.mark.parametrize("model,norm", [("mlp", "batch"), ("mlp", "batch_renorm"),
                                        ("mlp", "weight"), ("cnn", "batch")])
def test_training_is_bit_identical_with_the_measurement(model, norm):
    cfg = RunConfig(model=model, norm=norm, steps=24, width=16, batch_size=32,
                    record_interval=4, eval_interval=12, lr=0.5)
    plain, _ = train(cfg, threads=1)
    measured, _ = train(cfg.replace(ics_interval=5), threads=1)
    a, b = plain.to_frame(), measured.to_frame()
    ics = b[b["site"] == "ics"]
    assert set(ics["step"]) == {0, 5, 10, 15, 20}
    assert set(ics["metric"]) >= {"drift", "drift_floor", "ics_diff", "ics_cos", "beta"}
    kind = "hidden" if model == "mlp" else "conv"
    assert set(ics["layer"]) == {f"{kind}2", f"{kind}3", "out", "model"}
    b = b[b["site"] != "ics"].reset_index(drop=True)
    assert len(a) == len(b)
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())


def test_ics_interval_must_not_be_negative():
    from normlab.training.config import errors

    assert "ics_interval" in errors(RunConfig(ics_interval=-1))
    assert "ics_interval" not in errors(RunConfig(ics_interval=10))


def test_cli_flag_and_export_carry_the_measurement(tmp_path):
    from normlab.cli import _grid, build_parser
    from normlab.runs import exchange
    from normlab.runs.store import Store

    args = build_parser().parse_args(["run", "--norms", "none,batch", "--ics-interval", "7"])
    base, grid = _grid(args)
    assert base.ics_interval == 7 and grid["norm"] == ["none", "batch"]
    store = Store(tmp_path / "a.sqlite")
    cfg = RunConfig(steps=8, width=8, depth=2, batch_size=16, eval_interval=4, ics_interval=4)
    cid, (rid,) = store.create_comparison([cfg.to_dict()], name="ics")
    batch, outcome = train(cfg)
    store.append(rid, batch)
    store.finish(rid, outcome.status, outcome.step)
    fresh = Store(tmp_path / "b.sqlite")
    exchange.import_file(fresh, exchange.export(store, cid, tmp_path / "out.json"))
    before = store.metrics(rid, sites=["ics"]).drop(columns="run")
    after = fresh.metrics(rid, sites=["ics"]).drop(columns="run")
    # steps 0 and 4; 2 layers × 7 metrics + 5 model metrics; step 0 has no drift yet
    assert len(before) == 2 * (2 * 7 + 5) - 2 * 2
    assert before.astype(str).reset_index(drop=True).equals(
        after.astype(str).reset_index(drop=True))
