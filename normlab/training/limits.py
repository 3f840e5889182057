"""Resource caps: what one run may cost in memory and disk, estimated before anything runs.

A valid link or command must not be able to take the machine down in front of a room, so
every submission is checked against documented caps *before* it is queued
(:func:`problems`, called by :func:`normlab.runs.comparisons.check`). The estimates are
closed forms from the config, no model is built:

* **parameters** — the exact count of :mod:`normlab.training.models` for MLPs and CNNs
  (weights, biases, two affine vectors per norm), see :func:`parameter_count`;
* **memory** — parameters × 4 bytes × 4 (weights, gradients, two Adam moments), plus the
  activations autograd keeps at the batch size (about 6 float32 tensors per layer output:
  pre-norm, normalized, activated, their gradients), plus the data set (float32, twice:
  the pool and the split), see :func:`memory_bytes`;
* **values stored** — the probes record 115 values per hidden layer and 8 model values at
  each recorded step (:mod:`normlab.measure.schema`), see :func:`values_stored`.

Caps (environment variables change them; the README's "Security and limits" says how):

=====================  =====================================  ==============================
cap                    default                                variable
=====================  =====================================  ==============================
memory per run         25 % of the machine's RAM              ``NORMLAB_MAX_RUN_MEMORY``
                                                              (a share, e.g. 0.5)
runs per comparison    200                                    ``NORMLAB_MAX_RUNS``
values stored per run  10,000,000 (~120 MB in the store)      ``NORMLAB_MAX_VALUES``
examples generated     1,000,000 (``n_samples``)              ``NORMLAB_MAX_SAMPLES``
data file size         512 MB (read and decompressed)         ``NORMLAB_MAX_FILE_MB``
=====================  =====================================  ==============================
"""
from __future__ import annotations

import math
import os

from normlab.measure.schema import (CURVE_METRICS, CURVE_SITES, FEATURE_CAP,
                                   ICS_LAYER_VALUES, MATRIX_FEATURES, SITE_VALUES,
                                   SMOOTH_METRICS, STAGE_VALUES, values_per_snapshot)

# ``cfg`` arguments are normlab.training.config.RunConfig objects; not imported here,
# because config.errors imports this module for the n_samples cap.

DEFAULT_MEMORY_SHARE = 0.25  # one run may plan for this share of the machine's RAM
DEFAULT_MAX_RUNS = 200  # runs in one comparison
DEFAULT_MAX_VALUES = 10_000_000  # measured values stored per run (12 bytes each + index)
DEFAULT_MAX_SAMPLES = 1_000_000  # n_samples of the synthetic 2-D sets
DEFAULT_MAX_FILE_MB = 512  # a data file, read or decompressed, in MB
BYTES_PER_VALUE = 12  # int32 step + float64 value in a stored chunk
VALUES_PER_LAYER = 3 * SITE_VALUES + 1 + 3  # 3 activation sites, saturation, 3 param metrics
VALUES_PER_MODEL = SITE_VALUES + 3 + 5  # the head's output site and 3 param metrics;
#                                         train loss/acc/grad_norm, val loss/acc
ACTIVATION_COPIES = 6  # float32 tensors autograd and the probes keep per layer output
INPUT_SHAPES = {  # per-example shape of the built-in sets (idx: MNIST's, csv: a guess)
    "digits": (1, 8, 8), "mnist1d": (1, 40), "spirals": (2,), "moons": (2,),
    "circles": (2,), "idx": (1, 28, 28), "csv": (64,),
}
CLASSES = {"digits": 10, "mnist1d": 10, "idx": 10}  # others: 2 (csv: a guess)
EXAMPLES = {"digits": 1797, "mnist1d": 5000, "idx": 70_000, "csv": 10_000}


def _env_number(name: str, default: float, kind=float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; unset it or give e.g. "
                         f"{default}") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be positive; unset it or give e.g. {default}")
    return value


def ram_bytes() -> int:
    """Physical memory of this machine (bytes)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small laptop
        return 8 << 30


def max_run_memory() -> int:
    return int(ram_bytes() * _env_number("NORMLAB_MAX_RUN_MEMORY", DEFAULT_MEMORY_SHARE))


def max_runs() -> int:
    return int(_env_number("NORMLAB_MAX_RUNS", DEFAULT_MAX_RUNS, int))


def max_values() -> int:
    return int(_env_number("NORMLAB_MAX_VALUES", DEFAULT_MAX_VALUES, int))


def max_samples() -> int:
    return int(_env_number("NORMLAB_MAX_SAMPLES", DEFAULT_MAX_SAMPLES, int))


def max_file_bytes() -> int:
    return int(_env_number("NORMLAB_MAX_FILE_MB", DEFAULT_MAX_FILE_MB) * (1 << 20))


# ------------------------------------------------------------------------- estimates

def _kind(dataset: str) -> str:
    return dataset.split(":", 1)[0] if dataset.startswith(("idx:", "csv:")) else dataset


def _shape(cfg: RunConfig, input_shape: tuple | None) -> tuple:
    return tuple(input_shape) if input_shape else INPUT_SHAPES.get(_kind(cfg.dataset), (64,))


def _cnn_sizes(cfg: RunConfig, shape: tuple) -> list[int]:
    """Spatial positions at each conv block's output (models.CNN: 2× pooling while the
    spatial size is at least 4)."""
    spatial = list(shape[1:]) or [1]
    out = []
    for _ in range(cfg.depth):
        out.append(math.prod(spatial))
        if min(spatial) >= 4:
            spatial = [s // 2 for s in spatial]
    return out


def parameter_count(cfg: RunConfig, input_shape: tuple | None = None,
                    num_classes: int | None = None) -> int:
    """Parameters of the model ``cfg`` builds (norm affines counted as 2 × width)."""
    shape = _shape(cfg, input_shape)
    k = num_classes or CLASSES.get(_kind(cfg.dataset), 2)
    w, d = cfg.width, cfg.depth
    if cfg.model == "cnn":
        kernel = 3 ** max(1, len(shape) - 1)
        first = shape[0] * w * kernel + w
        rest = (d - 1) * (w * w * kernel + w)
    else:
        first = math.prod(shape) * w + w
        rest = (d - 1) * (w * w + w)
    return first + rest + d * 2 * w + w * k + k


def activation_count(cfg: RunConfig, input_shape: tuple | None = None) -> int:
    """Activation values of one example over all layers (before the copies autograd keeps)."""
    shape = _shape(cfg, input_shape)
    if cfg.model == "cnn":
        return cfg.width * sum(_cnn_sizes(cfg, shape))
    return cfg.width * cfg.depth


def memory_bytes(cfg: RunConfig, input_shape: tuple | None = None,
                 num_classes: int | None = None, examples: int | None = None) -> int:
    """Estimated peak memory of one run (bytes): parameters with gradients and optimizer
    state, activations at the batch size, and the data set."""
    shape = _shape(cfg, input_shape)
    params = parameter_count(cfg, shape, num_classes) * 4 * 4
    acts = cfg.batch_size * activation_count(cfg, shape) * 4 * ACTIVATION_COPIES
    if examples is None:
        examples = cfg.n_samples if _kind(cfg.dataset) in ("spirals", "moons", "circles") \
            else EXAMPLES.get(_kind(cfg.dataset), 10_000)
    data = examples * math.prod(shape) * 4 * 2
    return params + acts + data


def values_per_record(cfg: RunConfig) -> int:
    """Values the probes store at one recorded step (an upper bound)."""
    wrapped = 2 if cfg.norm in ("weight", "cosine") else 0  # grad_norm_v, grad_norm_g
    train_mode = 2 if getattr(cfg, "eval_train_mode", False) else 0  # val_train_mode
    decorrelation = DECORRELATION_VALUES if getattr(cfg, "decorrelation", False) else 0
    stages = STAGE_VALUES if getattr(cfg, "stages", False) else 0  # opt-in (Lab 1)
    return ((VALUES_PER_LAYER + wrapped + decorrelation + stages) * cfg.depth
            + VALUES_PER_MODEL + train_mode)


def values_stored(cfg: RunConfig, record_interval: int | None = None) -> int:
    """Values a run stores from start to end (an upper bound)."""
    every = record_interval or cfg.record_interval
    features = 0  # stages: 4 values per feature (at most FEATURE_CAP) every eval_interval
    if getattr(cfg, "stages", False):
        features = (4 * min(cfg.width, FEATURE_CAP) * cfg.depth
                    * (cfg.steps // max(cfg.eval_interval, every) + 1))
    return (values_per_record(cfg) * (cfg.steps // every + 1) + features
            + snapshot_values(cfg) + ics_values(cfg))


# -- Lab 2: decorrelation curves and correlation-matrix snapshots ------------------------
DECORRELATION_VALUES = len(CURVE_SITES) * len(CURVE_METRICS)  # per layer and recorded step


def snapshot_values(cfg: RunConfig) -> int:
    """Values the correlation-matrix snapshots store over a run (an upper bound)."""
    snapshots = getattr(cfg, "corr_snapshots", 0)
    if not snapshots:
        return 0
    return snapshots * cfg.depth * values_per_snapshot(min(cfg.width, MATRIX_FEATURES))


def ics_values(cfg: RunConfig) -> int:
    """Values Lab 3's opt-in ICS measurement stores (``ics_interval``; 0 when off)."""
    every = getattr(cfg, "ics_interval", 0)
    if every < 1:
        return 0
    return (ICS_LAYER_VALUES * cfg.depth + len(SMOOTH_METRICS)) * (cfg.steps // every + 1)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def problems(cfg: RunConfig, input_shape: tuple | None = None,
             num_classes: int | None = None, examples: int | None = None) -> dict[str, str]:
    """field -> message for each cap ``cfg`` exceeds (empty when within every cap).

    The memory message names the estimate and the limit; the storage message also
    suggests the smallest ``record_interval`` that fits.
    """
    out: dict[str, str] = {}
    if cfg.n_samples > (cap := max_samples()):
        out["n_samples"] = (f"n_samples {cfg.n_samples:,} is more than the cap of {cap:,} "
                            "examples; use fewer (NORMLAB_MAX_SAMPLES raises the cap)")
    if min(cfg.depth, cfg.width, cfg.batch_size, cfg.steps, cfg.record_interval) < 1:
        return out  # config.errors reports those
    mem, cap = memory_bytes(cfg, input_shape, num_classes, examples), max_run_memory()
    if mem > cap:
        params = parameter_count(cfg, input_shape, num_classes)
        field = "width" if cfg.width > 64 else "batch_size"
        out[field] = (f"one run would need about {_size(mem)} of memory ({params:,} "
                      f"parameters, batch {cfg.batch_size}); the limit is {_size(cap)} "
                      f"({max_run_memory() / ram_bytes():.0%} of this machine's RAM): "
                      "use a smaller width, depth or batch_size (NORMLAB_MAX_RUN_MEMORY "
                      "raises the share)")
    values, cap = values_stored(cfg), max_values()
    if values > cap:
        per = values_per_record(cfg)
        every = max(cfg.record_interval, -(-cfg.steps // max(1, cap // per - 1)))
        while values_stored(cfg, every) > cap and every < cfg.steps:
            every += 1
        hint = (f"set record_interval to {every} or more" if values_stored(cfg, every) <= cap
                else "use fewer layers")
        out["record_interval"] = (f"the run would store about {values:,} values "
                                  f"(~{_size(values * BYTES_PER_VALUE)}); the limit is "
                                  f"{cap:,} per run: {hint}, or fewer steps "
                                  "(NORMLAB_MAX_VALUES raises the cap)")
    return out


def comparison_problem(n_runs: int) -> str | None:
    """The message when a comparison of ``n_runs`` runs is over the cap, else None."""
    cap = max_runs()
    if n_runs > cap:
        return (f"{n_runs:,} runs in one comparison is more than the cap of {cap}; vary "
                "fewer values at once (NORMLAB_MAX_RUNS raises the cap)")
    return None
