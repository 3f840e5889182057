"""Comparisons: one base config × lists of values (norms, seeds, any other field).

The Python API mirrors the CLI::

    import normlab
    cid, runs = normlab.compare(normlab.RunConfig(steps=500, lr=0.1),
                                norms=["batch", "layer", "none"], seeds=[0, 1])
    normlab.wait(cid)                                  # or watch it in the dashboard
    frame = normlab.Store().metrics(comparison=cid, metrics=["loss"])

``backend="ray"`` trains the runs as Ray tasks (:mod:`normlab.runs.raydriver`) instead of
in the local engine; ``ray_address`` (or $NORMLAB_RAY_ADDRESS) names the cluster.

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
from normlab.runs.engine import engine_pid, ensure_engine
from normlab.runs import raydriver
from normlab.runs.store import BACKENDS, FINISHED, Store


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
    from normlab.training.limits import comparison_problem

    lists = {key: list(vals) for key, vals in grid.items()}
    if (too_many := comparison_problem(math.prod(map(len, lists.values())))) is not None:
        raise ConfigError({"runs": too_many})  # before building a config per combination
    values = {}
    for key, vals in lists.items():
        if not vals:
            raise ConfigError({key: f"the list of {key} values is empty"})
        values[key] = [coerce(key, v) for v in vals]
    keys = list(values)
    return [base.replace(**dict(zip(keys, combo))) for combo in itertools.product(*values.values())]


def check(configs: list[RunConfig]) -> None:
    """Validate every config (sizes of known datasets included) and the resource caps of
    :mod:`normlab.training.limits` (runs per comparison, memory and values stored per run);
    raise one ConfigError."""
    from normlab.training.data import dataset_info
    from normlab.training.limits import comparison_problem, problems as cap_problems

    if (too_many := comparison_problem(len(configs))) is not None:
        raise ConfigError({"runs": too_many})
    problems: dict[str, str] = {}
    for cfg in configs:
        found = errors(cfg)
        if not found.keys() & {"dataset", "val_fraction", "n_samples"}:
            try:
                info = dataset_info(cfg.dataset, val_fraction=cfg.val_fraction,
                                    n_samples=cfg.n_samples, seed=cfg.seed, noise=cfg.noise)
                found = errors(cfg, info["train"])
                if not found:
                    found = cap_problems(cfg, info["input_shape"], info["classes"],
                                         info["examples"])
            except ValueError as exc:  # a missing or malformed file: the dataset's problem
                found["dataset"] = str(exc)
        for field, msg in found.items():
            problems.setdefault(field, msg)
    if problems:
        raise ConfigError(problems)


def submit(configs: list[RunConfig], *, name: str | None = None, base: RunConfig | None = None,
           grid: dict | None = None, store: Store | str | None = None, start: bool = True,
           workers: int | None = None, backend: str | None = None,
           ray_address: str | None = None, origin: dict | None = None
           ) -> tuple[str, list[str]]:
    """Queue ``configs`` as one comparison; returns (comparison id, run ids) at once.

    ``backend``: 'local' (the engine) or 'ray'; default 'ray' if $NORMLAB_RAY_ADDRESS is
    set. Without Ray installed, 'ray' raises :class:`~normlab.runs.raydriver.RayMissing`
    before anything is stored. ``origin``: the lab and preset that launched them
    (``{"lab": key, "preset": key}``, stored with the comparison)."""
    backend = backend or raydriver.default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "ray":
        raydriver.require_ray()
        ray_address = raydriver.ray_address(ray_address)  # a ray:// address: ValueError
    check(configs)
    store = store if isinstance(store, Store) else Store(store)
    cid, run_ids = store.create_comparison([c.to_dict() for c in configs], name=name,
                                           base=base.to_dict() if base else None, grid=grid,
                                           backend=backend, origin=origin)
    if start and backend == "ray":
        raydriver.ensure_driver(store.path, ray_address)
    elif start:
        ensure_engine(store.path, workers=workers)
    return cid, run_ids


def compare(base: RunConfig | None = None, *, norms: Iterable[str] | None = None,
            seeds: Iterable[int] | None = None, grid: dict[str, Iterable[Any]] | None = None,
            name: str | None = None, store: Store | str | None = None, wait: bool = False,
            workers: int | None = None, backend: str | None = None,
            ray_address: str | None = None) -> tuple[str, list[str]]:
    """Submit base × norms × seeds (× any other ``grid`` field); optionally wait for it.
    ``backend`` and ``ray_address``: see :func:`submit`."""
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
                          workers=workers, backend=backend, ray_address=ray_address)
    if wait:
        wait_for(cid, store=store)
    return cid, run_ids


ENGINE_GRACE_SECONDS = 5.0  # no engine for this long while runs wait: it is gone


class EngineGone(RuntimeError):
    """No engine serves the store while runs wait (and ``wait_for`` may not restart one)."""


def wait_for(comparison: str, *, store: Store | str | None = None, poll: float = 0.25,
             on_progress: Callable[[Any], None] | None = None,
             timeout: float | None = None, restart: bool = True,
             on_notice: Callable[[str], None] | None = None) -> dict[str, str]:
    """Block until every run of ``comparison`` has finished; returns run id → status.

    ``on_progress(runs_frame)`` is called at each poll (the CLI draws its bars with it).
    If no engine serves the store for ``ENGINE_GRACE_SECONDS`` while runs are unfinished
    (it was killed, or stopped), a new one is started when ``restart`` (runs it left
    running become 'interrupted', queued ones go on) and ``on_notice`` is told; without
    ``restart``, :class:`EngineGone` is raised.
    """
    store = store if isinstance(store, Store) else Store(store)
    deadline = None if timeout is None else time.monotonic() + timeout
    gone_since = None
    while True:
        runs = store.runs(comparison=comparison)
        if on_progress is not None:
            on_progress(runs)
        if runs.status.isin(FINISHED).all():
            return dict(zip(runs.id, runs.status))
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"comparison {comparison} still running after {timeout}s")
        if engine_pid(store.path) is not None:
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since > ENGINE_GRACE_SECONDS:
            message = f"no engine serves {store.path}"
            if not restart:
                raise EngineGone(f"{message}; start one with `python -m normlab engine "
                                 f"--store {store.path}`")
            ensure_engine(store.path)
            gone_since = None
            if on_notice is not None:
                on_notice(f"{message} (it stopped or was killed): started a new one; runs "
                          "it was training are marked interrupted, queued runs go on")
        time.sleep(poll)
