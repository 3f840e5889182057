"""Normalization methods: every method as one choice in ``h = f(g·(x − μ)/σ + b)``.

``specs`` is the table of methods (where μ and σ come from, over which axes, the paper;
no torch, so the dashboard renders it cheaply); ``norms`` the activation-space layers
(BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm, Batch Renormalization) on one
moments helper; ``weightnorm`` the weight-space methods (WeightNorm, mean-only BatchNorm,
CosineNorm), which decouple a weight's magnitude from its direction; ``whitening`` ZCA
decorrelated BatchNorm; ``registry`` turns a method's name into a module
(``make_norm``, ``build_norm``, ``wrap_layer``). Depends on nothing else in NormLab.
"""
