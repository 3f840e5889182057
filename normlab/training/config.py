"""The run configuration: one frozen dataclass whose saved form *is* a run's identity.

``asdict(cfg)`` is stored with every run, so any chart can be reproduced from it.
:func:`validate` checks a config before anything trains and reports one message per bad
field, each naming the value and the fix; :class:`ConfigError` carries them all.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from normlab.methods.specs import clipped_divisor, largest_divisor  # noqa: F401 (re-exported)

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
MODELS = ("mlp", "cnn")
INITS = ("default", "xavier", "kaiming", "normal")
OPTIMIZERS = ("sgd", "momentum", "adam")
NORM_POSITIONS = ("before", "after")
WEIGHT_INITS = ("data", "plain")
BUILTIN_DATASETS = ("digits", "mnist1d", "spirals", "moons", "circles")
FILE_DATASET_PREFIXES = ("idx:", "csv:")


@dataclass(frozen=True)
class RunConfig:
    # data
    dataset: str = "digits"  # digits | mnist1d | spirals | moons | circles | idx:DIR | csv:FILE
    standardize: bool = True  # standardize inputs with training-set statistics (off: a lesson)
    val_fraction: float = 0.2  # share of examples held out for validation
    n_samples: int = 2000  # synthetic 2-D sets only: number of points
    noise: float = 0.1  # synthetic 2-D sets only: noise level
    # model
    model: str = "mlp"  # mlp | cnn
    depth: int = 3  # hidden layers (mlp) or conv blocks (cnn)
    width: int = 100  # hidden units (mlp) or channels (cnn)
    activation: str = "sigmoid"  # sigmoid | tanh | relu | gelu (sigmoid shows saturation best)
    init: str = "default"  # default (torch's) | xavier | kaiming | normal (std = init_scale)
    init_scale: float = 1.0  # multiplies the init's std; far from 1 is where norms matter most
    # normalization
    norm: str = "batch"  # a name from normlab.NORMS
    norm_position: str = "before"  # before | after the activation
    eps: float = 1e-5  # added to the variance before the square root
    momentum: float = 0.1  # running-statistics update rate (batch, batch_renorm, whiten)
    num_groups: int = 0  # group: channel groups; 0 = auto (see auto_groups)
    group_size: int = 0  # whiten: features whitened together; 0 = auto (divisor of width <= 16)
    rmax: float = 3.0  # batch_renorm: r is clipped to [1/rmax, rmax]
    dmax: float = 5.0  # batch_renorm: d is clipped to [-dmax, dmax]
    mean_only_bn: bool = False  # weight: add the paper's mean-only BatchNorm after the layer
    cosine_scale: float = 5.0  # cosine: initial output scale (cos is in [-1, 1])
    cosine_learn_scale: bool = True  # cosine: learn the scale (False: keep it fixed)
    # optimization
    optimizer: str = "sgd"  # sgd | momentum (0.9) | adam
    lr: float = 0.1  # learning rate
    weight_decay: float = 0.0  # L2 penalty coefficient
    batch_size: int = 64  # examples per step
    steps: int = 1000  # optimizer steps
    # measurement
    eval_interval: int = 100  # validation loss/accuracy every this many steps (and at the end)
    record_interval: int = 1  # probes measure every this many steps
    eval_train_mode: bool = False  # also evaluate validation in training mode (batch statistics
    #   over batches of batch_size, running statistics untouched): site "val_train_mode"
    seed: int = 0  # seeds data split, init and batch order: same config, same numbers
    # added later (kept last so stored configs stay valid)
    weight_init: str = "data"  # weight: data (g, b from a first batch, Salimans & Kingma) | plain (g = ‖v‖)
    # -- Lab 2, how far from whitening (opt-in; normlab.measure.decorrelation) --
    decorrelation: bool = False  # per norm layer, every recorded step: mean |off-diagonal
    #   correlation| (all pairs, within groups) and the spread of per-feature means and
    #   variances, of the norm's input (pre_norm) and standardized output (xhat)
    corr_snapshots: int = 0  # at this many log-spaced steps (0 = none, at most 12): the
    #   correlation matrices of the norm's input and output (first <= 32 features) and the
    #   eigenvalues of the output's covariance
    # Lab 3, internal covariate shift (normlab.measure.ics)
    ics_interval: int = 0  # drift, Santurkar's ICS and smoothness every this many steps
    #   (0 = off; each measured step costs ~depth + 9 extra forward/backward passes)
    stages: bool = False  # record the formula's stages (x̂, μ/σ, g/b, near-linear share; y
    #   per feature every eval_interval steps): sites "norm_hat", "affine" (Lab 1; costs time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "RunConfig":
        """A config as stored with a run: a field added after the run was stored takes the
        value the run actually trained with (:data:`STORED_BEFORE`), not today's default."""
        return cls.from_dict({**STORED_BEFORE, **data})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from a stored dict; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError({k: f"unknown config field {k!r}" for k in unknown})
        return cls(**{k: coerce(k, v) for k, v in data.items()})

    def replace(self, **changes) -> "RunConfig":
        return replace(self, **changes)

    def norm_options(self) -> dict[str, Any]:
        """Options handed to :func:`normlab.build_norm` (each method picks what it uses)."""
        return {
            "eps": self.eps, "momentum": self.momentum,
            "num_groups": self.num_groups or auto_groups(self.width, self.model),
            "group_size": self.group_size or largest_divisor(self.width, 16),
            "rmax": self.rmax, "dmax": self.dmax,
            "mean_only_bn": self.mean_only_bn, "scale": self.cosine_scale,
            "learn_scale": self.cosine_learn_scale,
        }


FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}
# What runs stored before a field existed did: WeightNorm runs used the plain init.
STORED_BEFORE = {"weight_init": "plain"}
DEFAULTS = RunConfig()


class ConfigError(ValueError):
    """Invalid configuration: ``errors`` maps each bad field to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


def coerce(name: str, value: Any) -> Any:
    """``value`` converted to the type of field ``name`` (from strings too, as the CLI and
    URL give them); raises ConfigError naming the field if it cannot be."""
    kind = FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError({name: f"{value!r} is not a valid {kind}"}) from None


def _dataset_error(name: str) -> str | None:
    if name in BUILTIN_DATASETS:
        return None
    if name.startswith(FILE_DATASET_PREFIXES):
        return None if name.split(":", 1)[1].strip() else f"{name!r} names no path"
    return (f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}, "
            "or idx:FOLDER / csv:FILE for your own files")


def errors(cfg: RunConfig, train_size: int | None = None) -> dict[str, str]:
    """One message per bad field (empty when the config is valid).

    ``train_size`` (number of training examples), when known, also checks the batch size.
    """
    from normlab.methods.specs import NORMS, norms_for

    e: dict[str, str] = {}

    def need(cond: bool, field: str, msg: str) -> None:
        if not cond and field not in e:
            e[field] = msg

    if (msg := _dataset_error(cfg.dataset)) is not None:
        e["dataset"] = msg
    need(cfg.model in MODELS, "model", f"unknown model {cfg.model!r}; choose mlp or cnn")
    need(cfg.activation in ACTIVATIONS, "activation",
         f"unknown activation {cfg.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    need(cfg.init in INITS, "init", f"unknown init {cfg.init!r}; choose one of {', '.join(INITS)}")
    need(cfg.optimizer in OPTIMIZERS, "optimizer",
         f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    need(cfg.weight_init in WEIGHT_INITS, "weight_init",
         f"unknown weight_init {cfg.weight_init!r}; choose data (the paper's) or plain")
    need(cfg.norm_position in NORM_POSITIONS, "norm_position",
         f"unknown norm_position {cfg.norm_position!r}; choose before or after")
    spatial = cfg.dataset in ("digits", "mnist1d") or cfg.dataset.startswith("idx:")
    need(cfg.model != "cnn" or spatial, "model",
         f"a CNN needs image or signal data (digits, mnist1d, idx:FOLDER); {cfg.dataset!r} "
         "has none: use model 'mlp'")
    need(cfg.norm in NORMS, "norm", f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORMS)}")
    if cfg.norm in NORMS and cfg.model in MODELS and cfg.norm not in norms_for(cfg.model):
        e["norm"] = (f"{cfg.norm!r} needs a CNN: it normalizes each channel over spatial "
                     "positions, which an MLP layer does not have; set model to 'cnn' or pick "
                     "'layer'/'group'")
    for name in ("depth", "width", "batch_size", "steps", "eval_interval", "record_interval",
                 "n_samples"):
        need(getattr(cfg, name) >= 1, name, f"{name} must be at least 1 (got {getattr(cfg, name)})")
    for name in ("num_groups", "group_size"):
        need(getattr(cfg, name) >= 0, name,
             f"{name} must be 0 (auto) or a positive divisor of width (got {getattr(cfg, name)})")
    for name in ("lr", "init_scale", "eps", "rmax", "cosine_scale"):
        v = getattr(cfg, name)
        need(math.isfinite(v) and v > 0, name, f"{name} must be a positive number (got {v})")
    for name in ("weight_decay", "noise", "dmax"):
        v = getattr(cfg, name)
        need(math.isfinite(v) and v >= 0, name, f"{name} must be zero or positive (got {v})")
    need(0 < cfg.momentum <= 1, "momentum", f"momentum must be in (0, 1] (got {cfg.momentum})")
    need(0 < cfg.val_fraction < 1, "val_fraction",
         f"val_fraction must be between 0 and 1 (got {cfg.val_fraction})")
    need(cfg.ics_interval >= 0, "ics_interval",
         f"ics_interval must be 0 (off) or a positive number of steps (got {cfg.ics_interval})")
    need(cfg.rmax >= 1, "rmax", f"rmax must be at least 1 (got {cfg.rmax})")
    from normlab.measure.schema import MAX_SNAPSHOTS  # Lab 2's snapshot cap

    need(0 <= cfg.corr_snapshots <= MAX_SNAPSHOTS, "corr_snapshots",
         f"corr_snapshots must be 0 (none) to {MAX_SNAPSHOTS} (got {cfg.corr_snapshots})")
    need(cfg.depth <= 64, "depth", f"depth {cfg.depth} is more than 64 layers; use fewer")
    need(cfg.width <= 4096, "width", f"width {cfg.width} is more than 4096; use fewer units")
    need(cfg.steps <= 1_000_000, "steps", f"steps {cfg.steps} is more than 1,000,000")
    from normlab.training.limits import max_samples  # the cap is documented there

    need(cfg.n_samples <= max_samples(), "n_samples",
         f"n_samples {cfg.n_samples:,} is more than the cap of {max_samples():,} examples; "
         "use fewer (NORMLAB_MAX_SAMPLES raises the cap)")
    if cfg.norm in ("batch", "batch_renorm", "whiten") and cfg.batch_size == 1:
        e["batch_size"] = (f"{cfg.norm!r} normalizes over the batch, which needs at least 2 "
                           "examples; raise batch_size to 2 or more, or pick 'layer'")
    if cfg.norm == "weight" and cfg.mean_only_bn and cfg.batch_size == 1:
        e["batch_size"] = ("mean-only BatchNorm needs at least 2 examples per batch; raise "
                           "batch_size or turn mean_only_bn off")
    if cfg.norm == "group" and cfg.width >= 1 and cfg.num_groups >= 1:
        groups = min(cfg.num_groups, cfg.width)
        need(cfg.width % groups == 0, "num_groups",
             f"num_groups ({groups}) must divide width ({cfg.width}); try "
             f"{largest_divisor(cfg.width, groups)}, or 0 for auto")
        need(cfg.model != "mlp" or cfg.width // groups >= 2, "num_groups",
             f"num_groups ({groups}) puts one feature in each group of this MLP, which "
             "normalizes every value to 0; use fewer groups, or 0 for auto")
    if cfg.norm == "whiten" and cfg.width >= 1 and cfg.group_size >= 1:
        size = min(cfg.group_size, cfg.width)
        need(cfg.width % size == 0, "group_size",
             f"group_size ({size}) must divide width ({cfg.width}); try "
             f"{largest_divisor(cfg.width, size)}, or 0 for auto")
    if train_size is not None and cfg.batch_size > train_size:
        e.setdefault("batch_size", f"batch_size ({cfg.batch_size}) is larger than the training "
                                   f"set ({train_size} examples); use at most {train_size}")
    return e


# Per-example shapes of the built-in datasets a CNN can use (files: known once loaded).
KNOWN_SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40)}


def positions(cfg: RunConfig, input_shape: tuple | None = None) -> list[int] | None:
    """Spatial positions each normalized layer sees: 1 per MLP layer; for the CNN, the
    conv output sizes (2× max-pooled after a block while the size is at least 4, as
    :class:`normlab.training.models.CNN`). None when the input shape is unknown."""
    if cfg.model != "cnn":
        return [1] * cfg.depth
    shape = input_shape or KNOWN_SHAPES.get(cfg.dataset)
    if shape is None or len(shape) < 2:
        return None
    sizes, out = list(shape[1:]), []
    for _ in range(cfg.depth):
        out.append(math.prod(sizes))
        if min(sizes) >= 4:
            sizes = [s // 2 for s in sizes]
    return out


def warnings(cfg: RunConfig, input_shape: tuple | None = None) -> dict[str, str]:
    """Field → message for settings that run but give misleading numbers (empty: none).

    ``whiten`` with fewer samples per group (batch × spatial positions, at the layer with
    the fewest) than features per group: the batch covariance is singular, so the
    output cannot be decorrelated."""
    out: dict[str, str] = {}
    if cfg.norm == "whiten" and cfg.width >= 1 and cfg.batch_size >= 1 and cfg.depth >= 1:
        size = min(cfg.group_size or largest_divisor(cfg.width, 16), cfg.width)
        where = positions(cfg, input_shape)
        if where is not None:
            samples = cfg.batch_size * min(where)
            if samples < size:
                layer = ("every layer" if cfg.model == "mlp" else
                         f"conv{where.index(min(where)) + 1}")
                out["batch_size"] = (
                    f"whiten: {layer} whitens groups of {size} features over only {samples} "
                    f"samples (batch × spatial positions), so the batch covariance is "
                    f"singular and the output cannot be decorrelated; use a batch_size of at "
                    f"least {-(-size // min(where))} or a group_size of at most {samples}")
    return out


def auto_groups(width: int, model: str = "cnn") -> int:
    """GroupNorm's default groups: the largest divisor of ``width`` that is at most 32 (Wu &
    He's default) — and, on an MLP, where a group's only values are its features, that
    leaves at least 8 features per group (a group of 2 values normalizes to ±1)."""
    return largest_divisor(width, 32 if model != "mlp" else min(32, max(1, width // 8)))


def validate(cfg: RunConfig, train_size: int | None = None) -> RunConfig:
    """``cfg`` if valid, else ConfigError listing every bad field."""
    e = errors(cfg, train_size)
    if e:
        raise ConfigError(e)
    return cfg
