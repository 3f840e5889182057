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

from torch import nn

from normlab.methods import norms, weightnorm, whitening
from normlab.methods.specs import NORM_NAMES, NORMS, NormSpec, norms_for  # noqa: F401 (re-exported)


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
