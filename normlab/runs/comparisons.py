"""Comparisons: one base config × lists of values (norms, seeds, any other field).

The Python API mirrors the CLI::

    import normlab
    cid, runs = normlab.compare(normlab.RunConfig(steps=500, lr=0.1),
                                norms=["batch", "layer", "none"], seeds=[0, 1])
    normlab.wait(cid)                                  # or watch it in the dashboard
    frame = normlab.Store().metrics(comparison=cid, metrics=["loss"])

A list of values can also be a range, as the CLI and the lab forms take it
(:func:`parse_values`): ``logspace:0.001:10:9`` (9 values evenly spaced on a log axis, ends
included, 3 significant digits), ``linspace:0:1:5``; integer fields round and de-duplicate
(``--batch_size logspace:2:128:7`` gives 2, 4, ..., 128).

Every config of the grid is validated before anything is stored: one bad value fails the
whole submission with a :class:`~normlab.training.config.ConfigError` naming each bad field.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from normlab.training.config import ConfigError, RunConfig, coerce, errors
from normlab.runs.engine import ensure_engine
from normlab.runs.store import FINISHED, Store


RANGE_KINDS = ("logspace", "linspace")
MAX_RANGE = 1000  # values one range may make


def parse_values(field: str, text: str) -> list[Any]:
    """The values ``text`` gives for config field ``field``: a comma list (``0.1,0.01``) or
    a range ``logspace:LOW:HIGH:N`` / ``linspace:LOW:HIGH:N`` (ends included). Values are
    coerced to the field's type; integer fields round and drop repeats. ConfigError names
    the field and the fix."""
    from normlab.training.config import FIELD_TYPES

    if field not in FIELD_TYPES:
        raise ConfigError({field: f"unknown config field {field!r}"})
    text = str(text).strip()
    kind = text.split(":", 1)[0].strip().lower()
    if kind not in RANGE_KINDS:
        parts = [p.strip() for p in text.split(",")]
        if any(p == "" for p in parts):
            raise ConfigError({field: f"{text!r} has an empty item; give comma-separated "
                                      "values like 0.1,0.01 or a range like logspace:0.001:10:9"})
        return [coerce(field, p) for p in parts]
    if FIELD_TYPES[field] not in ("int", "float"):
        raise ConfigError({field: f"{kind} ranges are for numeric fields; give {field} as a "
                                  "comma-separated list"})
    usage = f"write {kind}:LOW:HIGH:N, e.g. {kind}:0.001:10:9"
    parts = text.split(":")
    try:
        low, high, n = float(parts[1]), float(parts[2]), int(parts[3])
        if len(parts) != 4:
            raise ValueError
    except (IndexError, ValueError):
        raise ConfigError({field: f"{text!r} is not a range; {usage}"}) from None
    if not (math.isfinite(low) and math.isfinite(high)) or not 1 <= n <= MAX_RANGE:
        raise ConfigError({field: f"{text!r}: LOW and HIGH must be numbers and N between 1 "
                                  f"and {MAX_RANGE}; {usage}"})
    if kind == "logspace" and (low <= 0 or high <= 0):
        raise ConfigError({field: f"{text!r}: a logspace needs LOW and HIGH above 0; "
                                  "use linspace for a range through 0"})
    values = (np.geomspace(low, high, n) if kind == "logspace" else np.linspace(low, high, n))
    if FIELD_TYPES[field] == "int":
        return list(dict.fromkeys(int(round(v)) for v in values))
    return [float(f"{v:.3g}") for v in values]


def expand(base: RunConfig, grid: dict[str, Iterable[Any]]) -> list[RunConfig]:
    """Every combination of ``grid``'s values applied to ``base`` (the first field varies
    slowest). Unknown fields, empty lists and values of the wrong type raise ConfigError."""
    fields = asdict(base)
    bad = {k: f"unknown config field {k!r}" for k in grid if k not in fields}
    if bad:
        raise ConfigError(bad)
    values = {}
    for key, vals in grid.items():
        vals = list(vals)
        if not vals:
            raise ConfigError({key: f"the list of {key} values is empty"})
        values[key] = [coerce(key, v) for v in vals]
    keys = list(values)
    return [base.replace(**dict(zip(keys, combo))) for combo in itertools.product(*values.values())]


def check(configs: list[RunConfig]) -> None:
    """Validate every config (sizes of known datasets included); raise one ConfigError."""
    from normlab.training.data import train_size

    problems: dict[str, str] = {}
    for cfg in configs:
        found = errors(cfg)
        if not found.keys() & {"dataset", "val_fraction", "n_samples"}:
            try:
                size = train_size(cfg.dataset, val_fraction=cfg.val_fraction,
                                  n_samples=cfg.n_samples, seed=cfg.seed, noise=cfg.noise)
                found = errors(cfg, size)
            except ValueError as exc:  # a missing or malformed file: the dataset's problem
                found["dataset"] = str(exc)
        for field, msg in found.items():
            problems.setdefault(field, msg)
    if problems:
        raise ConfigError(problems)


def submit(configs: list[RunConfig], *, name: str | None = None, base: RunConfig | None = None,
           grid: dict | None = None, store: Store | str | None = None, start: bool = True,
           workers: int | None = None) -> tuple[str, list[str]]:
    """Queue ``configs`` as one comparison; returns (comparison id, run ids) at once."""
    check(configs)
    store = store if isinstance(store, Store) else Store(store)
    cid, run_ids = store.create_comparison([c.to_dict() for c in configs], name=name,
                                           base=base.to_dict() if base else None, grid=grid)
    if start:
        ensure_engine(store.path, workers=workers)
    return cid, run_ids


def compare(base: RunConfig | None = None, *, norms: Iterable[str] | None = None,
            seeds: Iterable[int] | None = None, grid: dict[str, Iterable[Any]] | None = None,
            name: str | None = None, store: Store | str | None = None, wait: bool = False,
            workers: int | None = None) -> tuple[str, list[str]]:
    """Submit base × norms × seeds (× any other ``grid`` field); optionally wait for it."""
    base = base or RunConfig()
    full: dict[str, list] = {}
    if norms is not None:
        full["norm"] = list(norms)
    if seeds is not None:
        full["seed"] = list(seeds)
    full.update({k: list(v) for k, v in (grid or {}).items()})
    configs = expand(base, full)
    store = store if isinstance(store, Store) else Store(store)
    cid, run_ids = submit(configs, name=name, base=base, grid=full or None, store=store,
                          workers=workers)
    if wait:
        wait_for(cid, store=store)
    return cid, run_ids


def wait_for(comparison: str, *, store: Store | str | None = None, poll: float = 0.25,
             on_progress: Callable[[Any], None] | None = None,
             timeout: float | None = None) -> dict[str, str]:
    """Block until every run of ``comparison`` has finished; returns run id → status.

    ``on_progress(runs_frame)`` is called at each poll (the CLI draws its bars with it).
    """
    store = store if isinstance(store, Store) else Store(store)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        runs = store.runs(comparison=comparison)
        if on_progress is not None:
            on_progress(runs)
        if runs.status.isin(FINISHED).all():
            return dict(zip(runs.id, runs.status))
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"comparison {comparison} still running after {timeout}s")
        time.sleep(poll)
