"""The lab scaffold in the dashboard: claim → one-click preset → view → measured readout.

Every lab page (``pages/7_invariance.py``, ...) is a few calls into this module:

* :func:`header` — the title, the claim in plain sentences and what to look for;
* :func:`presets` — one button per preset, launching it through the engine as a stored
  comparison (:func:`normlab.views.labs.scaffold.launch`), the form that changes it one
  expander away, and a picker of the lab's stored comparisons; the one shown is in the URL
  (``?comparison=``), so a link reopens it;
* :func:`live` — the progress of the shown runs (one summary line however many there are,
  pause / resume / cancel) and the lab's view, polled while they train;
* :func:`readout` — the one-line measured result, computed by the lab from the runs shown;
* under the live view, "Download report" (:mod:`normlab.ui.report`): the lab's report —
  the claim, the page's charts and readouts at its default choices
  (:mod:`normlab.views.labs.sections`) and the runs, in one offline HTML file.

The computing is in :mod:`normlab.views.labs`; this module draws.
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from normlab.methods.specs import norms_for
from normlab.runs.comparisons import parse_values
from normlab.runs.store import NotFound
from normlab.training.config import ConfigError
from normlab.ui.common import POLL_SECONDS, get_store
from normlab.ui.report import download_button
from normlab.views import compareview as views
from normlab.views.labs.scaffold import Lab, Preset, launch, preset_configs, with_changes
from normlab.views.labs.sections import lab_of

FORM_BASE = ("steps", "lr", "batch_size", "width", "depth")  # base fields the form edits


def header(lab: Lab) -> None:
    """Title, claim and what to look for."""
    st.title(lab.title)
    st.markdown(lab.claim)
    st.caption(f"**What to look for.** {lab.look_for}")


def _state_key(lab: Lab) -> str:
    return f"lab_{lab.key}_comparison"


def _lab_comparisons(lab: Lab) -> dict[str, str]:
    """This lab's stored comparisons, newest first: id → 'name — id'. A comparison is the
    lab's by the ``origin`` it was launched with (older ones: by their preset's name)."""
    table = get_store().comparisons()
    return {r["id"]: f"{r['name']} — {r['id']}" for r in table.to_dict("records")
            if lab_of(r) is lab}


def shown(lab: Lab) -> str | None:
    """The comparison this lab page shows: the link's ``?comparison=``, else the last one
    launched or picked here, else this lab's newest stored one (None: nothing yet)."""
    linked = st.query_params.get("comparison")
    if linked and linked != st.session_state.get(f"_{_state_key(lab)}_link"):
        st.session_state[f"_{_state_key(lab)}_link"] = linked
        if views.comparison_record(get_store(), linked) is None:
            st.warning(f"There is no comparison {linked!r} in this store (deleted, or made "
                       "with another store): press a preset button above.",
                       icon=":material/link_off:")
        else:
            st.session_state[_state_key(lab)] = linked
    cid = st.session_state.get(_state_key(lab))
    if cid and views.comparison_record(get_store(), cid) is not None:
        return cid
    return next(iter(_lab_comparisons(lab)), None)


def _show(lab: Lab, cid: str) -> None:
    st.session_state[_state_key(lab)] = cid
    st.session_state[f"_{_state_key(lab)}_link"] = cid
    st.query_params["comparison"] = cid


def _launch(lab: Lab, preset: Preset) -> None:
    try:
        cid, ids = launch(preset, lab, store=get_store())
    except ConfigError as exc:
        for field, msg in exc.errors.items():
            st.error(f"{field}: {msg}")
        return
    _show(lab, cid)
    st.toast(f"Launched {len(ids)} runs: {preset.label}.")


def presets(lab: Lab, *, runs_needed: bool = True) -> str | None:
    """Preset buttons, the change form and the picker; returns the comparison shown."""
    cols = st.columns(len(lab.presets) + 1)
    for col, preset in zip(cols, lab.presets):
        n = len(preset_configs(preset))
        if col.button(f"Run: {preset.label}", icon=":material/play_arrow:", type="primary",
                      key=f"lab_{lab.key}_{preset.key}", width="stretch",
                      help=f"{n} runs through the engine; they are stored, and the link "
                           "reopens them"):
            _launch(lab, preset)
    with st.expander("Change the experiment"):
        _form(lab)
    choices = _lab_comparisons(lab)
    cid = shown(lab)
    if cid and cid not in choices:
        record = views.comparison_record(get_store(), cid)
        choices = {cid: f"{record['name']} — {cid}", **choices}
    if not choices:
        if runs_needed:
            st.info("Nothing launched for this lab yet: press a preset button above.",
                    icon=":material/arrow_upward:")
        return None
    pick = f"lab_{lab.key}_pick"
    st.session_state[pick] = cid

    def picked() -> None:
        _show(lab, st.session_state[pick])

    st.selectbox("Showing", list(choices), format_func=choices.get, key=pick,
                 on_change=picked)
    if st.query_params.get("comparison") != cid:
        st.query_params["comparison"] = cid
    return cid


def _form(lab: Lab) -> None:
    """Edit a preset (methods, seeds, grid values in the CLI's syntax, a few base fields)
    and launch the changed experiment."""
    preset = lab.presets[0]
    if len(lab.presets) > 1:
        keys = [p.key for p in lab.presets]
        preset = lab.preset(st.radio("Preset", keys, horizontal=True, key=f"lf_{lab.key}_p",
                                     format_func=lambda k: lab.preset(k).label))
    k = f"lf_{lab.key}_{preset.key}"
    methods = st.multiselect("Methods", norms_for(preset.base.model),
                             default=list(preset.methods), key=f"{k}_methods")
    texts = {name: st.text_input(name, ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                                  for v in values), key=f"{k}_{name}",
                                 help="comma-separated values, or a range such as "
                                      "logspace:0.001:10:9 or linspace:0:1:5")
             for name, values in preset.grid.items() if name != "norm"}
    cols = st.columns(len(FORM_BASE))
    base = {}
    for col, name in zip(cols, FORM_BASE):
        value = getattr(preset.base, name)
        if name in preset.grid:
            continue
        base[name] = (col.number_input(name, value=float(value), format="%g",
                                       key=f"{k}_b_{name}") if isinstance(value, float)
                      else int(col.number_input(name, value=int(value), min_value=1,
                                                step=1, key=f"{k}_b_{name}")))
    if preset.tied_note:
        st.caption(f"Tied to each run's batch size: {preset.tied_note}.")
    problems: dict[str, str] = {}
    grid = {"norm": methods} if "norm" in preset.grid else {}
    for name, text in texts.items():
        try:
            grid[name] = parse_values(name, text)
        except ConfigError as exc:
            problems.update(exc.errors)
    changed = None
    if not problems:
        try:
            changed = with_changes(preset, base, grid)
            n = len(preset_configs(changed))
            st.caption(f"{n} runs.")
        except ConfigError as exc:
            problems.update(exc.errors)
    for field, msg in problems.items():
        st.error(f"{field}: {msg}")
    if st.button("Launch the changed experiment", icon=":material/play_arrow:",
                 disabled=changed is None, key=f"{k}_go"):
        _launch(lab, changed)
        st.rerun()


def live(lab: Lab, cid: str, view: Callable[[pd.DataFrame], None]) -> None:
    """Progress and controls of comparison ``cid``, then ``view(runs)`` and the lab's
    "Download report"; polled every POLL_SECONDS while a run is unfinished."""
    try:
        running = not views.finished(get_store().runs(comparison=cid))
    except NotFound:
        st.error("This comparison does not exist any more (deleted?). Launch the preset.")
        return

    @st.fragment(run_every=POLL_SECONDS if running else None)
    def _live() -> None:
        try:
            runs = get_store().runs(comparison=cid)
        except NotFound:
            st.warning("This comparison was deleted while it was shown.")
            return
        progress(cid, runs)
        view(runs)
        download_button(cid, page="lab", lab=lab.key, key=f"lab_report_{cid}")
        if running and views.finished(runs):
            st.rerun()

    _live()


def progress(cid: str, runs: pd.DataFrame) -> None:
    """One summary line for any number of runs, with pause / resume / cancel for all."""
    summary = views.progress_summary(runs)
    row = st.container(horizontal=True, vertical_alignment="center")
    with row:
        st.progress(summary["fraction"], text=summary["text"], width="stretch")
        for action, icon in (("pause", ":material/pause:"), ("resume", ":material/play_arrow:"),
                             ("cancel", ":material/stop:")):
            if st.button(action.capitalize(), icon=icon, key=f"lab_{action}_{cid}",
                         disabled=summary["finished"]):
                changed = get_store().request(cid, action)
                st.toast(f"{action.capitalize()}: {len(changed)} run(s)." if changed
                         else f"Nothing to {action}.")
    failed = runs[runs["status"].isin(("failed", "interrupted"))]
    if len(failed):
        st.warning(f"{len(failed)} run(s) {', '.join(sorted(set(failed['status'])))}: "
                   f"{failed['error'].fillna('no reason').iloc[0]}")


def readout(text: str) -> None:
    """The lab's one-line measured result (the page's report computes the same)."""
    st.success(text, icon=":material/straighten:")
