"""The Compare page's widgets: the run form (validated as you type, Launch) and the view options.

Widget values survive page switches (``persist_state="session"``).
"""
from __future__ import annotations

import re

import streamlit as st

from normlab.runs import raydriver
from normlab.views import urlstate, compareview as views
from normlab.training.config import RunConfig
from normlab.views.urlstate import FORM_FIELDS, View
from normlab.ui.common import HELD, get_store, set_comparison, show_comparison, shown_setup
from normlab.ui.viewbridge import bridge

_UI = {  # field: (label, help, number step)
    "dataset": ("Dataset", "a built-in set, or type idx:FOLDER / csv:FILE", None),
    "model": ("Model", "MLP (fully connected) or CNN (images and signals only)", None),
    "depth": ("Depth", "hidden layers (MLP) or conv blocks (CNN)", 1),
    "width": ("Width", "units (MLP) or channels (CNN) per layer", 1),
    "activation": ("Activation", "sigmoid shows saturation best", None),
    "init": ("Init", "weight initialisation (normal: std = init scale)", None),
    "init_scale": ("Init scale", "multiplies the init's std; far from 1 is where norms matter",
                   0.1),
    "optimizer": ("Optimizer", "sgd, momentum (0.9) or adam", None),
    "lr": ("Learning rate", None, 0.01),
    "batch_size": ("Batch size", "examples per step", 1),
    "steps": ("Steps", "optimizer steps per run", 100),
    "record_interval": ("Record every", "probes measure every this many steps; "
                        "larger is faster", 1),
    "eval_interval": ("Validate every", "validation loss/accuracy every this many steps", 10),
}
_ROWS = (("dataset",), ("model", "activation"), ("depth", "width"), ("init", "init_scale"),
         ("optimizer", "lr"), ("batch_size", "steps"), ("methods",),
         ("seeds", "record_interval"), ("eval_interval",))
_DEFAULTS = RunConfig()
_BACKENDS = {"local": "This machine", "ray": "Ray cluster"}


def _on_model_change() -> None:
    """Switching MLP/CNN keeps 'all methods that apply' when that was the selection."""
    model = st.session_state["cfg_model"]
    old = "mlp" if model == "cnn" else "cnn"
    if set(st.session_state.get("cfg_methods", [])) == set(urlstate.default_methods(old)):
        st.session_state["cfg_methods"] = list(urlstate.default_methods(model))


def _field(name: str) -> None:
    key = f"cfg_{name}"
    if name == "methods":
        st.session_state.setdefault(key, list(urlstate.default_methods(_DEFAULTS.model)))
        st.multiselect("Methods", list(urlstate.METHOD_ORDER), key=key, persist_state="session",
                       help="one run per method and seed; see the table on Home",
                       placeholder="pick methods to compare")
        return
    if name == "seeds":
        st.session_state.setdefault(key, "0")
        st.text_input("Seeds", key=key, persist_state="session",
                      help="comma-separated, e.g. 0, 1, 2: several give a mean and a band")
        return
    label, help_, step = _UI[name]
    st.session_state.setdefault(key, getattr(_DEFAULTS, name))
    allowed = FORM_FIELDS[name]
    if isinstance(allowed[0], str):
        st.selectbox(label, allowed, key=key, help=help_, persist_state="session",
                     accept_new_options=name == "dataset",
                     on_change=_on_model_change if name == "model" else "rerun")
    else:
        lo, hi = allowed
        st.number_input(label, min_value=lo, max_value=hi, step=step, key=key, help=help_,
                        format="%g" if isinstance(lo, float) else "%d", persist_state="session")


def form_values() -> tuple[RunConfig, list[str], list[int], str | None]:
    """The form's current (config, methods, seeds, seed problem), rendered or not."""
    values = {}
    for name in FORM_FIELDS:
        values[name] = st.session_state.get(f"cfg_{name}", getattr(_DEFAULTS, name))
    config = _DEFAULTS.replace(**values)
    methods = st.session_state.get("cfg_methods")
    methods = list(urlstate.default_methods(config.model) if methods is None else methods)
    seeds, seed_problem = urlstate.parse_seeds(st.session_state.get("cfg_seeds", "0"))
    return config, methods, list(seeds), seed_problem


def _use_held(accept: bool) -> None:
    held = st.session_state.get(HELD)
    if accept and held:
        st.session_state["cfg_dataset"] = held
    st.session_state[HELD] = None


def held_dataset_prompt() -> None:
    """A link's file dataset waits here until the user lets the server read it."""
    held = st.session_state.get(HELD)
    if not held:
        return
    st.warning(f"The link asks this server to read the data file `{held}`. Files named in "
               "a link are read only when you confirm.", icon=":material/folder_open:")
    use, ignore = st.columns(2)
    use.button("Read this file", key="_held_use", on_click=_use_held, args=(True,),
                width="stretch")
    ignore.button("Ignore", key="_held_ignore", on_click=_use_held, args=(False,),
                  width="stretch")


def config_form() -> tuple[RunConfig, list[str], list[int], dict[str, str]]:
    """The comparison form with live validation: (config, methods, seeds, errors).

    Every problem (:func:`normlab.views.compareview.form_errors`) is shown right under the row of its
    field, before anything runs. A file dataset from a link waits for confirmation above
    the form (:func:`held_dataset_prompt`).
    """
    held_dataset_prompt()
    boxes = {}
    for row in _ROWS:
        for col, name in zip(st.columns(len(row)), row):
            with col:
                _field(name)
        boxes[row] = st.container()  # this row's error messages, filled in below
    config, methods, seeds, seed_problem = form_values()
    errors = views.form_errors(config, methods, seeds)
    if seed_problem:  # the field's name is the message's label already
        errors["seeds"] = re.sub(r"^seeds:? ", "", seed_problem)
    warnings = views.form_warnings(config, methods)
    for row, box in boxes.items():
        for name in row:
            if name in errors:
                box.error(f"**{_UI.get(name, (name.capitalize(),))[0]}**: {errors[name]}")
            elif name in warnings:
                box.warning(f"**{_UI.get(name, (name.capitalize(),))[0]}**: {warnings[name]}")
    if problem := _backend():
        errors["backend"] = problem
        st.error(f"**Backend**: {problem}")
    shown = {n for row in _ROWS for n in row} | {"backend"}
    for name in errors.keys() - shown:  # fields the form does not show
        st.error(f"**{name}**: {errors[name]}")
    return config, methods, seeds, errors


def _backend() -> str | None:
    """Where Launch trains the runs; a problem (Ray not installed) or None."""
    st.session_state.setdefault("cfg_backend", raydriver.default_backend())
    try:
        address = raydriver.ray_address() or "a local Ray instance on this machine"
    except ValueError as exc:  # NORMLAB_RAY_ADDRESS is a ray:// address
        address, problem = "NORMLAB_RAY_ADDRESS", f"NORMLAB_RAY_ADDRESS: {exc}"
    else:
        problem = None
    choice = st.selectbox("Backend", list(_BACKENDS), format_func=_BACKENDS.get,
                          key="cfg_backend", persist_state="session",
                          help=f"This machine: the local engine. Ray cluster: {address} "
                          "(set NORMLAB_RAY_ADDRESS to point at a cluster)")
    if choice == "ray" and not raydriver.ray_available():
        return f"Ray is not installed; install it with {raydriver.INSTALL}"
    return problem if choice == "ray" else None


def setup_status(config, methods, seeds) -> None:
    """Whether the form shows the shown comparison's setup or a new one being edited (with
    the fields that differ and a way back)."""
    shown = shown_setup()
    if shown is None:
        return
    cid, state = shown
    diff = urlstate.setup_diff(state, config, methods, seeds)
    if not diff:
        extra = state.problems.get("grid")
        st.caption(f"The form shows the setup of the comparison shown ({cid})"
                   + (f"; {extra}" if extra else "") + ". Change it and press Launch for "
                   "a new comparison.")
        return
    names = ", ".join(_UI.get(n, (n.capitalize(),))[0].lower() for n in diff)
    st.info(f"**New setup** — differs from the comparison shown ({cid}) in {names}. "
            "Launch runs it as a new comparison.", icon=":material/edit:")
    st.button("Back to the shown comparison's setup", key="_setup_reset",
              on_click=show_comparison, args=(cid,), width="stretch",
              icon=":material/undo:")


def launch_button(config, methods, seeds, errors) -> None:
    """Launch (disabled while the form has errors); the new comparison becomes current."""
    n = len(methods) * len(seeds)
    if st.button(f"Launch {n} run{'s' * (n != 1)}", type="primary",
                 icon=":material/rocket_launch:",
                 disabled=bool(errors), width="stretch",
                 help="fix the messages above first" if errors else None):
        try:
            cid, problems = views.launch(get_store(), config, methods, seeds,
                                         backend=st.session_state.get("cfg_backend"))
        except Exception as exc:  # the store or the engine: say so, never a traceback
            st.error(f"Could not start the runs: {exc}")
            return
        if cid:
            set_comparison(cid)
        for name, msg in problems.items():
            st.error(f"**{name}**: {msg}")
    st.caption(f"{len(methods)} method{'s' * (len(methods) != 1)} × {len(seeds)} "
               f"seed{'s' * (len(seeds) != 1)}; same data split and init per seed.")


# ---------------------------------------------------------------------- view options
_LAYOUTS = {"overlay": "Overlay", "side": "Side by side"}
_BANDS = {"minmax": "min–max", "std": "± std", "none": "none"}
SITE_LABELS = {"pre_norm": "pre-norm", "post_norm": "post-norm", "post_act": "post-activation"}


def _view_default(name: str):
    st.session_state.setdefault(f"view_{name}", getattr(urlstate.VIEW_DEFAULTS, name))
    return {"key": f"view_{name}", "persist_state": "session"}


def presenter_toggle() -> bool:
    """Presenter mode: the form hides, charts and fonts grow."""
    return st.toggle("Presenter", help="hide the form and enlarge the charts (lectures); "
                     "collapse the sidebar with « for the full width",
                     **_view_default("present"))


def current_view(present: bool) -> View:
    """The view options as last chosen (or given by a link), without drawing widgets."""
    values = {name: st.session_state.get(f"view_{name}", getattr(urlstate.VIEW_DEFAULTS, name))
              for name in View.__dataclass_fields__}
    return View(**{**values, "present": present})


def view_controls(n_seeds: int, present: bool) -> View:
    """Layout, log scale, smoothing, seed band and activation site; returns the View."""
    row = st.container(horizontal=True, vertical_alignment="bottom")  # wraps: nothing is cut
    cols = [row.container(width=w) for w in (200, 120, 190, 215, 170)]
    with cols[0]:
        layout = st.segmented_control("Layout", list(_LAYOUTS), format_func=_LAYOUTS.get,
                                      required=True, **_view_default("layout"))
    with cols[1]:
        log = st.toggle("Log scale", help="loss, gradient norms and variance",
                        **_view_default("log"))
    with cols[2]:
        smooth = st.slider("Smoothing (EMA)", 0.0, urlstate.SMOOTH_MAX, step=0.01,
                           **_view_default("smooth"))
    with cols[3]:
        band = st.segmented_control("Seed band", list(_BANDS), format_func=_BANDS.get,
                                    required=True, disabled=n_seeds < 2,
                                    help="spread across seeds (needs 2 or more seeds)",
                                    **_view_default("band"))
    with cols[4]:
        site = st.selectbox("Activation site", list(SITE_LABELS), format_func=SITE_LABELS.get,
                            help="where the activation statistics are measured",
                            **_view_default("site"))
    view = View(layout=layout or "overlay", log=log, smooth=float(smooth), band=band or "minmax",
                site=site, present=present)
    # layout, log scale, smoothing and site reach the drawn charts at once
    bridge(SITE_LABELS, _LAYOUTS, view)
    return view


