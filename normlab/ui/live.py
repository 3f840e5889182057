"""The Compare page's live view: progress, pause/resume/cancel and the charts of
:data:`normlab.views.compareview.CHART_GROUPS`, polled from the store by an ``st.fragment`` while runs
train; finished comparisons' frames and charts are cached by run statuses. A comparison
that varies a numeric field also gets the sweep view (:mod:`normlab.ui.sweep`); a grid of
more than ``MANY_RUNS`` runs shows its progress per method, not one bar per run.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import altair as alt
import pandas as pd
import streamlit as st
from streamlit import dataframe_util

from normlab.views import compareview as views, explorer, linked, livespecs, urlstate
from normlab.views import viewparams
from normlab.views.keptslots import (SLOT_PREFIX, SLOTS_KEY, KeptSlots, Slot, slot_view,
                                     slots)
from normlab.runs.engine import engine_pid, engine_starting, ensure_engine
from normlab.runs.store import FINISHED, NotFound
from normlab.views.urlstate import View
from normlab.ui.form import SITE_LABELS
from normlab.ui.common import (PAGE_WIDTH, POLL_SECONDS, TAB, get_store, linked_tab,
                               tab_changed)
from normlab.ui.sweep import fields_of as sweep_fields, sweep_view


def live_runs(key: str, ids: list[str], view: View,
              controls: Callable[[], View] | None = None,
              on_view: Callable[[View], None] | None = None) -> None:
    """Progress, controls and charts of runs ``ids`` (``key`` names them: a comparison id);
    polls the store every POLL_SECONDS while any run is unfinished (faster until the first
    step is recorded: :func:`normlab.views.compareview.poll_seconds`), then stops.

    ``controls`` draws the view options and returns the View (else ``view`` is used): drawn
    in a fragment of their own with the charts, under the progress, a view toggle (or a
    tab switch) reruns only the charts, not the page nor the progress; ``on_view`` then
    gets the new View (e.g. to write it to the URL). The live poll reruns the progress and
    the chart tab shown (each a fragment of its own), not the options nor the tabs kept
    hidden in the page (:mod:`normlab.views.keptslots`), which it would only send again."""
    try:
        # a comparison a worker has just started is drawn with its first line (waited
        #   for, a fraction of a second) rather than empty and then again (wait_for_line)
        first = views.wait_for_line(get_store(), ids, get_store().runs(ids=ids))
    except NotFound:
        st.error("These runs do not exist any more (deleted?). Pick another comparison.")
        return
    every = views.poll_seconds(first, POLL_SECONDS)
    # no run has reported a step yet: the view is drawn once and a watcher polls the store
    #   quickly for the first step (a bare query; redrawing the view four times a second
    #   took a core from the engine warming up, and the first step came later)
    waiting = every is not None and every < POLL_SECONDS
    ended = int(first["status"].isin(FINISHED).sum())

    @st.fragment
    def _view() -> None:
        """The view options and the charts: a view toggle or a tab switch reruns this
        alone, not the progress above, so its charts come back sooner (and the browser
        redraws less); the live poll reruns only the tab shown (:func:`_polled`)."""
        try:
            runs = get_store().runs(ids=ids)
        except NotFound:
            st.warning("Some of these runs were deleted while they were shown; pick again.")
            return
        shown = controls() if controls else view
        _charts(key, ids, runs, shown, None if waiting else every)
        if on_view:  # after the tabs: the URL gets the shown tab (linked_tab) at once, not
            #   after a first write without it while the hidden tabs are being built
            on_view(shown)

    @st.fragment(run_every=every if waiting else None)
    def _watch() -> None:
        """Rerun the page at the first step (its polls then come at the steady pace), or
        when a run ends (e.g. fails) before any step; draws nothing."""
        try:
            runs = get_store().runs(ids=ids)
        except NotFound:
            return
        if (views.poll_seconds(runs, POLL_SECONDS) != every
                or int(runs["status"].isin(FINISHED).sum()) != ended):
            st.rerun()

    @st.fragment(run_every=None if waiting else every)
    def _live() -> None:
        try:
            runs = get_store().runs(ids=ids)
        except NotFound:
            st.warning("Some of these runs were deleted while they were shown; pick again.")
            return
        if every is not None and views.poll_seconds(runs, POLL_SECONDS) != every:
            # first records in, or everything ended: poll at the new pace, rerunning the
            #   page before drawing anything (drawn first, the first charts were built and
            #   sent twice, and the browser drew the page anew while drawing them)
            st.rerun()
        kept = st.session_state.get(_KEPT)
        if views.started(runs) and isinstance(kept, KeptSlots) and kept.catch_up():
            # the first curve is drawn: now the hidden tabs (keptslots.KeptSlots.plan)
            st.rerun()
        if not views.finished(runs):
            _engine_check()
        _progress(key, runs)

    _live()
    _view()
    if waiting:
        _watch()


def _engine_check() -> None:
    """Say so when no engine serves the store while runs wait, with a restart button."""
    path = get_store().path
    if engine_pid(path) is not None or engine_starting(path) is not None:
        return  # serving, or starting (it loads PyTorch before it claims runs)
    st.warning("No engine is serving the run store right now (it stopped or was killed), "
               "so these runs are not progressing. Restart it: runs it was training become "
               "*interrupted*, queued runs go on.", icon=":material/power_off:")
    if st.button("Restart the engine", key="_restart_engine", icon=":material/restart_alt:"):
        ensure_engine(path)


def _progress(key: str, runs) -> None:
    summary = views.progress_summary(runs)
    top = st.container(horizontal=True, vertical_alignment="center")
    if len(runs) > views.MANY_RUNS:  # a big grid: one row per method, not one bar per run
        with st.expander(f"Runs — {len(runs)}: progress per method"):
            st.dataframe(views.progress_groups(runs), hide_index=True, column_config={
                "done": st.column_config.ProgressColumn("progress", min_value=0,
                                                        max_value=1)})
        failed = runs[runs["status"].isin(("failed", "interrupted"))]
        if len(failed):
            st.warning(f"{len(failed)} run(s) failed or were interrupted, e.g.: "
                       f"{failed['error'].fillna('no reason').iloc[0]}")
        _controls(top, key, summary, list(runs["id"]), "all")
        return
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
        seed = "" if pd.isna(row.seed) else f" · seed {row.seed}"
        st.warning(f"{row.method}{seed} {row.status}: {row.message or 'no reason'}"
                   " — fix the setup and launch again.")
    rows = [i for i in (picked.selection.rows if picked else []) if i < len(table)]
    ids = list(table["run"].iloc[rows]) if rows else list(table["run"])
    which = f"{len(rows)} selected" if rows else "all"
    _controls(top, key, summary, ids, which)


def _controls(top, key: str, summary: dict, ids: list[str], which: str) -> None:
    """The overall progress bar and pause / resume / cancel for ``ids``."""
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
def _frame(path: str, cid: str, sig: tuple, metrics, sites, every: int, pending=()):
    """The runs' frame (``sig`` changes when a run does: a view toggle between two polls
    of a live comparison, and every view of a finished one, reuse it); every run is in
    it from the start, ``pending`` (:func:`~normlab.views.compareview.comparison_frame`)."""
    return views.comparison_frame(get_store(), [s[0] for s in sig], metrics, sites,
                                  every=every, pending=pending)


@st.cache_data(max_entries=64, show_spinner=False)
def _chart(path: str, cid: str, sig: tuple, spec_key: str, view: View, n_seeds: int,
           width: int, metrics, sites, every: int, pending=()) -> dict | None:
    """A chart's Vega-Lite spec for the runs' state ``sig`` and ``view``, cached: a view
    toggle back to a setting seen before, or a tab switch, costs nothing.

    A spec is built with Altair once per :func:`~normlab.views.livespecs.chart_key` (the
    runs shown, layout, scale, size) and kept (:data:`_SPECS`); a later poll, smoothing
    weight or site of that key computes only the chart's rows and puts them in it. Its
    rows are the Arrow bytes Streamlit sends (it passes bytes on as they are), encoded once
    here, not at each rerun that draws the cached chart."""
    frame = _frame(path, cid, sig, metrics, sites, every, pending)
    drawn = _SPECS.spec_for(frame, views.CHART_SPECS[spec_key], view, n_seeds=n_seeds,
                            width=width, client=True,
                            build=lambda: _built(frame, spec_key, view, n_seeds, width))
    if drawn is None:
        return None
    return linked.pack(drawn, dataframe_util.convert_anything_to_arrow_bytes)


_SPECS = livespecs.KeptSpecs()  # shared by every session: a spec is a function of its key


def _built(frame, spec_key: str, view: View, n_seeds: int, width: int) -> dict | None:
    # built without Altair's schema validation (~20-30% of a chart's CPU time, by profile;
    # the first curve waits for it): these builders' specs are validated by the tests
    with alt.utils.schemapi.debug_mode(False):
        chart = views.build_chart(frame, views.CHART_SPECS[spec_key], view, n_seeds=n_seeds,
                                  width=width, client=True)
        if chart is None:
            return None
        with alt.data_transformers.disable_max_rows():
            # the data named after the chart: a live poll, or a smoothing weight, that
            # changes only the rows swaps them into the drawn chart instead of drawing it anew
            return views.stable_data(chart.to_dict(validate=False), spec_key)


_PREWARMED = threading.Event()


def prewarm_quick_start() -> None:
    """Build the specs of the quick start's first tab, as its first polls will ask for
    them (every run named, none with a value yet: ``pending``), into the kept specs, once
    per process and in a background thread: ~1 s of Altair that the quick start's first
    curve no longer waits for. Called by ``python dashboard.py`` before the server starts,
    and by Home. A failure costs only the head start."""
    if _PREWARMED.is_set():
        return
    _PREWARMED.set()

    def build() -> None:
        try:
            quick = views.QUICK_START
            configs = views.configs_for(quick, urlstate.default_methods(quick.model),
                                        views.QUICK_SEEDS)
            group = next(iter(views.CHART_GROUPS))  # the tab a comparison opens on
            frame = views.placeholder_frame(configs, group)
            n_seeds, view = len(views.QUICK_SEEDS), urlstate.VIEW_DEFAULTS
            for spec in views.CHART_GROUPS[group]:
                own = views.relevant_view(spec, view, n_seeds, client=True)
                _SPECS.spec_for(frame, spec, own, n_seeds=n_seeds, width=PAGE_WIDTH,
                                client=True,
                                build=lambda: _built(frame, spec.key, own, n_seeds,
                                                     PAGE_WIDTH))
        except Exception:  # only a head start: the first poll builds what is missing
            pass

    threading.Thread(target=build, name="normlab-prewarm", daemon=True).start()


SWEEP_TAB = "Sweep"
EXPLORE_TAB = "Explore"


def _polled(ids: list[str], runs, poll: float | None, draw: Callable) -> None:
    """``draw(runs)`` here, then again every ``poll`` seconds (None: never) with the
    store's newest runs: a fragment of its own, the live poll of one part of the page."""
    given = [runs]

    @st.fragment(run_every=poll)
    def part() -> None:
        try:
            now = given.pop() if given else get_store().runs(ids=ids)
        except NotFound:
            return
        draw(now)

    part()


def _charts(key: str, ids: list[str], runs, view: View, poll: float | None) -> None:
    """The chart groups as tabs; a comparison that varies a numeric field (a sweep) gets
    the sweep view as its first tab. Each chart tab holds its charts in both layouts, kept
    drawn (:mod:`normlab.views.keptslots`): a tab switch or a layout toggle shows them at
    once (the page hides the others: :mod:`normlab.ui.viewbridge`). The tab shown is
    polled every ``poll`` seconds (:func:`_polled`)."""
    grid = None
    if not key.startswith("runs-"):
        record = views.comparison_record(get_store(), key)
        grid = record.get("grid") if record else None
    swept = sweep_fields(runs, grid)
    names = ([SWEEP_TAB] if swept else []) + list(views.CHART_GROUPS) + [EXPLORE_TAB]
    linked_tab(names)  # a link's ?tab=, and the shown tab for the URL
    tabs = st.tabs(names, key=TAB, on_change=tab_changed)
    shown = None
    for tab, group in zip(tabs, names):
        if group in views.CHART_GROUPS:
            if tab.open:
                shown = Slot(group, view.layout)
        elif tab.open:
            with tab:
                if group == SWEEP_TAB:
                    _polled(ids, runs, poll,
                            lambda now: sweep_view(now, key, grid, fields=swept))
                else:
                    _polled(ids, runs, poll, lambda now: _explore(key, now, view))
    # the chart tabs' slots, under the tab bar rather than in the tabs' panels: the page
    #   shows the one of the selected tab and layout (viewbridge). In a panel, each live
    #   poll's redraw made the tabs re-scan the whole panel, hidden charts included, for
    #   something to focus (~2 s of the browser's CPU per 10 s while runs train)
    with st.container(key=SLOTS_KEY):  # the containers first, in a fixed order
        boxes = {slot: st.container(key=f"{SLOT_PREFIX}{slot.name}")
                 for slot in slots(list(views.CHART_GROUPS))}
    _slots(key, ids, runs, view, boxes, shown, poll)


_KEPT = "_kept_slots"  # session key: this session's KeptSlots


def _slots(key: str, ids: list[str], runs, view: View, boxes: dict, shown: Slot | None,
           poll: float | None) -> None:
    """Fill the slots: the one shown built first (its newest rows, again at each live
    poll), then the hidden ones as :meth:`~normlab.views.keptslots.KeptSlots.plan` says
    (sent as kept, or built)."""
    kept = st.session_state.get(_KEPT)
    if not isinstance(kept, KeptSlots):
        kept = st.session_state[_KEPT] = KeptSlots()
    plan = kept.plan(key, list(views.CHART_GROUPS), shown, view.layout,
                     not views.finished(runs))

    def build(slot: Slot, now) -> tuple:
        body, final = _slot_body(key, now, slot, slot_view(view, slot.layout))
        kept.built(slot, views.chart_signature(now), body, final)
        return body

    # every slot in a fragment of its own (polled when shown): a slot shown or hidden keeps
    #   its place in the page, so its drawn chart is not drawn anew when a toggle moves it
    for slot, what in plan:
        if what == "skip":  # built at a later rerun of the view (KeptSlots.plan)
            continue
        with boxes[slot]:
            if slot == shown:
                _polled(ids, runs, poll, lambda now, slot=slot: _draw(build(slot, now)))
            else:
                body = build(slot, runs) if what == "build" else kept.body(slot)
                _polled(ids, runs, None, lambda now, body=body: _draw(body))


def _draw(body: tuple) -> None:
    """A slot's body (:func:`_slot_body`) in the page."""
    kind, *rest = body
    if kind == "info":
        st.info(rest[0])
        return
    spec, caption, warnings = rest
    for text in warnings:
        st.warning(text)
    if caption:
        st.caption(caption)
    st.vega_lite_chart(spec, width="content")


@st.cache_data(ttl=10, max_entries=16, show_spinner=False)
def _catalog(path: str, ids: tuple, configs: tuple) -> list[str]:
    return explorer.series_catalog(get_store(), ids, configs)


def _every(runs) -> int:
    longest = pd.to_numeric(runs["total_steps"], errors="coerce").fillna(runs["step"]).max()
    return views.load_every(int(longest) if longest == longest else 1,
                            min(int(c.get("record_interval", 1)) for c in runs["config"]))


def _explore(key: str, runs, view: View) -> None:
    """The metric explorer: any recorded series of these runs, charted across them."""
    names = _catalog(str(get_store().path), tuple(runs["id"]), tuple(runs["config"]))
    if not names:
        st.info("Nothing recorded yet for these runs.")
        return
    first = [n for n in names if n.startswith("update_ratio")][:1] or names[:1]
    picked = st.multiselect(
        f"Series ({len(names)} recorded: metric · site · layer)", names, default=first,
        key=f"explore_{key}", max_selections=6,
        placeholder="type to filter, e.g. “hidden2 update” or “var post_norm”",
        help="Every series the runs recorded (histogram bins: see Layer dynamics). Log scale, "
             "smoothing, seed band and layout follow the view options above.")
    n_seeds, every = int(runs["seed"].nunique()), _every(runs)
    charts = []
    for name in picked:
        metric, site, layer = explorer.parse_series(name)
        frame = views.comparison_frame(get_store(), list(runs["id"]), [metric], [site],
                                       layers=[layer], every=every)
        chart = explorer.explore_chart(frame, name, view, n_seeds=n_seeds)
        if chart is None:
            st.info(f"No values of {name} yet.")
            continue
        with alt.data_transformers.disable_max_rows():
            charts.append(views.fit(chart, min(3, frame["label"].nunique()),
                                    PAGE_WIDTH).to_dict())
    if charts:  # one spec: the picked series zoom their steps together (views.linked)
        st.vega_lite_chart(linked.compose(charts, width=PAGE_WIDTH), width="content")


def _slot_body(key: str, runs, slot: Slot, view: View) -> tuple[tuple, bool]:
    """What ``slot`` draws for ``view`` (its layout): ``("chart", spec, caption,
    warnings)`` or ``("info", text)``; and whether it is final (False: waiting for the
    runs' first measurements)."""
    group = slot.group
    # every activation site of the charts that follow the site option: the browser picks
    #   one (viewparams), and a site change reads nothing
    metrics, sites = views.group_request(group, view, client=True)
    pending = tuple(views.pending_series(group))
    every = _every(runs)
    sig, n_seeds = views.chart_signature(runs), int(runs["seed"].nunique())
    path = str(get_store().path)
    wide = view.present or view.layout == "side"
    # cached by the runs' (id, status, step): a view toggle between two polls reuses the
    # frame and every chart it does not change. Before any run has reported a step, none is
    # read: a step recorded between the runs' query and the frame's would be drawn at the
    # first-records poll pace, and drawn again at once by the page rerun that changes it
    shown = views.started(runs) or views.finished(runs)
    frame = _frame(path, key, sig, metrics, sites, every, pending) if shown else pd.DataFrame()
    ended = ("info", "Nothing measured for these charts: the runs ended before their first "
                     "record (see the notes in the Runs table above).")
    if frame.empty or frame["value"].isna().all():
        if views.finished(runs):
            return ended, True
        return ("info", "Waiting for the first measurements… A run waits in the queue "
                        "until a worker is free."), False
    charts, warnings = [], []
    for spec in views.CHART_GROUPS[group]:  # built one by one (a cached spec when unchanged)
        # the browser applies the log scale and the smoothing (viewparams): a chart's
        #   cache ignores the log scale, and the smoothing changes only its tooltips
        own = views.relevant_view(spec, view, n_seeds, client=True)
        try:
            chart = _chart(path, key, sig, spec.key, own, n_seeds, PAGE_WIDTH, metrics,
                           sites, every, pending)
        except Exception as exc:  # a chart that cannot be drawn must not break the page
            warnings.append(f"Could not draw “{spec.title}”: {exc}")
            continue
        if chart is not None:
            charts.append((spec, chart))
    if not charts:
        return ended, True
    caption = None
    if any(spec.site == "site" for spec, _ in charts):
        if views.browser_site(view, True):  # named in the titles, which the browser writes
            caption = ("Mean and variance measured at the *Activation site* chosen above; "
                       "saturation after the activation.")
        else:  # side by side: the server draws the site (views.browser_site)
            caption = (f"Mean and variance measured **{SITE_LABELS.get(view.site, view.site)}"
                       "** (the *Activation site* option above); saturation after the "
                       "activation.")
    # one spec: zooming the steps of any chart zooms them all (views.linked). Not drawn
    # chart by chart: a first chart drawn alone and then replaced by the whole tab shows
    # the audience a curve that vanishes while the tab renders. Bound to the slot's own
    # elements: the browser's options reach it only while it is shown (viewbridge); the
    # bridge holds the server's values, so the spec does not change with them
    halves = [not wide and not spec.per_layer for spec, _ in charts]
    tab = linked.compose([c for _, c in charts], halves, PAGE_WIDTH)
    return ("chart", viewparams.bind_slot(tab, slot.name), caption, warnings), True
