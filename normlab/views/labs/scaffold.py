"""What every lab is made of: a claim, what to look for, and presets that launch runs.

A :class:`Preset` is a named set of run configs — usually ``base`` × ``grid`` (every
combination, as :func:`normlab.runs.comparisons.expand` makes it), optionally with
``tied`` fields computed from each config and the base (Lab 6 scales the learning rate and the number
of steps with the batch size). :func:`preset_configs` builds the configs, :func:`launch`
submits them as one stored comparison through the engine, so a lab's experiment is
reopenable by link (``?comparison=``), pausable and exportable like any comparison; the
comparison records its ``origin`` (lab and preset keys), which export and import carry and
by which ``normlab report`` writes the lab's report.

:func:`with_changes` is what a lab's form does: the same preset with other base values,
methods, seeds or grid values (the form's text fields take the CLI's value syntax,
:func:`normlab.runs.comparisons.parse_values`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from normlab.training.config import ConfigError, RunConfig


@dataclass(frozen=True)
class Preset:
    """One experiment of a lab: ``base`` × ``grid`` (× ``tied`` per config)."""

    key: str  # short id, also written in the comparison's name
    label: str  # the button's text
    base: RunConfig  # every field not in the grid
    grid: dict[str, tuple] = field(default_factory=dict)  # field -> values (norm, seed, ...)
    tied: Callable[[RunConfig, RunConfig], dict[str, Any]] | None = None  # (config, base) ->
    #   fields set from each config (e.g. lr scaled with its batch size)
    tied_note: str = ""  # what ``tied`` does, in words (shown on the form)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.grid.get("norm", (self.base.norm,)))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.grid.get("seed", (self.base.seed,)))

    def name(self, lab_title: str) -> str:
        """The stored comparison's name: 'Lab · preset label · N runs'."""
        return f"{lab_title} · {self.label} · {len(preset_configs(self))} runs"


@dataclass(frozen=True)
class Lab:
    """A lab page's content that is not computed: the claim and its presets."""

    key: str  # the page's file stem without its number ("invariance")
    title: str  # the page title (also the menu entry)
    claim: str  # two or three plain sentences
    look_for: str  # what to look for in the view
    presets: tuple[Preset, ...]

    def preset(self, key: str) -> Preset:
        for p in self.presets:
            if p.key == key:
                return p
        raise ValueError(f"lab {self.key!r} has no preset {key!r}; choose one of "
                         f"{', '.join(p.key for p in self.presets)}")


def preset_configs(preset: Preset) -> list[RunConfig]:
    """Every config the preset launches (the grid's first field varies slowest)."""
    from normlab.runs.comparisons import expand

    configs = expand(preset.base, {k: list(v) for k, v in preset.grid.items()})
    if preset.tied is not None:
        configs = [c.replace(**preset.tied(c, preset.base)) for c in configs]
    return configs


def with_changes(preset: Preset, base: dict[str, Any] | None = None,
                 grid: dict[str, list] | None = None) -> Preset:
    """``preset`` with other base field values and/or grid values (ConfigError names a bad
    field); a grid list of one value moves that value into the base."""
    from normlab.runs.comparisons import expand

    new_base = preset.base.replace(**(base or {})) if base else preset.base
    new_grid = dict(preset.grid)
    for key, values in (grid or {}).items():
        values = list(values)
        if not values:
            raise ConfigError({key: f"give at least one {key} value"})
        new_grid[key] = tuple(values)
    expand(new_base, {k: list(v) for k, v in new_grid.items()})  # types and names checked
    return replace(preset, base=new_base, grid=new_grid)


def launch(preset: Preset, lab: Lab, store=None) -> tuple[str, list[str]]:
    """Submit ``lab``'s ``preset`` as one comparison (validated first), named
    :meth:`Preset.name` and recording its :func:`origin`; (comparison id, run ids)."""
    from normlab.runs.comparisons import submit

    configs = preset_configs(preset)
    grid = {k: list(v) for k, v in preset.grid.items()}
    return submit(configs, name=preset.name(lab.title), base=preset.base, grid=grid,
                  store=store, origin=origin(lab, preset))


def origin(lab: Lab, preset: Preset) -> dict[str, str]:
    """What a lab's comparison stores about its launch (``comparisons.origin``): the lab's
    key and the preset's. ``normlab report`` writes the lab's report for such a comparison."""
    return {"lab": lab.key, "preset": preset.key}
