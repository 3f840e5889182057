"""The dashboard's state as URL query parameters: copy the link, get the same setup back.

Pure functions, no Streamlit. :func:`encode` turns a comparison setup — a
:class:`~normlab.training.config.RunConfig` (the fields of :data:`FORM_FIELDS`), the methods, the
seeds, the comparison being shown and the chart view options — into a ``dict`` of strings
for ``st.query_params``; :func:`decode` reads such a dict back. Links are pasted, edited
and truncated by hand, so :func:`decode` never raises: a value it cannot use is reported
in ``problems`` (field → message naming the value and the fix) and replaced by its default.

Parameters (all optional)::

    dataset model depth width activation init init_scale optimizer lr batch_size steps
    record_interval eval_interval      one RunConfig field each, e.g. lr=0.1
    methods=none,batch,layer           norm names, comma-separated
    seeds=0,1,2                        integers, comma-separated (one run per method each)
    comparison=c1a2b3c4                the stored comparison to show
    runs=r1a2b3c4,r5d6e7f8             or: these stored runs (from any comparisons)
    tab=gradients                      the chart tab shown (its name, lower case, words
                                       joined by -: loss-accuracy, sweep, ...)
    layout=overlay|side  log=1  smooth=0.6  band=minmax|std|none  site=post_act  present=1

A link with ``comparison=`` alone shows that comparison with its own setup in the form:
the page writes the form fields only when they differ from the shown comparison's setup
(a new setup being edited), so a link never pairs a comparison with a setup it was not
run with by accident. Without a comparison every form field is written, so a link
reproduces the setup even if the defaults change later. The view options and the tab are
written only when they differ from :data:`VIEW_DEFAULTS` and the first tab.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from normlab.training.config import (ACTIVATIONS, BUILTIN_DATASETS, FILE_DATASET_PREFIXES, INITS, MODELS,
                            OPTIMIZERS, ConfigError, RunConfig, coerce)
from normlab.views.palette import METHOD_ORDER

# The RunConfig fields the Compare form edits and the URL carries, with the values a widget
# can show: a tuple of choices, or the (low, high) bounds of a number input.
FORM_FIELDS: dict[str, tuple] = {
    "dataset": BUILTIN_DATASETS,  # plus idx:FOLDER / csv:FILE
    "model": MODELS,
    "depth": (1, 64),
    "width": (1, 4096),
    "activation": ACTIVATIONS,
    "init": INITS,
    "init_scale": (1e-4, 100.0),
    "optimizer": OPTIMIZERS,
    "lr": (1e-6, 100.0),
    "batch_size": (1, 100_000),
    "steps": (1, 1_000_000),
    "record_interval": (1, 100_000),
    "eval_interval": (1, 100_000),
}
MAX_SEEDS = 10
SEED_MAX = 2**31 - 1
SITES = ("pre_norm", "post_norm", "post_act")
LAYOUTS = ("overlay", "side")
BANDS = ("minmax", "std", "none")
SMOOTH_MAX = 0.99
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TAB = re.compile(r"^[a-z0-9-]{1,40}$")


@dataclass(frozen=True)
class View:
    """Chart options shared by a link (UI selections, not results)."""

    layout: str = "overlay"  # overlay (one panel, colour = method) | side (one panel per method)
    log: bool = True  # log scale for loss and gradient norms
    smooth: float = 0.0  # EMA weight in [0, 0.99]
    band: str = "minmax"  # seed band: minmax | std | none
    site: str = "post_act"  # activation statistics site
    present: bool = False  # presenter mode: no form, larger charts


VIEW_DEFAULTS = View()


@dataclass(frozen=True)
class State:
    """Everything a link holds; ``problems`` maps each unusable parameter to its message."""

    config: RunConfig = RunConfig()
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    comparison: str | None = None
    view: View = VIEW_DEFAULTS
    problems: dict[str, str] = field(default_factory=dict)
    given: frozenset[str] = frozenset()  # the form parameters the link set
    runs: tuple[str, ...] = ()  # stored runs to show instead of a comparison
    tab: str | None = None  # the chart tab's slug (tab_slug), None: the first tab


def tab_slug(name: str) -> str:
    """A tab's name as the URL carries it: 'Loss & accuracy' -> 'loss-accuracy'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def setup_diff(state: "State", config: RunConfig, methods, seeds) -> list[str]:
    """The form parameters in which (config, methods, seeds) differ from ``state``'s setup
    (e.g. a stored comparison's, :func:`from_comparison`); [] when the form shows it."""
    out = [n for n in FORM_FIELDS if getattr(config, n) != getattr(state.config, n)]
    if tuple(methods) != tuple(state.methods):
        out.append("methods")
    if tuple(int(s) for s in seeds) != tuple(state.seeds):
        out.append("seeds")
    return out


def default_methods(model: str) -> tuple[str, ...]:
    """Every method that applies to ``model`` (MLP when the model is unknown)."""
    from normlab.methods.specs import norms_for

    return tuple(norms_for(model if model in MODELS else "mlp"))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def encode(config: RunConfig, methods, seeds, comparison: str | None = None,
           view: View = VIEW_DEFAULTS, runs=(), *, setup: bool = True,
           tab: str | None = None) -> dict[str, str]:
    """Query parameters (strings) for a setup; see the module docstring. ``setup=False``
    leaves the form fields out (the form shows the shown comparison's own setup)."""
    params = {}
    if setup or not comparison:
        params = {name: _fmt(getattr(config, name)) for name in FORM_FIELDS}
        params["methods"] = ",".join(methods)
        params["seeds"] = ",".join(str(int(s)) for s in seeds)
    if comparison:
        params["comparison"] = comparison
    elif runs:
        params["runs"] = ",".join(runs)
    if tab and (comparison or runs):
        params["tab"] = tab
    for f in fields(View):
        value = getattr(view, f.name)
        if value != getattr(VIEW_DEFAULTS, f.name):
            params[f.name] = _fmt(value)
    return params


def _last(value: Any) -> str:
    """One string from a query value (``st.query_params.to_dict()`` gives the last one)."""
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else ""
    return str(value).strip()


def _field(name: str, raw: str) -> tuple[Any, str | None]:
    """(value, None) or (default, problem) for one form field."""
    default = getattr(RunConfig(), name)
    allowed = FORM_FIELDS[name]
    if name == "dataset":
        if raw in allowed or (raw.startswith(FILE_DATASET_PREFIXES) and raw.split(":", 1)[1]):
            return raw, None
        return default, (f"dataset {raw!r} is unknown; choose one of {', '.join(allowed)} or "
                         f"idx:FOLDER / csv:FILE — using {default!r}")
    if isinstance(allowed[0], str):
        if raw in allowed:
            return raw, None
        return default, (f"{name} {raw!r} is not one of {', '.join(allowed)} — "
                         f"using {default!r}")
    try:
        value = coerce(name, raw)
    except ConfigError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        return default, f"{name} {raw!r} is not {kind} — using {default}"
    lo, hi = allowed
    if not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
        return default, f"{name} {raw!r} is outside {_fmt(lo)}..{_fmt(hi)} — using {default}"
    return value, None


def parse_methods(raw: str, model: str = "mlp") -> tuple[tuple[str, ...], str | None]:
    """Norm names from 'a,b,c': (known names in order, problem naming the unknown ones)."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = tuple(dict.fromkeys(n for n in names if n in METHOD_ORDER))
    unknown = [n for n in names if n not in METHOD_ORDER]
    if not known:
        what = f"{raw!r} names no known method" if raw.strip() else "no methods were given"
        return default_methods(model), (f"methods: {what}; use names from "
                                        f"{', '.join(METHOD_ORDER)} — using all that apply")
    if unknown:
        return known, (f"methods: unknown {', '.join(map(repr, unknown))} ignored; known "
                       f"names are {', '.join(METHOD_ORDER)}")
    return known, None


def parse_seeds(raw: str) -> tuple[tuple[int, ...], str | None]:
    """Seeds from '0, 1, 2': (distinct seeds in order, problem) — (0,) if none is usable."""
    parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
    def usable(p: str) -> bool:  # ASCII digits only: '⒈'.isdigit() is True, int() fails
        return p.isascii() and p.isdigit() and int(p) <= SEED_MAX

    good = [int(p) for p in parts if usable(p)]
    bad = [p for p in parts if not usable(p)]
    seeds = tuple(dict.fromkeys(good))[:MAX_SEEDS]
    if not seeds:
        return (0,), (f"seeds {raw!r}: give whole numbers 0..{SEED_MAX} separated by commas, "
                      "e.g. 0, 1, 2 — using 0")
    if bad:
        return seeds, f"seeds: {', '.join(map(repr, bad))} ignored; seeds are whole numbers ≥ 0"
    if len(dict.fromkeys(good)) > MAX_SEEDS:
        return seeds, f"seeds: at most {MAX_SEEDS}; using the first {MAX_SEEDS}"
    return seeds, None


def _view(params: Mapping[str, Any], problems: dict[str, str]) -> View:
    view = VIEW_DEFAULTS
    choices = {"layout": LAYOUTS, "band": BANDS, "site": SITES}
    for name, allowed in choices.items():
        if name in params:
            raw = _last(params[name])
            if raw in allowed:
                view = replace(view, **{name: raw})
            else:
                problems[name] = f"{name} {raw!r} is not one of {', '.join(allowed)} — ignored"
    for name in ("log", "present"):
        if name in params:
            raw = _last(params[name]).lower()
            if raw in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                view = replace(view, **{name: raw in ("1", "true", "yes", "on")})
            else:
                problems[name] = f"{name} {raw!r} should be 1 or 0 — ignored"
    if "smooth" in params:
        raw = _last(params["smooth"])
        try:
            value = float(raw)
            if not 0 <= value <= SMOOTH_MAX:
                raise ValueError
            view = replace(view, smooth=value)
        except ValueError:
            problems["smooth"] = f"smooth {raw!r} should be a number in 0..{SMOOTH_MAX} — ignored"
    return view


def decode(params: Mapping[str, Any]) -> State:
    """The :class:`State` a link describes; never raises (see ``problems``).

    Parameters the link does not give take their defaults; unknown parameters are ignored
    (other pages may add their own).
    """
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in FORM_FIELDS:
        if name in params:
            value, problem = _field(name, _last(params[name]))
            if problem:
                problems[name] = problem
            else:
                values[name] = value
    config = RunConfig().replace(**values)
    methods = default_methods(config.model)
    if "methods" in params:
        methods, problem = parse_methods(_last(params["methods"]), config.model)
        if problem:
            problems["methods"] = problem
    seeds: tuple[int, ...] = (0,)
    if "seeds" in params:
        seeds, problem = parse_seeds(_last(params["seeds"]))
        if problem:
            problems["seeds"] = problem
    comparison = None
    if "comparison" in params:
        raw = _last(params["comparison"])
        if _ID.match(raw):
            comparison = raw
        else:
            problems["comparison"] = (f"comparison {raw[:80]!r} is not an id like c1a2b3c4; "
                                      "pick one from the Runs page")
    runs: tuple[str, ...] = ()
    if "runs" in params and comparison is None:
        ids = [t.strip() for t in _last(params["runs"]).split(",") if t.strip()]
        runs = tuple(dict.fromkeys(t for t in ids if _ID.match(t)))
        if len(runs) < len(ids) or not runs:
            problems["runs"] = ("runs: give run ids like r1a2b3c4 separated by commas; "
                                f"{len(ids) - len(runs)} malformed id(s) ignored")
    tab = None
    if "tab" in params:
        raw = _last(params["tab"])
        if _TAB.match(raw):
            tab = raw
        else:
            problems["tab"] = (f"tab {raw[:40]!r} is not a tab name like loss-accuracy or "
                               "gradients — showing the first tab")
    view = _view(params, problems)
    given = frozenset(k for k in (*FORM_FIELDS, "methods", "seeds") if k in params)
    return State(config, tuple(methods), tuple(seeds), comparison, view, problems, given,
                 runs, tab)


def hold_file_dataset(state: State) -> tuple[State, str | None]:
    """``(state, None)``, or — when the link names a file dataset (``csv:``/``idx:``) —
    the state with the default dataset and that name, held back.

    A link must not make the server read its files: the page reads a held file only after
    the user confirms it (``normlab.ui.form``); until then nothing opens the path.
    """
    name = state.config.dataset
    if not name.startswith(FILE_DATASET_PREFIXES):
        return state, None
    return replace(state, config=state.config.replace(dataset=RunConfig().dataset)), name


def from_comparison(record: Mapping[str, Any]) -> State:
    """The setup a stored comparison was launched with (``Store.comparison(id)``): its base
    config and grid's norms and seeds. Fields the form cannot show are reported."""
    problems: dict[str, str] = {}
    base = dict(record.get("base") or {})
    grid = dict(record.get("grid") or {})
    try:
        config = RunConfig.from_stored(base)
    except (ConfigError, TypeError) as exc:
        config, problems["comparison"] = RunConfig(), f"its stored base config is unusable: {exc}"
    methods = tuple(str(m) for m in grid.get("norm", [config.norm]))
    seeds = tuple(int(s) for s in grid.get("seed", [config.seed]))
    other = sorted(set(grid) - {"norm", "seed"})
    if other:
        problems["grid"] = (f"it also varies {', '.join(other)}, which the form cannot show; "
                            "the form shows its base values")
    return State(config, methods, seeds, record.get("id"), VIEW_DEFAULTS, problems,
                 frozenset((*FORM_FIELDS, "methods", "seeds")), ())
