"""The contract of the probes' statistics kernels: constants and scratch sizes shared by
the compiled implementation (:mod:`normlab.measure.kernels`) and the numpy one
(:mod:`normlab.measure.fallback`); :mod:`normlab.measure.backends` chooses between them."""
from __future__ import annotations

FINE = 32  # select buckets per histogram bin (a central bucket of 6,400 values holds ~20)
SMALL = 64  # a bucket this small is sorted; a larger one is bucketed again
UNWANTED = 64  # region of a bucket holding no wanted rank (at most 64 ranks)
KIND_NONE, KIND_BOUNDS, KIND_DEAD = 0, 1, 2  # what saturation a slot measures


def workspace(sample_size: int, bins: int, percentiles: int, unit_size: int = 0
              ) -> tuple[int, int]:
    """The float32 and int64 scratch lengths ``activation_stats`` needs (``unit_size``:
    the most values a single unit holds, for the per-unit percentiles)."""
    return (max(2 * sample_size, unit_size),
            sample_size + 2 * bins * FINE + 256 + 5 * (2 * percentiles + 1))
