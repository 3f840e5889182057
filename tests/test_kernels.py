"""The statistics kernels against numpy and torch: exact order statistics of the
sample whatever its distribution (narrow, outliers, ties, a single value, NaN), the
histogram against a binary search over the sorted sample, moments, saturation and dead
units, parameter norms, accuracy, and tensors that are not contiguous float32. Every test
runs twice: with the compiled kernels and with the numpy fallback
(:mod:`normlab.measure.backends`)."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.measure import backends
from normlab.measure.probes import (_ACT_STATS, _SLOT_WIDTH, accuracy, activation_row,
                                    addresses, quantiles_for, saturation)
from normlab.measure.schema import unit_picks, hist_edges

NO_LOGITS = np.zeros(4, dtype=np.int64)  # parameter_stats: no accuracy to compute
NO_TENSORS = np.zeros(0, dtype=np.int64)  # no addresses: that part is skipped

@pytest.fixture(scope="module", params=["compiled", "fallback"], autouse=True)
def kern(request):
    """The kernels every test of this module uses (through NORMLAB_KERNELS)."""
    before = os.environ.get(backends.MODE_ENV)
    os.environ[backends.MODE_ENV] = request.param
    yield backends.current()
    if before is None:
        del os.environ[backends.MODE_ENV]
    else:
        os.environ[backends.MODE_ENV] = before


WIDTH = len(_ACT_STATS)  # mean, var, p15, p50, p85, p50_lo, p50_hi, histogram, extras


def stats(t: torch.Tensor, sample: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The kernel's row for one tensor, with the given sample positions."""
    row = activation_row(t, sample, edges)
    assert np.isnan(row[-1])  # no activation: no saturation
    return row[:WIDTH]


def reference(t: torch.Tensor, sample: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy: moments of every value; percentiles, the median's interval (at the
    quantiles of quantiles_for) and the histogram of the sample; values outside the edges
    counted apart."""
    x = t.detach().float().contiguous().numpy().ravel()
    s = np.sort(x[sample])
    cuts = np.searchsorted(s, edges, side="left")  # bin i is [edge i, edge i+1)
    hist = np.diff(cuts) / len(s)
    under, over = cuts[0] / len(s), (len(s) - cuts[-1]) / len(s)
    with np.errstate(invalid="ignore", over="ignore"):
        moments = [x.astype(np.float64).mean(), x.astype(np.float64).var()]
    q = quantiles_for(len(s), x.size)
    return np.concatenate([moments, np.quantile(s.astype(np.float64), q), hist,
                           [under, over, edges[0], edges[-1]]])


values = st.one_of(  # distributions that stress the select: wide, narrow, far outliers, ties
    st.builds(lambda seed, scale, shift: torch.randn(64, 40, generator=torch.Generator().manual_seed(seed)) * scale + shift,
              st.integers(0, 10_000), st.sampled_from([1e-4, 0.05, 1.0, 30.0]), st.sampled_from([0.0, 3.0, -50.0])),
    st.builds(lambda seed: torch.randint(0, 3, (64, 40), generator=torch.Generator().manual_seed(seed)).float(),
              st.integers(0, 10_000)),
    st.builds(lambda seed: torch.cat([torch.randn(64, 39, generator=torch.Generator().manual_seed(seed)),
                                      torch.full((64, 1), 1e6)], 1), st.integers(0, 10_000)),
)


@settings(max_examples=60, deadline=None)
@given(t=values, size=st.sampled_from([1, 2, 21, 101, 1021, 2560]),
       site=st.sampled_from(["pre_norm", "post_norm", "post_act"]))
def test_activation_stats_match_numpy(t, size, site):
    rng = np.random.default_rng(size)
    sample = np.sort(rng.choice(t.numel(), size=size, replace=False))
    edges = hist_edges(site)
    got, want = stats(t, sample, edges), reference(t, sample, edges)
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-9, atol=1e-9 * max(1, abs(want[0])))
    np.testing.assert_allclose(got[2:7], want[2:7], rtol=1e-12, atol=0)  # exact order statistics
    np.testing.assert_array_equal(got[7:], want[7:])  # the schema's edges are exact in binary
    if size == t.numel():  # every value: no sampling error, the interval is the median
        assert got[5] == got[6] == got[3]


def test_non_finite_values_give_nan_moments_and_numpys_percentiles():
    t = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    t[0, 0], t[3, 5] = float("nan"), float("inf")
    sample = np.arange(t.numel())
    got = stats(t, sample, hist_edges("pre_norm"))
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert np.isnan(got[2:7]).all()  # as numpy: a NaN in the sample makes them NaN
    t[0, 0] = 0.0  # inf alone: percentiles of the sorted sample
    got = stats(t, sample, hist_edges("pre_norm"))
    np.testing.assert_allclose(got[2:5], np.percentile(t.numpy().astype(np.float64), [15, 50, 85]),
                               rtol=1e-12)


def test_not_contiguous_or_not_float32_tensors_are_copied_first():
    base = torch.randn(40, 64, dtype=torch.float64)
    t = base.t()  # (64, 40), float64, not contiguous
    sample = np.arange(t.numel())
    np.testing.assert_allclose(stats(t, sample, hist_edges("pre_norm")),
                               reference(t, sample, hist_edges("pre_norm")), rtol=1e-6, atol=1e-7)


def test_fitted_edges_count_values_outside_apart_and_never_in_the_end_bins():
    t = (torch.arange(-160, 161) / 16).reshape(1, -1)  # -10 to 10 by 1/16: exact in binary
    edges = np.linspace(-2.0, 3.0, 33)
    got = stats(t, np.arange(t.numel()), edges)
    want = reference(t, np.arange(t.numel()), edges)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    hist, (under, over, lo, hi) = got[7:39], got[39:43]
    assert under == 128 / 321 and over == 113 / 321  # below -2; 3 and above
    assert hist[0] == pytest.approx(hist[1], abs=1 / 321)  # no pile-up at the ends
    assert (lo, hi) == (-2.0, 3.0) and hist.sum() + under + over == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(64, 10), (16, 6, 9), (8, 5, 3, 4)])
def test_unit_percentiles_are_exact_over_the_batch_and_positions(shape):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))) * 2 + 1
    row = activation_row(t, np.arange(0, t.numel(), 3), hist_edges("pre_norm"))
    units = row[WIDTH:_SLOT_WIDTH].reshape(3, 3)  # (unit, percentile)
    C = shape[1]
    for k, u in enumerate(unit_picks(C)):
        values = t[:, u].double().numpy().ravel()  # every example and position of unit u
        np.testing.assert_allclose(units[k], np.percentile(values, [15, 50, 85]), rtol=1e-6)


def test_median_interval_matches_the_normal_approximation_for_a_sample():
    t = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).reshape(1000, 100)
    sample = np.sort(np.random.default_rng(0).choice(t.numel(), 6401, replace=False))
    got = stats(t, sample, hist_edges("pre_norm"))
    # the median of N(0, 1) from m of N values: standard error 1.2533·sqrt(fpc/m)
    se = 1.2533 * np.sqrt((1 - 6401 / 100_000) / 6401)
    assert got[6] - got[5] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_same_input_gives_bit_identical_output():
    t = torch.randn(64, 100) * 3
    sample = np.sort(np.random.default_rng(0).choice(6400, 1021, replace=False))
    a, b = stats(t, sample, hist_edges("pre_norm")), stats(t.clone(), sample, hist_edges("pre_norm"))
    assert a.tobytes() == b.tobytes()


def test_saturation_and_dead_units():
    y = torch.sigmoid(torch.randn(64, 50) * 4)
    ref = ((y * (1 - y)) < 0.05 * 0.25).double().mean().item()
    assert saturation(y, "sigmoid") == pytest.approx(ref, abs=1e-12)
    conv = torch.relu(torch.randn(8, 6, 5, 5))
    conv[:, [1, 4]] = 0  # two dead channels
    assert saturation(conv, "relu") == pytest.approx(2 / 6)


def test_parameter_norms_snapshot_and_step(kern):
    params = [torch.randn(30, 20), torch.randn(7), torch.randn(20, 5)]
    keep: list = []
    sizes = np.array([p.numel() for p in params], dtype=np.int64)
    grad2, weight2 = np.empty(3), np.empty(3)
    buffer = np.empty(int(sizes.sum()), dtype=np.float32)
    grads = [torch.randn_like(p) for p in params]
    kern.before_step(addresses(grads, keep), sizes, grad2, addresses(params, keep), sizes,
                     buffer, weight2)
    np.testing.assert_allclose(grad2, [g.double().square().sum().item() for g in grads], rtol=1e-12)
    np.testing.assert_allclose(weight2, [p.double().square().sum().item() for p in params], rtol=1e-12)
    before = [p.clone() for p in params]
    for p, g in zip(params, grads):
        p.sub_(0.1 * g)
    row = np.empty(1 + 3 * 2)
    owner, in_all = np.array([0, 0, 1]), np.array([0, 1, 2])
    no_tensors = np.zeros(0, dtype=np.int64)  # the gradients were measured before the step
    kern.parameter_stats(addresses(params, keep), sizes, buffer, True, no_tensors, sizes,
                         grad2, weight2, in_all, owner, row, False, NO_LOGITS)
    w = [np.sqrt(sum(b.double().square().sum().item() for b in before[:2])), before[2].double().norm().item()]
    d = [np.sqrt(sum((p - b).double().square().sum().item() for p, b in zip(params[:2], before[:2]))),
         (params[2] - before[2]).double().norm().item()]
    np.testing.assert_allclose(row[0], np.sqrt(grad2.sum()), rtol=1e-12)
    np.testing.assert_allclose(row[3:5], w, rtol=1e-12)
    np.testing.assert_allclose(row[5:7], np.array(d) / w, rtol=1e-5)
    # measuring the gradients after the step instead (they are unchanged) gives the same row
    again, fresh = np.empty_like(row), np.full(3, np.nan)
    kern.parameter_stats(addresses(params, keep), sizes, buffer, True, addresses(grads, keep),
                         sizes, fresh, weight2, in_all, owner, again, False, NO_LOGITS)
    np.testing.assert_array_equal(again, row)
    # without a copy of the weights: their norms now, no update ratio
    kern.parameter_stats(addresses(params, keep), sizes, buffer, False, no_tensors, sizes,
                         grad2, weight2, in_all, owner, again, False, NO_LOGITS)
    now = [np.sqrt(sum(p.double().square().sum().item() for p in params[:2])), params[2].double().norm().item()]
    np.testing.assert_allclose(again[3:5], now, rtol=1e-12)
    assert np.isnan(again[5:7]).all() and again[0] == row[0]


def test_parameter_stats_carries_the_weights_and_takes_the_accuracy(kern):
    """``carry`` leaves in the buffer and the squared norms exactly what copy_weights would
    write before the next step (bit for bit), after the row is computed from the old copy;
    ``logits`` makes the same call return the accuracy torch's argmax gives."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(30, 20, generator=gen), torch.randn(7, generator=gen)]
    keep: list = []
    sizes = np.array([p.numel() for p in params], dtype=np.int64)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    grad2, weight2 = np.empty(2), np.empty(2)
    buffer = np.empty(int(sizes.sum()), dtype=np.float32)
    kern.before_step(addresses(grads, keep), sizes, grad2, addresses(params, keep), sizes,
                     buffer, weight2)
    before = [p.clone() for p in params]
    for p, g in zip(params, grads):
        p.sub_(0.1 * g)
    in_all, owner = np.array([0, 1]), np.array([0, 0])
    plain, carried = np.empty(4), np.empty(4)
    kern.parameter_stats(addresses(params, keep), sizes, buffer.copy(), True, NO_TENSORS,
                         sizes, grad2, weight2.copy(), in_all, owner, plain, False, NO_LOGITS)
    logits = torch.randint(0, 3, (40, 10), generator=gen).float()  # ties: the first max wins
    targets = torch.randint(0, 10, (40,), generator=gen)
    args = np.array([logits.data_ptr(), 40, 10, targets.data_ptr()], dtype=np.int64)
    acc = kern.parameter_stats(addresses(params, keep), sizes, buffer, True, NO_TENSORS,
                               sizes, grad2, weight2, in_all, owner, carried, True, args)
    np.testing.assert_array_equal(carried, plain)  # the row is the old copy's
    np.testing.assert_allclose(plain[2], np.sqrt(sum(b.double().square().sum().item()
                                                     for b in before)), rtol=1e-12)
    fresh_buffer, fresh2 = np.empty_like(buffer), np.empty(2)
    kern.copy_weights(addresses(params, keep), sizes, fresh_buffer, fresh2)
    assert buffer.tobytes() == fresh_buffer.tobytes() and weight2.tobytes() == fresh2.tobytes()
    assert acc == (logits.argmax(1) == targets).double().mean().item()
    assert np.isnan(kern.parameter_stats(addresses(params, keep), sizes, buffer, True,
                                         NO_TENSORS, sizes, grad2, weight2, in_all, owner,
                                         carried, False, NO_LOGITS))


@given(st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_accuracy_matches_torch_argmax_ties_included(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 3, (50, 10), generator=gen).float()  # many ties: first max wins
    targets = torch.randint(0, 10, (50,), generator=gen)
    hits = (logits.argmax(1) == targets).sum().item()
    assert accuracy(logits, targets) * 50 == pytest.approx(hits, abs=1e-9)
    assert accuracy(logits.double(), targets) * 50 == pytest.approx(hits, abs=1e-5)  # torch path

