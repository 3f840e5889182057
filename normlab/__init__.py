"""NormLab: every normalization method in one framework, instrumented training runs, and a
store and engine to compare them.

Heavy modules (torch) load on first use of a name below, so ``import normlab`` is cheap
for the store, the CLI and the dashboard pages.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RunConfig": "normlab.training.config", "ConfigError": "normlab.training.config",
    "NORMS": "normlab.methods.registry", "NORM_NAMES": "normlab.methods.registry", "make_norm": "normlab.methods.registry",
    "build_norm": "normlab.methods.registry", "wrap_layer": "normlab.methods.registry",
    "norms_for": "normlab.methods.registry",
    "build_model": "normlab.training.models", "load_dataset": "normlab.training.data",
    "Probe": "normlab.measure.probes", "Trainer": "normlab.training.trainer", "train": "normlab.training.trainer",
    "Store": "normlab.runs.store", "compare": "normlab.runs.comparisons", "submit": "normlab.runs.comparisons",
    "wait": "normlab.runs.comparisons", "log": "normlab.runs.logger",
    "read_export": "normlab.runs.exchange",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'normlab' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, "wait_for" if name == "wait" else name)
