"""UI helpers shared by the pages (Streamlit lives here, never in normlab/).

* store and engine: :func:`get_store`, :func:`engine_ready`;
* what is shown and the URL: :func:`current_comparison`, :func:`set_comparison`,
  :func:`show_comparison` (and its setup in the form), :func:`shown_runs`,
  :func:`comparison_picker`, :func:`run_picker`, :func:`apply_url`,
  :func:`show_url_problems`, :func:`shown_setup`, :func:`sync_url`;
* the Compare page's form and view options live in :mod:`normlab.ui.form`, its live view
  in :mod:`normlab.ui.live`.

Widget values survive page switches (``persist_state="session"``); results never live in
the session: everything shown is read from the store.
"""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from normlab.views import urlstate, compareview as views
from normlab.runs.engine import ensure_engine
from normlab.runs.store import NotFound, Store, StoreError
from normlab.views.urlstate import FORM_FIELDS, View

POLL_SECONDS = 1.0  # live view refresh while runs train
PAGE_WIDTH = 1100  # px a full-width chart may take beside the sidebar (grids are fitted)
CURRENT = "comparison"  # session key: the comparison the pages show
RUNS = "compare_runs"  # session key: run ids opened with ?runs= (instead of a comparison)
_WRITTEN = "_url_written"  # session key: the query params this session last wrote
_PROBLEMS = "_url_problems"  # session key: messages about the last link's bad values
HELD = "_held_dataset"  # session key: a link's file dataset, read only once confirmed
TAB = "chart_group"  # session key (the Compare tabs' widget): the chart tab shown
TAB_PARAM = "_tab_param"  # session key: the shown tab's URL slug, None for the first tab
TAB_LINKED = "_tab_linked"  # session key: a link's tab slug, until the tabs are drawn


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


def show_comparison(cid: str) -> None:
    """Show comparison ``cid`` with its setup in the form (a comparison launched from a
    setup: the form, the CLI, a lab); the form stays as it is for one without."""
    set_comparison(cid)
    record = views.comparison_record(get_store(), cid)
    if record is None or not record.get("base"):
        return
    state, held = urlstate.hold_file_dataset(urlstate.from_comparison(record))
    fill_form(state)
    if held:  # the user's own comparison: its file is read as when it was launched
        st.session_state["cfg_dataset"] = held


def fill_form(state: urlstate.State) -> None:
    """Put a setup into the form's widgets (before they are drawn in this run)."""
    for name in FORM_FIELDS:
        st.session_state[f"cfg_{name}"] = getattr(state.config, name)
    st.session_state["cfg_methods"] = list(state.methods)
    st.session_state["cfg_seeds"] = ", ".join(map(str, state.seeds))


def show_newest() -> None:
    """Nothing shown yet: show the newest comparison, its setup in the form."""
    if st.session_state.get(RUNS) or current_comparison():
        return
    choices = views.comparison_choices(get_store())
    if choices:
        show_comparison(next(iter(choices)))


def shown_setup() -> tuple[str, urlstate.State] | None:
    """(comparison id, the setup it was launched with) of the comparison shown, or None
    (nothing shown, runs from the Runs page, a comparison logged from a user's loop)."""
    if st.session_state.get(RUNS):
        return None
    cid = current_comparison()
    record = views.comparison_record(get_store(), cid) if cid else None
    if record is None or not record.get("base"):
        return None
    return cid, urlstate.from_comparison(record)


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

    def picked() -> None:  # a callback: runs before the form is drawn, so it can fill it
        if st.session_state["_pick"] in views.comparison_choices(get_store()):
            show_comparison(st.session_state["_pick"])

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
    state, held = urlstate.hold_file_dataset(state)
    st.session_state[HELD] = held
    if state.given:
        fill_form(state)
    st.session_state[TAB_LINKED] = state.tab
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
    """Write what is shown (comparison or runs, view options, tab) to the URL, and the
    form's setup when it is not the shown comparison's own (copy the link to share it)."""
    runs = st.session_state.get(RUNS) or []
    shown = shown_setup()
    setup = shown is None or bool(urlstate.setup_diff(shown[1], config, methods, seeds))
    params = urlstate.encode(config, methods, seeds, None if runs else current_comparison(),
                             view, runs, setup=setup, tab=st.session_state.get(TAB_PARAM))
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)
    st.session_state[_WRITTEN] = params


def tab_changed() -> None:
    """The Compare tabs' callback: the URL follows the tab at once (the tabs live in a
    fragment, whose reruns do not reach :func:`sync_url`)."""
    names = st.session_state.get("_tab_names") or []
    name = st.session_state.get(TAB)
    slug = urlstate.tab_slug(name) if name and names and name != names[0] else None
    st.session_state[TAB_PARAM] = slug
    params = dict(st.session_state.get(_WRITTEN) or st.query_params.to_dict())
    params.pop("tab", None)
    if slug and ("comparison" in params or "runs" in params):
        params["tab"] = slug
    st.query_params.from_dict(params)
    st.session_state[_WRITTEN] = params


def linked_tab(names: list[str]) -> None:
    """Before the tabs are drawn: select the tab a link named (once), remember the names
    for :func:`tab_changed`, and the shown tab's slug for :func:`sync_url`."""
    st.session_state["_tab_names"] = list(names)
    slug = st.session_state.pop(TAB_LINKED, None)
    if slug:
        match = [n for n in names if urlstate.tab_slug(n) == slug]
        if match:
            st.session_state[TAB] = match[0]
        else:
            st.warning(f"The link's tab {slug!r} is not one of "
                       f"{', '.join(urlstate.tab_slug(n) for n in names)}; showing the "
                       "first tab.", icon=":material/link_off:")
    name = st.session_state.get(TAB)
    st.session_state[TAB_PARAM] = (urlstate.tab_slug(name) if name in names
                                   and name != names[0] else None)
