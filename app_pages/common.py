"""UI helpers shared by the pages (Streamlit lives here, never in normlab/).

* store and engine: :func:`get_store`, :func:`engine_ready`;
* what is shown and the URL: :func:`current_comparison`, :func:`set_comparison`,
  :func:`shown_runs`, :func:`comparison_picker`, :func:`run_picker`, :func:`apply_url`,
  :func:`show_url_problems`, :func:`sync_url`;
* widgets returning plain values: :func:`config_form` / :func:`form_values`,
  :func:`launch_button`, :func:`presenter_toggle`, :func:`view_controls` /
  :func:`current_view`;
* the live view: :func:`live_runs` (progress, pause/resume/cancel and the charts of
  :data:`normlab.views.CHART_GROUPS`, polled from the store by an ``st.fragment``; finished
  comparisons' frames and charts cached by run statuses).

Widget values survive page switches (``persist_state="session"``); results never live in
the session: everything shown is read from the store.
"""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from normlab import urlstate, views
from normlab.config import RunConfig
from normlab.engine import ensure_engine
from normlab.store import NotFound, Store, StoreError
from normlab.urlstate import FORM_FIELDS, View

POLL_SECONDS = 1.0  # live view refresh while runs train
PAGE_WIDTH = 1100  # px a full-width chart may take beside the sidebar (grids are fitted)
CURRENT = "comparison"  # session key: the comparison the pages show
RUNS = "compare_runs"  # session key: run ids opened with ?runs= (instead of a comparison)
_WRITTEN = "_url_written"  # session key: the query params this session last wrote
_PROBLEMS = "_url_problems"  # session key: messages about the last link's bad values


@st.cache_resource
def get_store() -> Store:
    """The run store (NORMLAB_STORE or the default path); thread-safe, shared by sessions."""
    return Store()


def engine_ready() -> int | None:
    """Make sure the engine for the store runs (it warms up in the background).

    Cheap when it does (one lock-file check), so the router calls it on every page run:
    an engine that exited after being idle is back, warm, before the next Launch. A store
    file that cannot be used stops the page with the reason instead of a traceback.
    """
    try:
        return ensure_engine(get_store().path)
    except (StoreError, OSError) as exc:
        st.error(f"The run store cannot be used: {exc}. Set NORMLAB_STORE to another file "
                 "and restart the dashboard.")
        st.stop()


# ------------------------------------------------------------ what is shown, the URL
def current_comparison() -> str | None:
    """The comparison the pages show: launched or picked here, or ``?comparison=`` in a link
    (None when none, or when it no longer exists)."""
    cid = st.session_state.get(CURRENT) or st.query_params.get("comparison")
    return cid if cid and views.comparison_record(get_store(), cid) else None


def set_comparison(cid: str | None) -> None:
    """Show comparison ``cid`` (and no longer a set of runs opened from the Runs page)."""
    st.session_state[CURRENT] = cid
    st.session_state[RUNS] = []


def shown_runs() -> tuple[str, list[str]] | None:
    """(key, run ids) the Compare page shows: the runs of a link's ``?runs=`` if any are
    left, else the current comparison's; None when there is nothing to show."""
    store = get_store()
    wanted = st.session_state.get(RUNS) or []
    if wanted:
        found = [r for r in wanted if r in set(store.runs()["id"])]
        if found:
            return "runs-" + "-".join(found)[:80], found
    cid = current_comparison()
    return (cid, store.comparison(cid)["runs"]) if cid else None


def comparison_picker(label: str = "Comparison") -> tuple[str, list[str]] | None:
    """A select box of stored comparisons (newest first) bound to what is shown."""
    choices = views.comparison_choices(get_store())
    shown = shown_runs()
    if shown and shown[0] not in choices:  # runs opened from the Runs page
        choices = {shown[0]: f"{len(shown[1])} runs opened from the Runs page", **choices}
    if not choices:
        return None
    if shown is None:
        set_comparison(next(iter(choices)))
        shown = shown_runs()
    st.session_state["_pick"] = shown[0]

    def picked() -> None:
        if st.session_state["_pick"] in views.comparison_choices(get_store()):
            set_comparison(st.session_state["_pick"])

    st.selectbox(label, list(choices), key="_pick", format_func=choices.get, on_change=picked)
    return shown


def run_picker(cid: str, label: str = "Runs", default_all: bool = True) -> list[str]:
    """A multiselect of the runs of comparison ``cid`` (labelled method · seed); run ids."""
    try:
        runs = get_store().runs(comparison=cid)
    except NotFound:
        st.warning(f"Comparison {cid!r} no longer exists; pick another one.")
        return []
    labels = views.run_label(runs)
    return st.multiselect(label, list(labels), default=list(labels) if default_all else None,
                          format_func=labels.get, key=f"runs_{cid}")


def apply_url() -> None:
    """Take over a link's setup (``?lr=...&methods=...&comparison=...``) into the widgets.

    Runs once per new URL (a pasted link, or a page switch carrying parameters), not on
    the parameters this session wrote itself. Bad values are kept in the session and shown
    by :func:`show_url_problems`.
    """
    params = st.query_params.to_dict()
    if not params or params == st.session_state.get(_WRITTEN):
        return
    st.session_state[_WRITTEN] = params
    state = urlstate.decode(params)
    problems = dict(state.problems)
    store = get_store()
    if state.comparison:
        record = views.comparison_record(store, state.comparison)
        if record is None:
            problems["comparison"] = (f"There is no comparison {state.comparison!r} in this "
                                      f"store ({store.path}): it was deleted or made with "
                                      "another store. Pick another one, or launch a new one.")
        else:
            set_comparison(state.comparison)
            if not state.given:  # a bare ?comparison= link: show how it was set up
                stored = urlstate.from_comparison(record)
                problems.update({k: f"comparison {state.comparison}: {v}"
                                 for k, v in stored.problems.items()})
                state = replace(state, config=stored.config, methods=stored.methods,
                                seeds=stored.seeds, given=stored.given)
    elif state.runs:
        known = set(store.runs()["id"])
        missing = [r for r in state.runs if r not in known]
        if missing:
            problems["runs"] = (f"no run {', '.join(map(repr, missing))} in this store; "
                                "showing the others" if len(missing) < len(state.runs) else
                                f"none of the runs {', '.join(missing)} is in this store")
        st.session_state[CURRENT] = None
        st.session_state[RUNS] = [r for r in state.runs if r in known]
    if state.given:
        for name in FORM_FIELDS:
            st.session_state[f"cfg_{name}"] = getattr(state.config, name)
        st.session_state["cfg_methods"] = list(state.methods)
        st.session_state["cfg_seeds"] = ", ".join(map(str, state.seeds))
    for name in View.__dataclass_fields__:
        st.session_state[f"view_{name}"] = getattr(state.view, name)
    st.session_state[_PROBLEMS] = problems


def show_url_problems() -> None:
    """The messages about the last link's unusable values, until dismissed."""
    problems = st.session_state.get(_PROBLEMS)
    if problems:
        text = "\n".join(f"- {msg}" for msg in problems.values())
        st.warning(f"Some values in the link could not be used:\n{text}",
                   icon=":material/link_off:")
        if st.button("Dismiss", key="_dismiss_url"):
            st.session_state[_PROBLEMS] = {}
            st.rerun()


def sync_url(config, methods, seeds, view: View) -> None:
    """Write the setup and what is shown to the URL (copy the link to share it)."""
    runs = st.session_state.get(RUNS) or []
    params = urlstate.encode(config, methods, seeds, None if runs else current_comparison(),
                             view, runs)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)
    st.session_state[_WRITTEN] = params


# -------------------------------------------------------------------------- the form
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


def config_form() -> tuple[RunConfig, list[str], list[int], dict[str, str]]:
    """The comparison form with live validation: (config, methods, seeds, errors).

    Every problem (:func:`normlab.views.form_errors`) is shown right under the row of its
    field, before anything runs.
    """
    boxes = {}
    for row in _ROWS:
        for col, name in zip(st.columns(len(row)), row):
            with col:
                _field(name)
        boxes[row] = st.container()  # this row's error messages, filled in below
    config, methods, seeds, seed_problem = form_values()
    errors = views.form_errors(config, methods, seeds)
    if seed_problem:
        errors["seeds"] = seed_problem
    for row, box in boxes.items():
        for name in row:
            if name in errors:
                box.error(f"**{_UI.get(name, (name.capitalize(),))[0]}**: {errors[name]}")
    shown = {n for row in _ROWS for n in row}
    for name in errors.keys() - shown:  # fields the form does not show
        st.error(f"**{name}**: {errors[name]}")
    return config, methods, seeds, errors


def launch_button(config, methods, seeds, errors) -> None:
    """Launch (disabled while the form has errors); the new comparison becomes current."""
    n = len(methods) * len(seeds)
    if st.button(f"Launch {n} run{'s' * (n != 1)}", type="primary",
                 icon=":material/rocket_launch:",
                 disabled=bool(errors), width="stretch",
                 help="fix the messages above first" if errors else None):
        try:
            cid, problems = views.launch(get_store(), config, methods, seeds)
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
_SITES = {"pre_norm": "pre-norm", "post_norm": "post-norm", "post_act": "post-activation"}


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
    cols = st.columns([1.4, 0.8, 1.5, 1.3, 1.3], vertical_alignment="bottom")
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
        site = st.selectbox("Activation site", list(_SITES), format_func=_SITES.get,
                            help="where the activation statistics are measured",
                            **_view_default("site"))
    return View(layout=layout or "overlay", log=log, smooth=float(smooth), band=band or "minmax",
                site=site, present=present)


# ------------------------------------------------------------------------ live view
def live_runs(key: str, ids: list[str], view: View) -> None:
    """Progress, controls and charts of runs ``ids`` (``key`` names them: a comparison id);
    polls the store every POLL_SECONDS while any run is unfinished, then stops."""
    try:
        live = not views.finished(get_store().runs(ids=ids))
    except NotFound:
        st.error("These runs do not exist any more (deleted?). Pick another comparison.")
        return

    @st.fragment(run_every=POLL_SECONDS if live else None)
    def _live() -> None:
        try:
            runs = get_store().runs(ids=ids)
        except NotFound:
            st.warning("Some of these runs were deleted while they were shown; pick again.")
            return
        _progress(key, runs)
        _charts(key, runs, view)
        if live and views.finished(runs):
            st.rerun()  # everything ended: redraw once without polling

    _live()


def _progress(key: str, runs) -> None:
    summary = views.progress_summary(runs)
    top = st.container(horizontal=True, vertical_alignment="center")
    table = views.progress_table(get_store(), runs)
    with st.expander(f"Runs — {len(runs)}: progress, steps/s, ETA, validation accuracy"):
        picked = st.dataframe(
            table, key=f"progress_{key}", on_select="rerun", selection_mode="multi-row",
            hide_index=True, column_order=("method", "seed", "status", "done", "step",
                                           "steps_per_sec", "eta", "val_acc", "message"),
            column_config={
                "done": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
                "steps_per_sec": "steps/s", "eta": "ETA", "val_acc": "val acc",
                "message": "note"})
        st.caption("Select rows to pause, resume or cancel single runs.")
    for row in table[table["status"].isin(("failed", "interrupted"))].itertuples():
        st.warning(f"{row.method} · seed {row.seed} {row.status}: {row.message or 'no reason'}"
                   " — fix the setup and launch again.")
    rows = [i for i in (picked.selection.rows if picked else []) if i < len(table)]
    ids = list(table["run"].iloc[rows]) if rows else list(table["run"])
    which = f"{len(rows)} selected" if rows else "all"
    with top:
        st.progress(summary["fraction"], text=summary["text"], width="stretch")
        for action, icon in (("pause", ":material/pause:"), ("resume", ":material/play_arrow:"),
                             ("cancel", ":material/stop:")):
            if st.button(f"{action.capitalize()} {which}", icon=icon, key=f"{action}_{key}",
                         disabled=summary["finished"]):
                changed = sum(len(get_store().request(i, action)) for i in ids)
                st.toast(f"{action.capitalize()}: {changed} run(s)." if changed
                         else f"Nothing to {action}.")


@st.cache_data(max_entries=24, show_spinner=False)
def _frame(path: str, cid: str, sig: tuple, metrics, sites, every: int):
    """A finished comparison's frame (``sig`` changes when a run does)."""
    return views.comparison_frame(get_store(), [s[0] for s in sig], metrics, sites,
                                  every=every)


@st.cache_data(max_entries=64, show_spinner=False)
def _chart(path: str, cid: str, sig: tuple, spec_key: str, view: View, n_seeds: int,
           width: int, metrics, sites, every: int):
    """A finished comparison's chart, rebuilt only when its own options change."""
    frame = _frame(path, cid, sig, metrics, sites, every)
    return _build(frame, spec_key, view, n_seeds, width)


def _build(frame, spec_key: str, view: View, n_seeds: int, width: int):
    return views.build_chart(frame, views.CHART_SPECS[spec_key], view, n_seeds=n_seeds,
                             width=width)


def _charts(key: str, runs, view: View) -> None:
    tabs = st.tabs(list(views.CHART_GROUPS), key="chart_group", on_change="rerun")
    for tab, group in zip(tabs, views.CHART_GROUPS):
        if tab.open:
            with tab:
                _group(key, runs, group, view)


def _group(key: str, runs, group: str, view: View) -> None:
    metrics, sites = views.group_request(group, view)
    every = views.load_every(int(runs["total_steps"].max() or 1),
                             min(int(c.get("record_interval", 1)) for c in runs["config"]))
    sig, n_seeds = views.signature(runs), int(runs["seed"].nunique())
    done, path = views.finished(runs), str(get_store().path)
    wide = view.present or view.layout == "side"
    frame = None if done else views.comparison_frame(get_store(), list(runs["id"]), metrics,
                                                      sites, every=every)
    if frame is not None and frame.empty:
        st.info("Waiting for the first measurements… (workers start in a few seconds)")
        return
    slots: list = []  # free half-width columns of the current row
    drawn = 0
    for spec in views.CHART_GROUPS[group]:
        own = views.relevant_view(spec, view, n_seeds)
        try:
            chart = (_chart(path, key, sig, spec.key, own, n_seeds, PAGE_WIDTH, metrics,
                            sites, every) if done
                     else _build(frame, spec.key, own, n_seeds, PAGE_WIDTH))
        except Exception as exc:  # a chart that cannot be drawn must not break the page
            st.warning(f"Could not draw “{spec.title}”: {exc}")
            continue
        if chart is None:
            continue
        drawn += 1
        if wide or spec.per_layer:  # full width; facets keep their own panel size
            slots = []
            faceted = spec.per_layer or view.layout == "side"
            st.altair_chart(chart, width="content" if faceted else "stretch")
        else:
            slots = slots or list(st.columns(2))
            with slots.pop(0):
                st.altair_chart(chart, width="stretch")
    if not drawn:
        st.info("Nothing measured for these charts: the runs ended before their first "
                "record (see the notes in the Runs table above).")
