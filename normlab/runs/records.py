"""Field-by-field checks of run and comparison records that come from outside the store.

An import file is untrusted: a record with ``"seed": "abc"``, ``"tags": 5`` or a
``created_at`` of NaN must not reach the store, where it would break ``list``, ``show`` and
every page for everyone. :func:`clean_comparison` and :func:`clean_run` check every field
of one record against the store's schema (:mod:`normlab.runs.storedb`) and the config
against :class:`~normlab.training.config.RunConfig`, and return the record as it will be
stored; the first problem raises :class:`RecordError` naming the record and the field.

The fields charts group by (``norm``, ``seed``, ``dataset``, ``model``, ``total_steps``)
are taken from the validated config, never from the file, so what a page shows is what
runs. Every config must pass the validation a new launch passes (:func:`errors`); a
queued run's is validated once more, with the resource caps, when the engine claims it.
"""
from __future__ import annotations

import math
import re
from typing import Any

from normlab.runs.chunks import MAX_STEP
from normlab.runs.storedb import ACTIVE, STATUSES
from normlab.training.config import ConfigError, RunConfig, errors

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ids the URL and the CLI can carry
MAX_POSITION = 1_000_000  # a run's index in its comparison
MAX_TEXT = 100_000  # characters in a name, note, tag or error message
CONTROLS = (None, "cancel", "pause")


class RecordError(ValueError):
    """One bad field of an imported record: ``str()`` names the record and the field."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    def __init__(self, record: dict, what: str):
        self.record, self.what = record, what

    def fail(self, key: str, problem: str) -> None:
        raise RecordError(f"{self.what} field {key!r}: {problem}")

    def text(self, key: str, optional: bool = True) -> str | None:
        value = self.record.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            self.fail(key, f"{_short(value)} is not text")
        if len(value) > MAX_TEXT:
            self.fail(key, f"{len(value):,} characters, more than {MAX_TEXT:,}")
        return value

    def ident(self, key: str) -> str:
        value = self.record.get(key)
        if not isinstance(value, str) or not ID_PATTERN.match(value):
            self.fail(key, f"{_short(value)} is not an id (1-64 letters, digits, _ or -)")
        return value

    def number(self, key: str, optional: bool = False, low: float = 0.0) -> float | None:
        value = self.record.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"{_short(value)} is not a number")
        if not math.isfinite(value) or value < low or value > 1e12:
            self.fail(key, f"{_short(value)} is not a finite number in {low:g}..1e12")
        return float(value)

    def integer(self, key: str, high: int, default: int | None = 0) -> int | None:
        value = self.record.get(key, default)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            self.fail(key, f"{_short(value)} is not a whole number in 0..{high:,}")
        return value

    def tags(self) -> list[str]:
        value = self.record.get("tags")
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            self.fail("tags", f"{_short(value)} is not a list of text")
        if sum(map(len, value)) > MAX_TEXT:
            self.fail("tags", f"more than {MAX_TEXT:,} characters")
        return list(dict.fromkeys(t.strip() for t in value if t.strip()))

    def config(self, key: str, full: bool) -> dict | None:
        value = self.record.get(key)
        if value is None and key == "base":
            return None
        if not isinstance(value, dict):
            self.fail(key, f"{_short(value)} is not a config object")
        try:
            cfg = RunConfig.from_dict(value)
        except ConfigError as exc:
            name, msg = next(iter(exc.errors.items()))
            self.fail(key, f"{name}: {msg}")
        except TypeError as exc:
            self.fail(key, f"not a config ({exc})")
        if full and (problems := errors(cfg)):
            name, msg = next(iter(problems.items()))
            self.fail(key, f"{name}: {msg}")
        full_dict = cfg.to_dict()
        return {k: full_dict[k] for k in value}  # the fields given, each of its proper type


def clean_comparison(record: Any, index: int) -> dict[str, Any]:
    """The comparison record as stored; RecordError at its first bad field."""
    if not isinstance(record, dict):
        raise RecordError(f"comparison {index} is {_short(record)}, not an object")
    c = _Checker(record, f"comparison {index}")
    cid = c.ident("id")
    c.what = f"comparison {cid!r}"
    grid = record.get("grid")
    if grid is not None and not (isinstance(grid, dict) and all(
            isinstance(k, str) and isinstance(v, list) for k, v in grid.items())):
        c.fail("grid", f"{_short(grid)} is not an object of lists")
    origin = record.get("origin")  # absent in exports older than the field
    if origin is not None and not (isinstance(origin, dict) and set(origin) == {"lab", "preset"}
                                   and all(isinstance(v, str) and v for v in origin.values())):
        c.fail("origin", f"{_short(origin)} is not {{\"lab\": key, \"preset\": key}}")
    return {"id": cid, "name": c.text("name"), "created_at": c.number("created_at"),
            "base": c.config("base", full=False), "grid": grid,
            "notes": c.text("notes") or "", "tags": c.tags(),
            "origin": None if origin is None else {"lab": origin["lab"],
                                                   "preset": origin["preset"]}}


def clean_run(record: Any, index: int, comparisons: set[str]) -> dict[str, Any]:
    """The run record as stored (fields shown by the pages taken from its config);
    RecordError at its first bad field."""
    if not isinstance(record, dict):
        raise RecordError(f"run {index} is {_short(record)}, not an object")
    c = _Checker(record, f"run {index}")
    rid = c.ident("id")
    c.what = f"run {rid!r}"
    comparison = record.get("comparison_id")
    if comparison not in comparisons:
        c.fail("comparison_id", f"{_short(comparison)} is not a comparison the file holds")
    status = record.get("status")
    if status not in STATUSES:
        c.fail("status", f"{_short(status)} is not one of {', '.join(STATUSES)}")
    control = record.get("control")
    if control not in CONTROLS:
        c.fail("control", f"{_short(control)} is not empty, 'cancel' or 'pause'")
    if record.get("source") == "external":
        return _clean_external(c, record, rid, comparison, status, control)
    config = c.config("config", full=True)
    shown = RunConfig.from_dict(config)  # defaults filled in: what the engine would run
    step = c.integer("step", MAX_STEP)
    return {"source": "normlab",
        "id": rid, "comparison_id": comparison, "position": c.integer("position", MAX_POSITION),
        "name": c.text("name"), "status": status, "control": control, "step": step,
        "total_steps": shown.steps, "steps_per_sec": c.number("steps_per_sec", True),
        "norm": shown.norm, "seed": shown.seed, "dataset": shown.dataset,
        "model": shown.model, "error": c.text("error"), "worker_pid": None,
        "created_at": c.number("created_at"), "started_at": c.number("started_at", True),
        "finished_at": c.number("finished_at", True),
        "heartbeat_at": c.number("heartbeat_at", True),
        "tags": c.tags(), "notes": c.text("notes") or "", "config": config,
        "was_active": status in ACTIVE,
    }


def _clean_external(c: _Checker, record: dict, rid: str, comparison: str, status: str,
                    control: str | None) -> dict[str, Any]:
    """An external run (logged by a user's own loop, :func:`normlab.log`): its config is
    any JSON object, shown as given, and it is never trained here, so never queued."""
    config = record.get("config")
    if not isinstance(config, dict):
        c.fail("config", f"{_short(config)} is not a config object")
    if status == "queued":
        c.fail("status", "an external run (logged by its own loop) cannot be queued")
    name = c.text("name")
    seed = record.get("seed")
    return {
        "source": "external", "id": rid, "comparison_id": comparison,
        "position": c.integer("position", MAX_POSITION), "name": name, "status": status,
        "control": None, "step": c.integer("step", MAX_STEP),
        "total_steps": c.integer("total_steps", MAX_STEP, default=None),
        "steps_per_sec": c.number("steps_per_sec", True),
        "norm": c.text("norm") or name or rid,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "dataset": c.text("dataset"), "model": c.text("model"), "error": c.text("error"),
        "worker_pid": None, "created_at": c.number("created_at"),
        "started_at": c.number("started_at", True), "finished_at": c.number("finished_at", True),
        "heartbeat_at": c.number("heartbeat_at", True), "tags": c.tags(),
        "notes": c.text("notes") or "", "config": config, "was_active": status in ACTIVE,
    }
