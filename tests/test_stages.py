"""The formula's stages (normlab.measure.stages) against independent computations."""
import numpy as np
import pytest
import torch

from normlab.measure.schema import HIST_BINS, HIST_METRICS, feature_metric
from normlab.measure.stages import StageProbe, linear_fraction, standardize
from normlab.methods.registry import make_norm
from normlab.training.config import RunConfig
from normlab.training.models import build_model

EPS = 1e-5


def _randomized(norm, gen):
    """``norm`` with random g and b (so y = g·x̂ + b is a real test)."""
    with torch.no_grad():
        if getattr(norm, "weight", None) is not None:
            norm.weight.copy_(torch.randn(norm.weight.shape, generator=gen) + 1.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    return norm


CASES = [("batch", False), ("layer", False), ("group", False), ("rms", False),
         ("batch_renorm", False), ("whiten", False), ("batch", True), ("layer", True),
         ("group", True), ("instance", True), ("rms", True), ("batch_renorm", True)]


@pytest.mark.parametrize("name,conv", CASES)
def test_g_xhat_plus_b_is_the_modules_output(name, conv):
    """g·x̂ + b equals the fused module's own output, for every method with an x̂."""
    gen = torch.Generator().manual_seed(0)
    opts = {"group": {"num_groups": 4}, "whiten": {"group_size": 4},
            "batch_renorm": {"rmax": 1.2, "dmax": 0.3}}.get(name, {})
    norm = _randomized(make_norm(name, 8, conv=conv, **opts), gen)
    if name == "batch_renorm":  # running statistics away from the batch's: r, d clip
        norm.running_mean.fill_(0.7)
        norm.running_var.fill_(3.0)
    shape = (16, 8, 5, 5) if conv else (32, 8)
    x = 3 * torch.randn(shape, generator=gen) + 2
    running = (norm.running_mean.clone(), norm.running_var.clone()) if hasattr(
        norm, "running_var") else None
    norm.train()
    y = norm(x).detach()
    st = standardize(norm, x, y, running)
    view = (1, -1) + (1,) * (x.dim() - 2)
    rebuilt = st.g.view(view) * st.x_hat + st.b.view(view)
    torch.testing.assert_close(rebuilt, y, atol=2e-5, rtol=1e-4)


def test_batch_eval_uses_running_statistics():
    gen = torch.Generator().manual_seed(1)
    norm = _randomized(make_norm("batch", 6), gen)
    norm.running_mean.copy_(torch.randn(6, generator=gen))
    norm.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    norm.eval()
    x = torch.randn(10, 6, generator=gen)
    st = standardize(norm, x, norm(x))
    torch.testing.assert_close(st.mu, norm.running_mean)
    torch.testing.assert_close(st.g * st.x_hat + st.b, norm(x).detach(), atol=1e-5, rtol=1e-5)


def test_mu_sigma_against_numpy():
    """Batch: per feature over the batch; layer: per example over features; rms: μ = 0."""
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(20, 7, generator=gen) + 1
    xn = x.numpy().astype(np.float64)
    st = standardize(make_norm("batch", 7).train(), x)
    np.testing.assert_allclose(st.mu.numpy(), xn.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.sigma.numpy(), np.sqrt(xn.var(0) + EPS), rtol=1e-5)
    st = standardize(make_norm("layer", 7), x)
    np.testing.assert_allclose(st.mu.numpy(), xn.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.sigma.numpy(), np.sqrt(xn.var(1) + EPS), rtol=1e-5)
    st = standardize(make_norm("rms", 7), x)
    assert st.mu is None
    np.testing.assert_allclose(st.sigma.numpy(), np.sqrt((xn ** 2).mean(1) + EPS), rtol=1e-5)


def test_no_xhat_for_identity():
    assert standardize(make_norm("none", 4), torch.randn(3, 4)) is None


def test_linear_fraction_definitions():
    v = torch.tensor([-2.0, -0.5, 0.0, 0.99, 1.0, 3.0])
    assert linear_fraction(v, "sigmoid") == pytest.approx(3 / 6)  # -0.5, 0, 0.99
    assert linear_fraction(v, "tanh") == pytest.approx(3 / 6)
    assert linear_fraction(v, "relu") == pytest.approx(3 / 6)  # 0.99, 1, 3
    assert np.isnan(linear_fraction(v, None))


def _one_step(norm: str, seed: int = 0, width: int = 12):
    """A 2-layer MLP with random g, b; one armed forward pass of the stage probe. Returns
    (rows {(layer, site, metric): value}, model, input batch)."""
    torch.manual_seed(seed)
    model = build_model(RunConfig(norm=norm, depth=2, width=width, activation="sigmoid"),
                        (10,), 3)
    gen = torch.Generator().manual_seed(seed)
    for block in (model.hidden1, model.hidden2):
        _randomized(block.norm, gen)
    x = torch.randn(40, 10, generator=gen) * 2
    model.train()
    with StageProbe(model, features_every=1) as probe:
        probe.arm(0)
        model(x)
        probe.after_update()
        batch = probe.flush()
    frame = batch.to_frame()
    return {(r.layer, r.site, r.metric): r.value for r in frame.itertuples()}, model, x


def _norm_io(model, x, layer):
    """The input and output of ``layer``'s norm for batch ``x`` (a fresh forward pass)."""
    seen = {}
    norm = getattr(model, layer).norm
    h = norm.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
    saved = [(b, b.clone()) for b in model.buffers()]
    model(x)
    for b, v in saved:
        b.copy_(v)
    h.remove()
    return seen["x"].double().numpy(), seen["y"].double().numpy()


def test_batch_norm_output_has_mean_b_and_variance_g2_per_feature():
    """BatchNorm in training: per feature, mean(y) = b exactly and var(y) = g²·σ²/(σ²+eps)."""
    rows, model, x = _one_step("batch")
    norm = model.hidden2.norm
    xin, _ = _norm_io(model, x, "hidden2")
    g, b = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
    var = xin.var(0)
    for j in range(12):
        assert rows[("hidden2", "affine", feature_metric(j, "b"))] == pytest.approx(b[j])
        assert rows[("hidden2", "affine", feature_metric(j, "g"))] == pytest.approx(g[j])
        assert rows[("hidden2", "affine", feature_metric(j, "mean"))] == pytest.approx(b[j], abs=1e-5)
        assert rows[("hidden2", "affine", feature_metric(j, "var"))] == pytest.approx(
            g[j] ** 2 * var[j] / (var[j] + EPS), rel=1e-4)


def test_layer_norm_per_feature_moments_are_measured_not_assumed():
    """LayerNorm: the recorded per-feature mean/var of y are numpy's, and differ from b, g²."""
    rows, model, x = _one_step("layer")
    _, y = _norm_io(model, x, "hidden1")
    b = model.hidden1.norm.bias.detach().double().numpy()
    means = np.array([rows[("hidden1", "affine", feature_metric(j, "mean"))] for j in range(12)])
    varis = np.array([rows[("hidden1", "affine", feature_metric(j, "var"))] for j in range(12)])
    np.testing.assert_allclose(means, y.mean(0), atol=1e-5)
    np.testing.assert_allclose(varis, y.var(0), rtol=1e-4)
    assert np.abs(means - b).max() > 0.05  # the statement fails per feature for LayerNorm


def test_xhat_distribution_and_summaries_against_numpy():
    rows, model, x = _one_step("layer", seed=3)
    xin, y = _norm_io(model, x, "hidden1")
    mu, var = xin.mean(1, keepdims=True), xin.var(1, keepdims=True)
    xhat = ((xin - mu) / np.sqrt(var + EPS)).ravel()
    key = lambda m: ("hidden1", "norm_hat", m)  # noqa: E731
    assert rows[key("mean")] == pytest.approx(xhat.mean(), abs=1e-6)
    assert rows[key("var")] == pytest.approx(xhat.var(), rel=1e-5)
    for q in (15, 50, 85):
        assert rows[key(f"p{q}")] == pytest.approx(np.percentile(xhat, q), abs=1e-5)
    lo, hi = rows[key("hist_lo")], rows[key("hist_hi")]
    assert lo <= xhat.min() and hi > xhat.max()  # fitted at this (the first) step
    counts, _ = np.histogram(xhat, np.linspace(lo, hi, HIST_BINS + 1))
    np.testing.assert_allclose([rows[key(m)] for m in HIST_METRICS], counts / xhat.size,
                               atol=1e-12)
    assert rows[key("linear")] == pytest.approx(np.mean(np.abs(xhat) < 1))
    assert rows[("hidden1", "post_norm", "linear")] == pytest.approx(np.mean(np.abs(y) < 1))
    assert rows[key("mu_mean")] == pytest.approx(mu.mean(), abs=1e-6)
    assert rows[key("mu_std")] == pytest.approx(mu.std(), rel=1e-5)
    sigma = np.sqrt(var + EPS)
    assert rows[key("sigma_mean")] == pytest.approx(sigma.mean(), rel=1e-5)
    assert rows[key("sigma_std")] == pytest.approx(sigma.std(), rel=1e-4)
    g = model.hidden1.norm.weight.detach().double().numpy()
    assert rows[("hidden1", "affine", "g_mean")] == pytest.approx(g.mean())
    assert rows[("hidden1", "affine", "g_std")] == pytest.approx(g.std())


def test_identity_layers_record_only_the_linear_share():
    rows, _, _ = _one_step("none")
    assert {site for _, site, _ in rows} == {"post_norm"}
    assert {m for *_, m in rows} == {"linear"}


def test_stages_are_opt_in_in_training_and_limits():
    from normlab.training.limits import values_stored
    from normlab.training.trainer import train

    cfg = RunConfig(norm="batch", depth=1, width=8, steps=4, eval_interval=2)
    off = train(cfg)[0].to_frame()
    on = train(cfg.replace(stages=True))[0].to_frame()
    assert not off["site"].isin(["norm_hat", "affine"]).any()
    hat = on[on["site"] == "norm_hat"]
    assert sorted(hat["step"].unique()) == [0, 1, 2, 3]
    feature_steps = on[on["metric"] == feature_metric(0, "mean")]["step"]
    assert sorted(feature_steps) == [0, 2]  # every eval_interval steps
    shared = off.merge(on, on=["step", "layer", "site", "metric"])  # probing changes nothing
    np.testing.assert_array_equal(shared["value_x"], shared["value_y"])
    assert values_stored(cfg.replace(stages=True)) > values_stored(cfg)
    assert values_stored(cfg.replace(stages=True)) >= len(on)


def test_stages_in_the_cli_and_exports(tmp_path, capsys):
    """``normlab run --help`` lists the field; the stage rows survive export and import."""
    from normlab.cli import main
    from normlab.runs.exchange import export, import_file
    from normlab.runs.store import Store
    from normlab.training.trainer import train

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--stages" in capsys.readouterr().out
    source = Store(tmp_path / "a.sqlite")
    cfg = RunConfig(norm="layer", depth=1, width=6, steps=3, stages=True)
    cid, (rid,) = source.create_comparison([cfg.to_dict()], name="stages")
    batch, outcome = train(cfg)
    source.append(rid, batch)
    source.finish(rid, outcome.status, outcome.step)
    path = export(source, cid, tmp_path / "stages.json")
    target = Store(tmp_path / "b.sqlite")
    import_file(target, path)
    got = target.metrics(sites=["norm_hat", "affine"])
    want = source.metrics(sites=["norm_hat", "affine"])
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(np.sort(got["value"].to_numpy()), np.sort(want["value"].to_numpy()))


def test_weight_space_xhat_is_the_direction_part():
    """WeightNorm: x̂ = v·x/‖v‖ and σ = ‖v‖; CosineNorm: x̂ = cos(w, x) — from numpy."""
    from normlab.methods.registry import wrap_layer

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=gen)
    xn = x.numpy().astype(np.float64)
    wn = wrap_layer("weight", torch.nn.Linear(6, 4))
    with torch.no_grad():
        wn.g.copy_(torch.rand(4, generator=gen) + 0.5)
    v = wn.v.detach().numpy().astype(np.float64)
    st = standardize(make_norm("none", 4), wn(x), layer=wn)
    np.testing.assert_allclose(st.x_hat.numpy(), xn @ v.T / np.linalg.norm(v, axis=1),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.sigma.numpy(), np.linalg.norm(v, axis=1), rtol=1e-5)
    assert st.mu is None
    cn = wrap_layer("cosine", torch.nn.Linear(6, 4), scale=3.0)
    w = cn.weight.detach().numpy().astype(np.float64)
    st = standardize(make_norm("none", 4), cn(x), layer=cn)
    cos = (xn @ w.T) / np.linalg.norm(xn, axis=1, keepdims=True) / np.linalg.norm(w, axis=1)
    np.testing.assert_allclose(st.x_hat.numpy(), cos, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.g.numpy(), [3.0] * 4)
    assert st.sigma is None and float(st.b.abs().max()) == 0.0


def test_weight_space_runs_record_xhat():
    rows, _, _ = _one_step("weight")
    assert ("hidden1", "norm_hat", "p50") in rows and ("hidden1", "norm_hat", "sigma_mean") in rows
