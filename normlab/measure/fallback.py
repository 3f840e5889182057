"""The probes' statistics in numpy: what a probe uses until the compiled kernels exist.

The same functions, signatures and outputs as :mod:`normlab.measure.kernels` (the
contract is written there and in :mod:`normlab.measure.backends`), computed with numpy's
vectorized calls on the tensors' memory read in place (``numpy`` views of the int64
addresses, no copy). Nothing to compile, so a fresh machine measures its first run at
once; a recorded step costs a few hundred µs more than with the compiled kernels.

Identical to the kernels: percentiles and the median's interval (the same order
statistics, found by ``numpy.partition``, and the same float64 interpolation), histograms
and the fractions outside their range (the same float64 bucket arithmetic), saturation,
dead units, accuracy. Means, variances and norms are float64 sums in numpy's pairwise
order, so they can differ from the kernels' in the last bits.
"""
from __future__ import annotations

import ctypes

import numpy as np

from normlab.measure.kernelspec import (FINE, KIND_BOUNDS, KIND_DEAD, KIND_NONE,  # noqa: F401
                                      workspace)


def _view(address: int, n: int, ctype=ctypes.c_float) -> np.ndarray:
    """The ``n`` values at ``address`` (float32 unless ``ctype`` says otherwise)."""
    return np.ctypeslib.as_array((ctype * int(n)).from_address(int(address)))


def _squares(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.dot(x, x))


# -- parameters ------------------------------------------------------------------------
def squared_norms(addresses, sizes, out) -> None:
    """``out[i]`` = sum of squares of tensor ``i`` (a size of 0 gives 0)."""
    for i in range(addresses.shape[0]):
        out[i] = _squares(_view(addresses[i], sizes[i])) if sizes[i] else 0.0


def copy_weights(addresses, sizes, buffer, weight2) -> None:
    """The weights at ``addresses`` copied one after another into ``buffer``, their
    squared norms into ``weight2``."""
    at = 0
    for i in range(addresses.shape[0]):
        n = int(sizes[i])
        x = _view(addresses[i], n)
        buffer[at:at + n] = x
        weight2[i] = _squares(x)
        at += n


def before_step(grad_addresses, grad_sizes, grad2, weight_addresses, weight_sizes, buffer,
                weight2) -> None:
    """Squared gradient norms into ``grad2``, then :func:`copy_weights`."""
    squared_norms(grad_addresses, grad_sizes, grad2)
    copy_weights(weight_addresses, weight_sizes, buffer, weight2)


def parameter_stats(addresses, sizes, buffer, copied, grad_addresses, grad_sizes, grad2,
                    weight2, layer_in_all, owner, row, carry, logits) -> float:
    """The parameter part of a recorded row, the weights carried into ``buffer`` if
    ``carry``, and the logits' accuracy (see ``kernels.parameter_stats``)."""
    if grad_addresses.shape[0]:
        squared_norms(grad_addresses, grad_sizes, grad2)
    L = int(owner.max()) + 1 if owner.shape[0] else 0
    grads, weights, steps = np.zeros(L), np.zeros(L), np.zeros(L)
    at = 0
    for i in range(addresses.shape[0]):
        n = int(sizes[i])
        x = _view(addresses[i], n)
        grads[owner[i]] += grad2[layer_in_all[i]]
        if copied:
            d = x.astype(np.float64) - buffer[at:at + n].astype(np.float64)
            steps[owner[i]] += np.dot(d, d)
            weights[owner[i]] += weight2[i]
        else:
            weights[owner[i]] += _squares(x)
        if carry:
            buffer[at:at + n] = x
            weight2[i] = _squares(x)
        at += n
    row[0] = np.sqrt(grad2.sum())
    for layer in range(L):
        w = np.sqrt(weights[layer])
        row[1 + layer] = np.sqrt(grads[layer])
        row[1 + L + layer] = w
        row[1 + 2 * L + layer] = np.sqrt(steps[layer]) / max(w, 1e-12) if copied else np.nan
    if logits[1] == 0:
        return np.nan
    return accuracy(*(int(v) for v in logits))


def accuracy(address, rows, cols, labels_address) -> float:
    """Fraction of rows whose first maximum (NaN counts as the maximum) is the label."""
    logits = _view(address, rows * cols).reshape(rows, cols)
    labels = _view(labels_address, rows, ctypes.c_int64)
    return float((np.argmax(logits, axis=1) == labels).sum()) / rows


# -- activations -----------------------------------------------------------------------
def activation_stats(addresses, shapes, samples, sample_index, edges, kinds, bounds,
                     quantiles, units_at, unit_quantiles, row, base, saturation_at, work32,
                     work64) -> None:
    """Statistics of S activation tensors into ``row`` (the layout is
    ``kernels.activation_stats``'s; ``work64`` is unused)."""
    S = addresses.shape[0]
    bins = edges.shape[1] - 1
    nb = bins * FINE
    P = quantiles.shape[1]
    U = units_at.shape[1]
    PU = unit_quantiles.shape[0]
    width = 2 + P + bins + 4 + U * PU
    for s in range(S):
        out = row[base + s * width:base + (s + 1) * width]
        outer, units, inner = (int(v) for v in shapes[s])
        n = outer * units * inner
        first, m = int(samples[s, 0]), int(samples[s, 1])
        if addresses[s] == 0 or n == 0 or m == 0:
            out[:] = np.nan
            if saturation_at[s] >= 0:
                row[saturation_at[s]] = np.nan
            continue
        x = _view(addresses[s], n)
        c = np.float64(x[0])
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            d = x64 - c
            s1, s2 = d.sum(), np.dot(d, d)
            var = s2 / n - (s1 / n) ** 2
        out[0] = c + s1 / n
        out[1] = var if not var < 0.0 else 0.0  # NaN stays NaN
        finite = bool(np.isfinite(s2))
        positions = sample_index[first:first + m]  # sorted: every value if m == n
        sample, sample64 = (x, x64) if m == n else (x[positions], None)
        low, scale = edges[s, 0], nb / (edges[s, bins] - edges[s, 0])
        with np.errstate(invalid="ignore"):
            f = ((sample.astype(np.float64) if sample64 is None else sample64) - low) * scale
            under, over = np.count_nonzero(f < 0.0), np.count_nonzero(f >= nb)
            if not finite:  # the kernels' bucket of NaN is 0
                f[np.isnan(f)] = 0.0
        # the kernels' bucket: 0 below 1, the last one from nb - 1 on, else whole part
        counts = np.bincount(np.clip(f, 0.0, nb - 1.0).astype(np.int64), minlength=nb)
        inside = counts.reshape(bins, FINE).sum(axis=1).astype(np.float64)
        inside[0] -= under  # the end buckets also hold the values outside
        inside[bins - 1] -= over
        out[2 + P:2 + P + bins] = inside / m
        out[2 + P + bins] = under / m
        out[2 + P + bins + 1] = over / m
        out[2 + P + bins + 2] = edges[s, 0]
        out[2 + P + bins + 3] = edges[s, bins]
        position = quantiles[s] * (m - 1)
        low_rank = np.floor(position).astype(np.int64)
        ranks = np.stack([low_rank, np.minimum(low_rank + 1, m - 1)], axis=1).ravel()
        if finite or not np.isnan(sample).any():  # exact order statistics
            ordered = np.sort(sample)[ranks].astype(np.float64)
        else:  # a NaN in the sample makes the percentiles NaN, as numpy's
            ordered = np.full(2 * P, np.nan)
        with np.errstate(invalid="ignore"):
            for p in range(P):  # linear interpolation between order statistics, as numpy
                a, b = ordered[2 * p], ordered[2 * p + 1]
                out[2 + p] = a + (b - a) * (quantiles[s, p] * (m - 1) - ranks[2 * p])
        at = 2 + P + bins + 4
        for k in range(U):  # exact percentiles of single units over the batch
            u = int(units_at[s, k])
            if u < 0 or u >= units or not finite or outer * inner > work32.shape[0]:
                out[at + k * PU:at + (k + 1) * PU] = np.nan
                continue
            values = np.sort(x.reshape(outer, units, inner)[:, u, :].ravel())
            j = values.shape[0]
            for p in range(PU):
                position = unit_quantiles[p] * (j - 1)
                r = int(np.floor(position))
                a, b = np.float64(values[r]), np.float64(values[min(r + 1, j - 1)])
                out[at + k * PU + p] = a + (b - a) * (position - r)
        if saturation_at[s] >= 0:  # over every value
            row[saturation_at[s]] = _saturation(x, x64, int(kinds[s]), bounds[s, 0],
                                                bounds[s, 1], outer, units, inner)


def _saturation(x, x64, kind, low, high, outer, units, inner) -> float:
    if kind == KIND_BOUNDS:
        return float(((x64 < low) | (x64 > high)).sum()) / x.shape[0]
    if kind == KIND_DEAD:
        alive = (x.reshape(outer, units, inner) > 0).any(axis=(0, 2)).sum()
        return 1.0 - alive / units
    return np.nan
