"""NormLab: every normalization method in one framework, instrumented training runs, and a
store and engine to compare them.

Heavy modules (torch) load on first use of a name below, so ``import normlab`` is cheap
for the store, the CLI and the dashboard pages.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RunConfig": "normlab.config", "ConfigError": "normlab.config",
    "NORMS": "normlab.registry", "NORM_NAMES": "normlab.registry", "make_norm": "normlab.registry",
    "build_norm": "normlab.registry", "wrap_layer": "normlab.registry",
    "norms_for": "normlab.registry",
    "build_model": "normlab.models", "load_dataset": "normlab.data",
    "Probe": "normlab.probes", "Trainer": "normlab.train", "train": "normlab.train",
    "Store": "normlab.store", "compare": "normlab.compare", "submit": "normlab.compare",
    "wait": "normlab.compare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'normlab' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, "wait_for" if name == "wait" else name)
