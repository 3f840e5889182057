"""Measurement: what NormLab records about a training run, and how.

``schema`` defines the tidy record ``(run, step, layer, site, metric, value)``, every site
and metric name, once; ``probes`` attaches to any ``nn.Module`` (and always detaches) and
turns a step into records; ``kernels`` are the compiled statistics the probes call (numba,
reading tensors in place), ``fallback`` the same in numpy, used until they are compiled
(``backends`` chooses, ``precompile`` compiles them in the background); ``stages`` is the
opt-in probe of the formula's stages (x̂ = (x − μ)/σ, g and b; ``RunConfig.stages``).
Depends on :mod:`normlab.methods` only, to recognise norm layers.
"""
