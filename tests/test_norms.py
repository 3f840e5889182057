"""Normalization layers against trusted oracles: torch.nn counterparts, closed forms, and
equivalences/invariances as properties. Seeded, CPU, float64 unless a test says otherwise."""
from __future__ import annotations

import copy
import inspect

import pytest
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from normlab.methods import norms, weightnorm, whitening
from normlab.training.config import RunConfig
from normlab.methods.registry import NORM_NAMES, NORMS, build_norm, make_norm

SHAPES = {"mlp": (16, 6), "cnn1d": (8, 6, 5), "cnn2d": (4, 6, 5, 3)}  # C = 6
PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _double_and_seeded():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def randomize(ours, ref, pairs):
    """Give parameter ``a`` of ours and ``b`` of ref the same random value for each pair."""
    with torch.no_grad():
        for a, b in pairs:
            value = torch.randn_like(ref.get_parameter(b)) * 0.5 + 1
            ours.get_parameter(a).copy_(value.reshape(ours.get_parameter(a).shape))
            ref.get_parameter(b).copy_(value)


def assert_same_function(ours, ref, x, pairs=(("weight", "weight"), ("bias", "bias"))):
    """Same output and same gradients (input and each parameter pair) under a random loss."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    close(y1, y2)
    gy = torch.randn_like(y1)  # not .sum(): a norm's output often sums to a constant
    y1.backward(gy)
    y2.backward(gy)
    close(x1.grad, x2.grad)
    for a, b in pairs:
        close(ours.get_parameter(a).grad.reshape(-1), ref.get_parameter(b).grad.reshape(-1))
    ours.zero_grad()
    ref.zero_grad()


# ---- the registry: every method builds, trains and does what its spec says ---------------

def _layer(kind):
    return {"mlp": nn.Linear(5, 8), "cnn1d": nn.Conv1d(3, 8, 3, padding=1),
            "cnn2d": nn.Conv2d(3, 8, 3, padding=1)}[kind]


_INPUTS = {"mlp": (6, 5), "cnn1d": (4, 3, 7), "cnn2d": (3, 3, 5, 4)}
CASES = [(name, kind) for name in NORM_NAMES for kind in ("mlp", "cnn1d", "cnn2d")
         if ("mlp" if kind == "mlp" else "cnn") in NORMS[name].models]
ACTIVATION_NAMES = [n for n in NORM_NAMES if NORMS[n].space == "activation"]


@pytest.mark.parametrize("name,kind", CASES)
def test_every_norm_builds_trains_and_evaluates(name, kind):
    layer, norm = build_norm(name, _layer(kind).float(), 8, conv=kind != "mlp",
                             options=RunConfig().norm_options())
    model = nn.Sequential(layer, norm.float())
    x = torch.randn(_INPUTS[kind], dtype=torch.float32) * 3 + 1
    z = layer(x)
    y = norm(z)
    assert y.shape == z.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert type(norm).__name__ in repr(model) and norm.extra_repr()
    model.eval()
    assert torch.isfinite(model(x[:1])).all()  # eval works on a single example


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_running_statistics_exactly_when_the_registry_says_so(name):
    conv = "mlp" not in NORMS[name].models
    norm = make_norm(name, 6, conv=conv)
    x = torch.randn(SHAPES["cnn2d" if conv else "mlp"]) * 3 + 1
    before = {k: v.clone() for k, v in norm.named_buffers()}
    y_train = norm.train()(x)
    changed = any(not torch.equal(before[k], v) for k, v in norm.named_buffers())
    keeps_running = "running" in NORMS[name].train_eval
    assert changed == keeps_running
    y_eval = norm.eval()(x)
    assert torch.allclose(y_train, y_eval) != keeps_running


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_num_features_first_and_informative_repr(name):
    cls = type(make_norm(name, 8, conv=True))
    assert next(iter(inspect.signature(cls).parameters)) == "num_features"
    assert repr(make_norm(name, 8, conv=True)).startswith(f"{cls.__name__}(8")


def test_instance_needs_a_cnn():
    with pytest.raises(ValueError, match="(?i)cnn"):
        make_norm("instance", 8)
    with pytest.raises(ValueError, match="CNN"):
        norms.InstanceNorm(8)(torch.randn(4, 8))


def test_weight_norm_with_mean_only_bn_option():
    layer, norm = build_norm("weight", nn.Linear(5, 8), 8, options={"mean_only_bn": True})
    assert isinstance(layer, weightnorm.WeightNorm)
    assert isinstance(norm, weightnorm.MeanOnlyBatchNorm)


# ---- BatchNorm and Batch Renormalization --------------------------------------------------

@pytest.mark.parametrize("kind,ref_cls", [("mlp", nn.BatchNorm1d), ("cnn1d", nn.BatchNorm1d),
                                          ("cnn2d", nn.BatchNorm2d)])
def test_batchnorm_matches_torch_train_running_and_eval(kind, ref_cls):
    ours, ref = norms.BatchNorm(6, momentum=0.2), ref_cls(6, momentum=0.2)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    for step in range(4):
        assert_same_function(ours, ref, torch.randn(SHAPES[kind]) * (step + 1) + step)
    close(ours.running_mean, ref.running_mean)
    close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked == ref.num_batches_tracked == 4
    ours.eval()
    ref.eval()
    assert_same_function(ours, ref, torch.randn(SHAPES[kind]) * 2 - 1)


def test_batchnorm_one_value_per_channel_is_a_clear_error():
    bn = norms.BatchNorm(4)
    with pytest.raises(ValueError, match="at least 2 examples.*eval"):
        bn(torch.randn(1, 4))
    x = torch.randn(1, 4, 3)  # one example, but 3 values per channel: fine
    mu, var = x.mean(2, keepdim=True), x.var(2, keepdim=True, unbiased=False)
    close(bn(x), (x - mu) / torch.sqrt(var + 1e-5))
    assert torch.isfinite(bn.eval()(torch.randn(1, 4))).all()  # eval: running statistics


def test_batchrenorm_without_room_to_correct_is_batchnorm():
    ours, ref = norms.BatchRenorm(6, rmax=1.0, dmax=0.0), norms.BatchNorm(6)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    for step in range(3):
        assert_same_function(ours, ref, torch.randn(SHAPES["cnn2d"]) * 5 + 10)
    close(ours.running_var, ref.running_var)


def test_batchrenorm_with_running_stats_equal_to_batch_stats_is_batchnorm():
    x = torch.randn(SHAPES["cnn1d"]) * 3 + 2
    ours, ref = norms.BatchRenorm(6), norms.BatchNorm(6)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    with torch.no_grad():
        ours.running_mean.copy_(x.mean(dim=(0, 2)))
        ours.running_var.copy_(x.var(dim=(0, 2), unbiased=False))
    assert_same_function(ours, ref, x)


def test_batchrenorm_train_output_meets_eval_output_once_running_stats_converge():
    x = torch.randn(32, 6) * 10 + 20  # far from the initial running stats: r, d clipped
    brn = norms.BatchRenorm(6, momentum=0.2)
    first = brn(x)
    assert not torch.allclose(first, brn.eval()(x), atol=1e-2)
    brn.train()
    for _ in range(150):
        y_train = brn(x)
    close(y_train, brn.eval()(x))


def test_batchrenorm_unclipped_train_output_is_eval_output_with_pre_step_running_stats():
    brn = norms.BatchRenorm(6, momentum=0.5)
    randomize(brn, brn, [("weight", "weight"), ("bias", "bias")])
    with torch.no_grad():
        brn.running_mean.copy_(torch.randn(6))
        brn.running_var.copy_(torch.rand(6) + 0.5)
    x = torch.randn(32, 6) * 1.5 + 1  # r within (1/3, 3) and |d| < 5: no clipping
    expected = brn.eval()(x)
    close(brn.train()(x), expected)  # (x − μ_B)/σ_B · r + d = (x − μ_run)/σ_run
    assert not torch.allclose(brn.eval()(x), expected)  # the step did update the stats


@pytest.mark.parametrize("std,mean,r,d", [(10.0, 20.0, 3.0, 5.0), (0.01, -20.0, 1 / 3, -5.0)])
def test_batchrenorm_clips_r_and_d_and_passes_no_gradient_through_them(std, mean, r, d):
    brn = norms.BatchRenorm(6)  # running mean 0, running var 1
    randomize(brn, brn, [("weight", "weight"), ("bias", "bias")])
    x = (torch.randn(64, 6) * std + mean).requires_grad_()
    y = brn(x)
    mu, var = x.mean(0), x.var(0, unbiased=False)
    expected = brn.weight * ((x - mu) / torch.sqrt(var + brn.eps) * r + d) + brn.bias
    close(y, expected)
    gy = torch.randn_like(y)  # r, d constants: the gradient of the closed form with r, d fixed
    (gx,) = torch.autograd.grad(y, x, gy, retain_graph=True)
    (gx_ref,) = torch.autograd.grad(expected, x, gy)
    close(gx, gx_ref)


# ---- per-example norms: Layer, Instance, Group, RMS ---------------------------------------

@pytest.mark.parametrize("kind", SHAPES)
def test_layernorm_matches_torch(kind):
    ref = nn.LayerNorm(6) if kind == "mlp" else nn.GroupNorm(1, 6)
    ours = norms.LayerNorm(6)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    assert_same_function(ours, ref, torch.randn(SHAPES[kind]) * 3 + 1)


@pytest.mark.parametrize("kind,ref_cls", [("cnn1d", nn.InstanceNorm1d),
                                          ("cnn2d", nn.InstanceNorm2d)])
def test_instancenorm_matches_torch(kind, ref_cls):
    ours, ref = norms.InstanceNorm(6), ref_cls(6, affine=True)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    for training in (True, False):
        ours.train(training)
        ref.train(training)
        assert_same_function(ours, ref, torch.randn(SHAPES[kind]) * 3 + 1)


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_groupnorm_matches_torch(kind, groups):
    ours, ref = norms.GroupNorm(6, num_groups=groups), nn.GroupNorm(groups, 6)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    assert_same_function(ours, ref, torch.randn(SHAPES[kind]) * 3 + 1)


def test_groupnorm_group_rule():
    assert norms.GroupNorm(8, num_groups=32).num_groups == 8  # clipped to the width
    with pytest.raises(ValueError, match=r"num_groups \(3\) must divide num_features \(100\); "
                                         r"try 2"):
        norms.GroupNorm(100, num_groups=3)
    with pytest.raises(ValueError, match=r"num_groups \(32\) .* \(100\); try 25"):
        norms.GroupNorm(100)


@pytest.mark.parametrize("kind", ["cnn1d", "cnn2d"])
def test_groupnorm_one_group_is_layernorm_and_c_groups_is_instancenorm(kind):
    x = torch.randn(SHAPES[kind]) * 3 + 1
    for ours, ref in [(norms.GroupNorm(6, num_groups=1), norms.LayerNorm(6)),
                      (norms.GroupNorm(6, num_groups=6), norms.InstanceNorm(6))]:
        randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
        assert_same_function(ours, ref, x)


def test_rmsnorm_matches_torch_on_features():
    ours, ref = norms.RMSNorm(6), nn.RMSNorm(6, eps=1e-5)
    randomize(ours, ref, [("weight", "weight")])
    assert ours.bias is None
    assert_same_function(ours, ref, torch.randn(SHAPES["mlp"]) * 3 + 1, [("weight", "weight")])


@pytest.mark.parametrize("kind", ["cnn1d", "cnn2d"])
def test_rmsnorm_closed_form_on_conv_input_and_scale_invariance(kind):
    rms = norms.RMSNorm(6)
    randomize(rms, rms, [("weight", "weight")])
    x = torch.randn(SHAPES[kind]) * 3 + 1
    dims = tuple(range(1, x.dim()))
    g = rms.weight.view((1, 6) + (1,) * (x.dim() - 2))
    close(rms(x), g * x / torch.sqrt(x.square().mean(dims, keepdim=True) + 1e-5))
    close(rms(7 * x), rms(x))
    assert not torch.allclose(rms(x + 1), rms(x))


# ---- Decorrelated BatchNorm (whitening) ---------------------------------------------------

def _correlated(shape):
    C = shape[1]
    mix = torch.randn(C, C)
    x = torch.randn(shape)
    return torch.einsum("ij,bj...->bi...", mix, x) + torch.arange(C).view((1, C) + (1,) *
                                                                           (len(shape) - 2))


@pytest.mark.parametrize("shape", [(256, 8), (16, 8, 4, 4)])
def test_whitening_gives_zero_mean_identity_covariance_per_group(shape):
    bw = whitening.BatchWhitening(8, group_size=4)
    y = bw(_correlated(shape))
    samples = y.transpose(0, 1).reshape(8, -1)  # (C, N): positions are samples
    close(samples.mean(1), torch.zeros(8))
    cov = torch.cov(samples, correction=0).view(2, 4, 2, 4)  # (G, s, G, s)
    for g in range(2):
        close(cov[g, :, g, :], torch.eye(4), tol=1e-3)
    W = bw.running_whitening  # ZCA: the whitening matrix is symmetric
    close(W, W.mT)


def test_whitening_running_update_and_eval_use_population_statistics():
    bw = whitening.BatchWhitening(6, group_size=3, momentum=0.5)
    x = _correlated((64, 6))
    bw(x)
    xn = x.double().numpy().reshape(64, 2, 3)
    xc = xn - xn.mean(0)
    cov = np.einsum("bgi,bgj->gij", xc, xc) / 63  # unbiased, as BatchNorm's running var
    close(bw.running_cov, torch.from_numpy(0.5 * np.eye(3) + 0.5 * cov).to(bw.running_cov.dtype))
    close(bw.running_mean, 0.5 * x.mean(0))
    bw.eval()
    with torch.no_grad():
        A = torch.randn(2, 3, 3)
        bw.running_cov.copy_(A @ A.mT + 0.5 * torch.eye(3))
        bw.running_mean.copy_(torch.randn(6))
        bw.weight.copy_(torch.randn(6))
        bw.bias.copy_(torch.randn(6))
    before = copy.deepcopy(bw.state_dict())
    x = torch.randn(5, 6)
    # independent: numpy's eigendecomposition of the running covariance, full rank here
    lam, U = np.linalg.eigh(bw.running_cov.double().numpy())
    W = torch.from_numpy(U @ (np.eye(3) / np.sqrt(lam + 1e-5)[:, :, None]) @ U.transpose(0, 2, 1))
    expected = torch.einsum("gij,bgj->bgi", W.to(x.dtype),
                            (x - bw.running_mean).view(5, 2, 3)).reshape(5, 6)
    close(bw(x), expected * bw.weight + bw.bias)
    assert all(torch.equal(v, bw.state_dict()[k]) for k, v in before.items())


def test_whitening_eval_does_not_amplify_directions_the_data_never_occupied():
    """A group whose features are 3 mixtures of 2 signals: rank 2. Eval output on data of
    that span equals train-mode output of a large batch (the population transform), and a
    small push off the span (weight drift) is not amplified by 1/sqrt(eps)."""
    torch.manual_seed(0)
    mix = torch.randn(3, 2)
    x = torch.randn(4096, 2) @ mix.T  # (B, 3), rank 2
    bw = whitening.BatchWhitening(3, group_size=3, momentum=1.0, affine=False)
    y_train = bw(x)
    bw.eval()
    close(bw(x), y_train, tol=1e-2)
    null = torch.linalg.svd(mix.T).Vh[-1]  # the direction no training value has
    with torch.no_grad():
        pushed = bw(x[:8] + 1e-3 * null) - bw(x[:8])
    assert pushed.abs().max() < 1e-2  # 1/sqrt(eps) would make it ~0.3


@pytest.mark.parametrize("kind", SHAPES)
def test_whitening_group_size_one_is_batchnorm_in_eval_too(kind):
    ours, ref = whitening.BatchWhitening(6, group_size=1), norms.BatchNorm(6)
    x = torch.randn(SHAPES[kind]) * 3 + 1
    ours(x), ref(x)
    ours.eval(), ref.eval()
    close(ours.running_cov.flatten(), ref.running_var)
    randomize(ours, ref, [("weight", "weight"), ("bias", "bias")])
    assert_same_function(ours, ref, torch.randn(SHAPES[kind]))


def test_whitening_group_rule():
    assert whitening.BatchWhitening(8, group_size=16).group_size == 8
    with pytest.raises(ValueError, match=r"group_size \(3\) must divide num_features \(8\); "
                                         r"try 2"):
        whitening.BatchWhitening(8, group_size=3)


# ---- weight space: WeightNorm, mean-only BatchNorm, CosineNorm ----------------------------

WRAPPABLE = {
    "linear": (lambda: nn.Linear(5, 4), (6, 5)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (3, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2), (2, 4, 6, 5)),
}


@pytest.mark.parametrize("kind", WRAPPABLE)
def test_weightnorm_matches_torch_parametrization(kind):
    make, shape = WRAPPABLE[kind]
    layer = make()
    x = torch.randn(shape)
    ref = weight_norm(copy.deepcopy(layer))
    ours = weightnorm.WeightNorm(layer)
    close(ours(x), layer(x))  # g = ‖v‖ at init: the function is unchanged
    close(ours.weight, layer.weight)
    pairs = [("g", "parametrizations.weight.original0"),
             ("v", "parametrizations.weight.original1"), ("bias", "bias")]
    randomize(ours, ref, pairs[:1])  # a magnitude that differs from ‖v‖
    assert_same_function(ours, ref, x, pairs)
    close(ours.weight, ref.weight)
    with torch.no_grad():
        ours.v.mul_(3.7)  # direction only: the output does not change
    close(ours(x), ref(x))


def test_wrapping_an_unsupported_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="nn.Linear, nn.Conv1d or nn.Conv2d"):
        weightnorm.WeightNorm(nn.Conv3d(2, 2, 1))
    with pytest.raises(ValueError, match="padding_mode"):
        weightnorm.CosineNorm(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


@pytest.mark.parametrize("kind", SHAPES)
def test_mean_only_batchnorm_closed_form_and_running_mean(kind):
    mobn, ref = weightnorm.MeanOnlyBatchNorm(6, momentum=0.3), nn.BatchNorm1d(6, momentum=0.3)
    with torch.no_grad():
        mobn.bias.copy_(torch.randn(6))
    b = mobn.bias.view((1, 6) + (1,) * (len(SHAPES[kind]) - 2))
    dims = (0, *range(2, len(SHAPES[kind])))
    for step in range(3):
        x = torch.randn(SHAPES[kind]) * 3 + step
        close(mobn(x), x - x.mean(dims, keepdim=True) + b)
        ref(x if kind != "cnn2d" else x.flatten(2))
    close(mobn.running_mean, ref.running_mean)
    mobn.eval()
    close(mobn(x), x - mobn.running_mean.view(b.shape) + b)
    with pytest.raises(ValueError, match="at least 2"):
        mobn.train()(torch.randn(1, 6))


def _cosine_reference(layer, scale, x):
    """scale · cos(w_j, input patch) via F.unfold (a 1-D conv as a 2-D conv of height 1)."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return scale * F.cosine_similarity(x.unsqueeze(1), w.unsqueeze(0), dim=-1, eps=0)
    one_d = isinstance(layer, nn.Conv1d)
    x4, w4 = (x.unsqueeze(2), w.unsqueeze(2)) if one_d else (x, w)
    pair = (lambda v: (1, v[0])) if one_d else (lambda v: v)
    pad = (0, layer.padding[0]) if one_d else layer.padding
    patches = F.unfold(x4, w4.shape[2:], dilation=pair(layer.dilation), padding=pad,
                       stride=pair(layer.stride))  # (B, C·k, L)
    B, groups, out = x.shape[0], layer.groups, w.shape[0]
    patches = patches.view(B, groups, -1, patches.shape[-1])  # (B, groups, C/groups·k, L)
    wg = w4.reshape(groups, out // groups, -1)  # (groups, out/groups, C/groups·k)
    cos = F.cosine_similarity(patches.unsqueeze(2), wg.unsqueeze(0).unsqueeze(-1), dim=3, eps=0)
    return scale * cos.reshape(B, out, -1)  # (B, out, L)


@pytest.mark.parametrize("kind", WRAPPABLE)
def test_cosine_norm_matches_explicit_cosine(kind):
    make, shape = WRAPPABLE[kind]
    layer = make()
    cn = weightnorm.CosineNorm(layer, scale=2.5)
    assert "bias" not in dict(cn.named_parameters())
    x = torch.randn(shape)
    y = cn(x)
    close(y if kind == "linear" else y.flatten(2), _cosine_reference(layer, 2.5, x))
    assert y.abs().max() <= 2.5 * (1 + 1e-9)


def test_cosine_norm_bounds_reached_and_zero_input_is_finite():
    cn = weightnorm.CosineNorm(nn.Linear(5, 3), scale=4.0)
    close(cn(cn.weight.detach() * 3).diagonal(), torch.full((3,), 4.0))  # x ∥ w: cos = 1
    close(cn(-cn.weight.detach()).diagonal(), torch.full((3,), -4.0))
    conv = weightnorm.CosineNorm(nn.Conv2d(2, 3, 3, padding=1))
    x = torch.zeros(1, 2, 4, 4, requires_grad=True)
    y = conv(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()


def test_cosine_norm_learn_scale():
    learned = weightnorm.CosineNorm(nn.Linear(5, 3), scale=3.0)
    fixed = weightnorm.CosineNorm(nn.Linear(5, 3), scale=3.0, learn_scale=False)
    assert "scale" in dict(learned.named_parameters())
    assert "scale" not in dict(fixed.named_parameters()) and "scale" in fixed.state_dict()
    x = torch.randn(4, 5)
    learned(x).sum().backward()
    assert learned.scale.grad is not None and learned.scale.grad != 0


@PROPERTY
@given(kind=st.sampled_from(sorted(WRAPPABLE)), seed=st.integers(0, 2**16),
       c_w=st.floats(0.01, 100.0), c_x=st.floats(0.01, 100.0))
def test_cosine_norm_is_invariant_to_scaling_weights_and_inputs(kind, seed, c_w, c_x):
    torch.manual_seed(seed)
    make, shape = WRAPPABLE[kind]
    cn = weightnorm.CosineNorm(make())
    x = torch.randn(shape)
    y = cn(x)
    with torch.no_grad():
        cn.weight.mul_(c_w)
    close(cn(c_x * x), y, tol=1e-7)


@PROPERTY
@given(kind=st.sampled_from(sorted(WRAPPABLE)), seed=st.integers(0, 2**16),
       c=st.floats(0.01, 100.0))
def test_weightnorm_is_invariant_to_scaling_direction(kind, seed, c):
    torch.manual_seed(seed)
    make, shape = WRAPPABLE[kind]
    wn = weightnorm.WeightNorm(make())
    x = torch.randn(shape)
    y = wn(x)
    with torch.no_grad():
        wn.v.mul_(c)
    close(wn(x), y, tol=1e-9)
