"""The fused norm modules (normlab.methods.norms) against their readable reference form
(normlab.methods.reference): forward, gradients of input and parameters, running statistics
and eval mode, to float tolerance, over every method and MLP/CNN shapes."""
from __future__ import annotations

import pytest
import torch

from normlab.methods import norms, reference
from normlab.methods.registry import NORM_NAMES, NORMS, make_norm

SHAPES = {"mlp": (64, 12), "mlp_small": (3, 6), "cnn1d": (8, 6, 20), "cnn2d": (16, 12, 8, 8)}
OPTIONS = {  # every method with its defaults, and variants that change the arithmetic
    "batch": [{}, {"affine": False}, {"momentum": 0.5}],
    "layer": [{}, {"affine": False}],
    "instance": [{}, {"affine": False}],
    "group": [{"num_groups": 1}, {"num_groups": 3}, {"num_groups": 6}, {"affine": False}],
    "rms": [{}, {"affine": False}],
    "batch_renorm": [{}, {"rmax": 1.0, "dmax": 0.0}, {"rmax": 1.5, "dmax": 0.3},
                     {"affine": False}],
}
FUSED = [n for n in NORM_NAMES if NORMS[n].space == "activation" and n not in ("none", "whiten")]
CASES = [(name, opts, kind) for name in FUSED for opts in OPTIONS[name] for kind in SHAPES
         if kind.startswith("cnn") or "mlp" in NORMS[name].models]
TOL = {torch.float64: 1e-9, torch.float32: 1e-3}  # float32: 2-value groups are ill-conditioned


def test_every_fused_method_has_a_reference_and_options_here():
    assert set(FUSED) == set(OPTIONS)
    for name in FUSED:
        assert type(make_norm(name, 6, conv=True)) in reference.REFERENCES


def _pair(name, opts, C, dtype):
    torch.manual_seed(1)
    fused = make_norm(name, C, conv=True, **opts).to(dtype)
    with torch.no_grad():  # parameters away from their 1/0 init
        for p in fused.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    ref = reference.reference_of(fused)
    assert type(ref) is reference.REFERENCES[type(fused)] and type(ref) is not type(fused)
    return fused, ref


def _same_step(fused, ref, x, tol):
    """Same output; same gradient of x and of every parameter under a random loss."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fused(x1), ref(x2)
    torch.testing.assert_close(y1, y2, atol=tol, rtol=tol)
    gy = torch.randn_like(y1)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol, rtol=tol)
    for (n1, p1), (n2, p2) in zip(fused.named_parameters(), ref.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1.grad, p2.grad, atol=tol * 10, rtol=tol, msg=n1)
    fused.zero_grad()
    ref.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,opts,kind", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}-{k}"
                              for n, o, k in CASES])
def test_fused_matches_reference_train_running_stats_and_eval(name, opts, kind, dtype):
    shape = SHAPES[kind]
    fused, ref = _pair(name, opts, shape[1], dtype)
    tol = TOL[dtype]
    gen = torch.Generator().manual_seed(2)
    for step in range(4):  # shifting, scaled inputs: running stats move, r and d clip
        x = (torch.randn(shape, generator=gen) * (1 + 2 * step) + 3 * step).to(dtype)
        _same_step(fused, ref, x, tol)
    for (b1, v1), (b2, v2) in zip(fused.named_buffers(), ref.named_buffers()):
        assert b1 == b2
        torch.testing.assert_close(v1, v2, atol=tol, rtol=tol, msg=b1)
    fused.eval()
    ref.eval()
    before = {k: v.clone() for k, v in fused.named_buffers()}
    _same_step(fused, ref, (torch.randn(shape, generator=gen) * 2 - 1).to(dtype), tol)
    _same_step(fused, ref, (torch.randn((1,) + shape[1:], generator=gen)).to(dtype), tol)
    assert all(torch.equal(v, before[k]) for k, v in fused.named_buffers())  # eval: no update


def test_batchrenorm_clipping_is_exercised_by_the_cases():
    """The running statistics start at (0, 1) and the cases' later inputs are far off, so r
    and d hit their clips: the fused r/d correction is checked where it matters."""
    x = torch.randn(64, 12, dtype=torch.float64) * 7 + 9
    var, mean = torch.var_mean(x, 0, correction=0)
    fused = norms.BatchRenorm(12).double()
    assert (torch.sqrt(var + fused.eps) > fused.rmax).all() and (mean > fused.dmax).all()
    with torch.no_grad():
        fused.weight.copy_(torch.randn(12))
    ref = reference.reference_of(fused)
    expected = fused.weight * ((x - mean) / torch.sqrt(var + fused.eps) * fused.rmax
                               + fused.dmax) + fused.bias  # r = rmax, d = dmax
    torch.testing.assert_close(fused(x), expected)
    torch.testing.assert_close(ref(x), expected)


def test_clear_errors_are_kept():
    with pytest.raises(ValueError, match="at least 2 examples"):
        norms.BatchNorm(4)(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 2 examples"):
        norms.BatchRenorm(4)(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"expects input \(B, 4\)"):
        norms.LayerNorm(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="CNN"):
        norms.InstanceNorm(4)(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"RMSNorm\(4\) expects"):
        norms.RMSNorm(4)(torch.randn(3, 5, 2))


def test_one_value_per_group_is_the_bias_not_an_error():
    """GroupNorm with C groups on an MLP layer: x − μ = 0, so h = b (F.group_norm refuses it)."""
    gn = norms.GroupNorm(6, num_groups=6)
    with torch.no_grad():
        gn.bias.copy_(torch.arange(6.0))
    x = torch.randn(1, 6)
    # torch's kernel computes x·(g/σ) − μ·(g/σ) + b with 1/σ = 1/sqrt(eps) ≈ 316, so float32
    # leaves a rounding error of a few ulp of |x|/sqrt(eps), not exact zeros: bound it.
    bound = 4 * x.abs().max().item() / gn.eps ** 0.5 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(gn(x), torch.arange(6.0).expand(1, 6), atol=bound, rtol=0)
    torch.testing.assert_close(gn(x), reference.reference_of(gn)(x), atol=bound, rtol=0)
    gn64, x64 = gn.double(), x.double()  # in float64 the same bound is 2⁻²⁹ times smaller
    torch.testing.assert_close(gn64(x64), torch.arange(6.0, dtype=torch.float64).expand(1, 6))
