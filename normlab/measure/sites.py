"""Sites: which modules of a model the probe measures, and under which names.

The rule (the README's "What is measured on any model"), applied to any ``nn.Module`` by
walking ``named_modules()`` in registration order: weight layers are tracked by module
path, normalization and activation modules are sites under their own path, a weight
layer no norm takes the output of records that output, and a block holding exactly one
weight layer lends its name to its modules (NormLab's ``hidden1``). Reused modules are
measured per call by :class:`normlab.measure.probes.Probe` (``name#2``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils.parametrize import is_parametrized

from normlab.methods import norms, weightnorm, whitening

WRAPPER_TYPES = (weightnorm.WeightNorm, weightnorm.CosineNorm)  # a layer inside: one unit
WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *WRAPPER_TYPES)
NORM_TYPES = (norms.NoNorm, norms.BatchNorm, norms.LayerNorm, norms.InstanceNorm,
              norms.GroupNorm, norms.RMSNorm, norms.BatchRenorm, whitening.BatchWhitening,
              weightnorm.MeanOnlyBatchNorm, nn.modules.batchnorm._NormBase, nn.LayerNorm,
              nn.GroupNorm, nn.RMSNorm)
ACT_TYPES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.GELU: "gelu",
             nn.LeakyReLU: "relu", nn.ELU: "relu", nn.SiLU: "gelu"}

@dataclass
class LayerSites:
    """What the probe measures under one name (a "layer" of the records)."""

    name: str
    weight: nn.Module | None = None  # its weight layer: gradient, weight and update metrics
    norm: nn.Module | None = None  # pre_norm (input) and post_norm (output)
    act: nn.Module | None = None  # post_act (output)
    activation: str | None = None  # "sigmoid", ... when the activation module is known
    params: list[nn.Parameter] = field(default_factory=list)  # weight params (no biases)
    record_output: bool = False  # no norm takes the weight layer's output: it is pre_norm


def _is_weight_layer(module: nn.Module) -> bool:
    """A module whose own parameters include a matrix or kernel (Linear, Conv,
    MultiheadAttention's in_proj, Embedding, ...), or a weight-space wrapper."""
    if isinstance(module, WEIGHT_TYPES) or is_parametrized(module):
        return True
    return any(p.ndim >= 2 for p in module.parameters(recurse=False))


def _weight_params(module: nn.Module) -> list[nn.Parameter]:
    """The weights a weight layer owns (biases and scales left out): its own, or for a
    wrapper (WeightNorm, CosineNorm, a parametrization) everything inside it."""
    opaque = isinstance(module, WRAPPER_TYPES) or is_parametrized(module)
    named = module.named_parameters() if opaque else module.named_parameters(recurse=False)
    return [p for n, p in named if p.requires_grad and not n.endswith(("bias", "scale"))]


def find_layers(model: nn.Module) -> list[LayerSites]:
    """What the probe measures, in registration order. The rule:

    * every weight layer (:func:`_is_weight_layer`) is tracked by its module path
      (gradient, weight and update metrics); a wrapper's inner modules belong to it;
    * every normalization module is a site under its path: ``pre_norm`` is its input,
      ``post_norm`` its output;
    * every activation module is a site under its path: ``post_act`` is its output;
    * a weight layer whose next measured module (in registration order, same parent) is
      not a normalization module records its own output as ``pre_norm`` (the head, a
      layer feeding an activation directly);
    * a module that is the only weight layer of its parent block lends that block's name
      to the block's modules (NormLab's ``hidden1`` = layer, norm and activation), so a
      block reads as one layer; a second norm or activation there keeps its own path.

    A module called more than once per forward pass is measured at each call (see
    :class:`Probe`: the second call is ``path#2``, ...).
    """
    named: list[tuple[str, nn.Module, str]] = []
    wrappers: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if wrappers and name.startswith(wrappers):
            continue  # inside a wrapper: the wrapper is the layer
        if isinstance(module, WRAPPER_TYPES) or is_parametrized(module):
            wrappers += (name + ".",)
        kind = ("norm" if isinstance(module, NORM_TYPES) else
                "act" if type(module) in ACT_TYPES else
                "weight" if _is_weight_layer(module) else None)
        if kind:
            named.append((name, module, kind))
    weights = [n for n, _, k in named if k == "weight"]

    def label(name: str) -> str:
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        inside = [w for w in weights if parent and w.startswith(parent + ".")]
        if parent and parent not in weights and len(inside) == 1:
            return parent
        return name or "model"

    groups: dict[str, LayerSites] = {}
    for i, (name, module, kind) in enumerate(named):
        key = label(name)
        group = groups.setdefault(key, LayerSites(key))
        if getattr(group, kind) is not None:  # a second one under a shared block name
            key = name
            group = groups.setdefault(key, LayerSites(key))
        setattr(group, kind, module)
        if kind == "weight":
            group.params = _weight_params(module)
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            nxt = next(((n, k) for n, _, k in named[i + 1:]
                        if not n.startswith(name + ".")), None)
            same = nxt is not None and (nxt[0].rsplit(".", 1)[0] if "." in nxt[0] else "") == parent
            group.record_output = not (same and nxt[1] == "norm")
        elif kind == "act":
            group.activation = ACT_TYPES[type(module)]
    for group in groups.values():
        if group.norm is not None:
            group.record_output = False
    return list(groups.values())
