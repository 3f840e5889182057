"""The normalization methods as data: names, what μ and σ are, axes, learnable parameters,
train/eval behaviour, papers — without importing torch, so configs can be validated and the
dashboard can render the methods table cheaply. :mod:`normlab.methods.registry` builds the modules.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class NormSpec:
    name: str  # the name users type
    title: str  # human name
    paper: str  # citation
    mu: str  # where the shift comes from
    sigma: str  # where the scale comes from
    axes: str  # reduction axes (MLP input (B, C); CNN input (B, C, H, W) or (B, C, L))
    learnable: str  # learnable parameters of the method itself
    train_eval: str  # how training and evaluation differ
    space: str  # "activation" or "weight"
    models: tuple[str, ...] = ("mlp", "cnn")  # model kinds it applies to
    summary: str = ""  # one line

    def as_row(self) -> dict[str, str]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["models"] = ", ".join(self.models)
        return row


_SPECS = [
    NormSpec("none", "No normalization", "—", "0", "1", "—", "—", "none", "activation",
             summary="the baseline: the identity"),
    NormSpec("batch", "BatchNorm", "Ioffe & Szegedy 2015",
             "batch mean per feature", "batch std per feature (biased)",
             "B (MLP); B, H, W (CNN)", "g, b per feature",
             "train: batch statistics, updates running mean / unbiased var (momentum); "
             "eval: running statistics", "activation",
             summary="standardize each feature over the mini-batch"),
    NormSpec("layer", "LayerNorm", "Ba, Kiros & Hinton 2016",
             "mean over features per example", "std over features per example",
             "C (MLP); C, H, W (CNN)", "g, b per feature/channel", "same in train and eval",
             "activation", summary="standardize each example over its features"),
    NormSpec("instance", "InstanceNorm", "Ulyanov, Vedaldi & Lempitsky 2016",
             "mean per example per channel", "std per example per channel",
             "H, W (CNN only)", "g, b per channel", "same in train and eval", "activation",
             models=("cnn",), summary="standardize each channel of each example over space"),
    NormSpec("group", "GroupNorm", "Wu & He 2018",
             "mean per example per channel group", "std per example per channel group",
             "C/G, H, W (MLP: C/G)", "g, b per channel", "same in train and eval",
             "activation", summary="LayerNorm within groups of channels"),
    NormSpec("rms", "RMSNorm", "Zhang & Sennrich 2019", "0 (no centring)",
             "root mean square over features per example", "C (MLP); C, H, W (CNN)",
             "g per feature/channel", "same in train and eval", "activation",
             summary="LayerNorm without centring"),
    NormSpec("batch_renorm", "Batch Renormalization", "Ioffe 2017",
             "batch mean, corrected toward the running mean (d, clipped to ±dmax)",
             "batch std, corrected toward the running std (r, clipped to [1/rmax, rmax])",
             "B (MLP); B, H, W (CNN)", "g, b per feature",
             "train: batch statistics with r/d correction (no gradient through r, d); "
             "eval: running statistics", "activation",
             summary="BatchNorm whose train output matches eval output within clipping"),
    NormSpec("weight", "WeightNorm", "Salimans & Kingma 2016", "0 (optionally the batch mean: "
             "mean-only BatchNorm)", "‖v‖ of each output unit's weight vector",
             "per output unit over its input weights (in; in, kH, kW)", "g per unit, v, bias",
             "same in train and eval (mean-only BN: running mean in eval); init: "
             "weight_init='data' (default, the paper's) sets g and b from a first batch so "
             "each unit starts at mean 0, variance 1; 'plain' sets g = ‖v‖, which computes "
             "exactly what 'none' computes at the start", "weight",
             summary="w = g · v / ‖v‖: decouples magnitude from direction"),
    NormSpec("cosine", "CosineNorm", "Luo et al. 2017", "0",
             "‖w‖ · ‖x‖ per unit (weights and input patch)",
             "per output unit over its inputs (in; in, kH, kW)", "scale (optional)",
             "same in train and eval", "weight",
             summary="output = scale · cos(w, x): bounded pre-activations"),
    NormSpec("whiten", "Decorrelated BatchNorm (ZCA whitening)", "Huang et al. 2018",
             "batch mean per feature", "batch covariance^(1/2) within groups of group_size",
             "B (MLP); B, H, W (CNN), decorrelating features within each group",
             "g, b per feature",
             "train: batch whitening matrix, updates running mean / covariance; eval: the "
             "whitening matrix of the running (population) covariance, directions the data "
             "never occupied left at 0", "activation",
             summary="full whitening: the 'ideal', decorrelating normalization"),
]

NORMS: dict[str, NormSpec] = {s.name: s for s in _SPECS}
NORM_NAMES: tuple[str, ...] = tuple(NORMS)

def norms_for(model: str) -> list[str]:
    """The names that apply to a model kind ("mlp" or "cnn")."""
    return [n for n, s in NORMS.items() if model in s.models]


def clipped_divisor(name: str, value: int, num_features: int) -> int:
    """``value`` clipped to ``num_features``; ValueError unless it is a positive divisor.
    The shared rule of GroupNorm's ``num_groups`` and whitening's ``group_size``."""
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    clipped = min(value, num_features)
    if num_features % clipped:
        raise ValueError(f"{name} ({clipped}) must divide num_features ({num_features}); "
                         f"try {largest_divisor(num_features, clipped)}")
    return clipped


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (the auto group rule)."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)
