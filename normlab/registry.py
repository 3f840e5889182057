"""The one registry of normalization names: what each method is, and how to build it.

Every method is a choice in ``h = f(g · (x − μ) / σ + b)``; :data:`NORMS` says, per name,
where μ and σ come from, which axes they reduce over, what is learnable and how train and
eval differ. The dashboard renders this table; the CLI, store and charts use its names.

Two kinds of method:

* *activation-space* (``none``, ``batch``, ``layer``, ``instance``, ``group``, ``rms``,
  ``batch_renorm``, ``whiten``): a module placed after a linear/conv map —
  :func:`make_norm`.
* *weight-space* (``weight``, ``cosine``): they reparameterize the linear/conv map itself —
  :func:`wrap_layer`.

:func:`build_norm` is the one way models use: it returns the (possibly wrapped) layer and
the activation-space module that follows it, for any name.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

from normlab import norms, weightnorm, whitening


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
             "same in train and eval (mean-only BN: running mean in eval)", "weight",
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
             "train: batch whitening matrix, updates running mean / whitening matrix; "
             "eval: running ones", "activation",
             summary="full whitening: the 'ideal', decorrelating normalization"),
]

NORMS: dict[str, NormSpec] = {s.name: s for s in _SPECS}
NORM_NAMES: tuple[str, ...] = tuple(NORMS)

_ACTIVATION_CLASSES = {
    "none": norms.NoNorm,
    "batch": norms.BatchNorm,
    "layer": norms.LayerNorm,
    "instance": norms.InstanceNorm,
    "group": norms.GroupNorm,
    "rms": norms.RMSNorm,
    "batch_renorm": norms.BatchRenorm,
    "whiten": whitening.BatchWhitening,
}


def norms_for(model: str) -> list[str]:
    """The names that apply to a model kind ("mlp" or "cnn")."""
    return [n for n, s in NORMS.items() if model in s.models]


def _check_name(name: str) -> NormSpec:
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORM_NAMES)}")
    return NORMS[name]


def make_norm(name: str, num_features: int, *, conv: bool = False, **options) -> nn.Module:
    """An activation-space normalization module for ``num_features`` features/channels.

    ``conv`` says the input is (B, C, *spatial) rather than (B, C). Options are passed to
    the class (eps, momentum, num_groups, rmax, dmax, group_size...). Weight-space names
    are rejected here: use :func:`build_norm` or :func:`wrap_layer`.
    """
    spec = _check_name(name)
    if spec.space == "weight":
        raise ValueError(f"{name!r} reparameterizes a layer's weights; build it with "
                         "normlab.build_norm(name, layer, ...) or wrap_layer(name, layer)")
    if not conv and "mlp" not in spec.models:
        raise ValueError(f"{name!r} normalizes each channel over its spatial positions, and an "
                         "MLP layer has none: use model 'cnn', or choose 'layer' or 'group'")
    return _ACTIVATION_CLASSES[name](num_features, **options)


def wrap_layer(name: str, layer: nn.Module, **options) -> nn.Module:
    """``layer`` (nn.Linear / nn.Conv1d / nn.Conv2d) reparameterized by a weight-space method."""
    spec = _check_name(name)
    if name == "weight":
        return weightnorm.WeightNorm(layer)
    if name == "cosine":
        return weightnorm.CosineNorm(layer, **options)
    raise ValueError(f"{name!r} ({spec.title}) is an activation-space method: use make_norm")


def build_norm(name: str, layer: nn.Module, num_features: int, *, conv: bool = False,
               options: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """(layer, norm) for a block ``layer → norm → activation``, whatever the method.

    Activation-space methods leave ``layer`` as it is and return their module as ``norm``;
    weight-space methods wrap ``layer`` and return ``norm`` = identity (``NoNorm``), or
    mean-only BatchNorm for ``weight`` with ``mean_only_bn=True`` (the paper's variant).
    Only the options a method uses are passed to it.
    """
    opts = dict(options or {})
    spec = _check_name(name)
    if spec.space == "weight":
        if name == "weight":
            norm = (weightnorm.MeanOnlyBatchNorm(num_features, momentum=opts.get("momentum", 0.1))
                    if opts.get("mean_only_bn") else norms.NoNorm(num_features))
            return wrap_layer(name, layer), norm
        cosine_opts = {k: opts[k] for k in ("scale", "learn_scale") if k in opts}
        return wrap_layer(name, layer, **cosine_opts), norms.NoNorm(num_features)
    accepted = {
        "none": (),
        "batch": ("eps", "momentum"),
        "layer": ("eps",),
        "instance": ("eps",),
        "group": ("eps", "num_groups"),
        "rms": ("eps",),
        "batch_renorm": ("eps", "momentum", "rmax", "dmax"),
        "whiten": ("eps", "momentum", "group_size"),
    }[name]
    kw = {k: opts[k] for k in accepted if k in opts}
    return layer, make_norm(name, num_features, conv=conv, **kw)
