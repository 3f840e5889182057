"""Widgets shared by the Layer dynamics and Runs pages (and free for the Compare page).

* :func:`pick_runs` — a comparison + runs picker that reads ``?comparison=`` / ``?runs=``
  on arrival and keeps the address in sync, so pages can link to each other.
* :func:`site_rows` / :func:`run_table` — store reads, cached with ``st.cache_data`` for
  finished runs (keyed on run ids + statuses); unfinished runs are read fresh.
* :func:`chart_downloads` — PNG / SVG buttons rendered only when clicked.
* Runs page pieces: :func:`run_filters`, :func:`select_runs` (row selection kept by run id,
  across filters), :func:`pick_target` and the action panels.

Everything computed lives in :mod:`normlab.views.runtable` and :mod:`normlab.views.layerview`; UI
selections (and one-shot result messages of the action buttons) are the only session state.
"""
from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from normlab.views import layerview, runtable
from normlab.runs.store import FINISHED, NotFound, Store
from normlab.ui.common import current_comparison, get_store

ss = st.session_state
EMPTY_STORE = "No runs yet — launch one from Compare or Home (or import an export on Runs)."


# ------------------------------------------------------------------------ cached reads
@st.cache_data(max_entries=64, show_spinner=False)
def _finished_rows(path: str, runs: tuple[tuple[str, str], ...], site: str, kind: str,
                   layers: tuple[str, ...] | None, every: int | None,
                   steps: tuple[int, int] | None) -> pd.DataFrame:
    return layerview.load_rows(get_store(), [r for r, _ in runs], site, kind,
                               layers=layers, every=every, steps=steps)


def site_rows(store: Store, runs: pd.DataFrame, site: str, kind: str, *, layers=None,
              every: int | None = None, steps: tuple[int, int] | None = None,
              names: dict[str, str] | None = None) -> pd.DataFrame:
    """:func:`normlab.views.layerview.load_site`, finished runs from the cache."""
    done = runs["status"].isin(FINISHED)
    layers = None if layers is None else tuple(layers)
    parts = [_finished_rows(str(store.path), tuple(zip(runs.loc[done, "id"],
                                                       runs.loc[done, "status"])),
                            site, kind, layers, every, steps)]
    if (~done).any():
        parts.append(layerview.load_rows(store, runs.loc[~done, "id"], site, kind,
                                         layers=layers, every=every, steps=steps))
    rows = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return layerview.join_methods(rows, runs, names)


@st.cache_data(max_entries=16, show_spinner=False)
def _finished_finals(path: str, runs: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    return runtable.load_final_metrics(get_store(), [r for r, _ in runs])


def run_table(store: Store) -> pd.DataFrame:
    """:func:`normlab.views.runtable.run_table`, final metrics of finished runs from the cache."""
    runs, comps = store.runs(), store.comparisons()
    done = runs["status"].isin(FINISHED)
    finals = pd.concat([_finished_finals(str(store.path), tuple(zip(
        runs.loc[done, "id"], runs.loc[done, "status"]))),
        runtable.load_final_metrics(store, runs.loc[~done, "id"])])
    return runtable.build_table(runs, comps, finals)


# ------------------------------------------------------------------------- run picker
def pick_runs(store: Store, *, key: str = "layers") -> tuple[pd.DataFrame, dict[str, str]]:
    """(the chosen runs as a ``store.runs()`` frame, comparison id -> name).

    Arriving with ``?comparison=`` / ``?runs=`` selects those (unknown ids get an error);
    arriving without, the last selection or the newest comparison. Widget changes are
    written back to the address.
    """
    comps, runs = store.comparisons(), store.runs()
    names = dict(zip(comps["id"], comps["name"]))
    members = {c: list(g["id"]) for c, g in runs.groupby("comparison_id", sort=False)}
    k_cmp, k_runs, k_sel, k_url = (f"{key}_comparison", f"{key}_runs", f"_{key}_selection",
                                   f"_{key}_url")
    qp = st.query_params
    url = (qp.get("comparison"), qp.get("runs"))
    if url != (None, None) and url != ss.get(k_url):
        sel = layerview.resolve_selection(store, *url)
        for message in sel.errors:
            st.error(message)
        ss[k_sel] = (sel.comparison or "", sel.runs)
    elif k_sel not in ss:  # first visit: the comparison shown on Compare, else the newest
        first = current_comparison() or (comps["id"].iloc[0] if len(comps) else "")
        ss[k_sel] = (first, members.get(first, []))
    cmp, chosen = ss[k_sel]
    cmp = cmp if cmp in names else ""
    options = members.get(cmp, []) if cmp else list(runs["id"])
    chosen = [r for r in chosen if r in set(options)]
    ss[k_sel] = (cmp, chosen)
    ss[k_cmp], ss[k_runs] = cmp, chosen  # (re)seed the widgets from the selection

    def on_comparison() -> None:
        new = ss[k_cmp]
        ss[k_sel] = (new, members.get(new, []) if new else ss[k_sel][1])

    def on_runs() -> None:
        ss[k_sel] = (ss[k_sel][0], list(ss[k_runs]))

    by_id = runs.set_index("id", drop=False)
    left, right = st.columns([2, 3])
    left.selectbox("Comparison", ["", *comps["id"]], key=k_cmp, on_change=on_comparison,
                   format_func=lambda c: f"{names[c]} · {len(members.get(c, []))} runs ({c})"
                   if c else "Runs from any comparison")
    right.multiselect("Runs", options, key=k_runs, on_change=on_runs,
                      placeholder="Pick runs (any comparison)",
                      format_func=lambda r: layerview.run_label(
                          by_id.loc[r], None if cmp else names.get(by_id.at[r, "comparison_id"])))
    params = layerview.url_params(cmp, chosen, members.get(cmp))
    if params != {k: qp[k] for k in ("comparison", "runs") if k in qp}:
        for k in ("comparison", "runs"):
            qp.pop(k, None)
        qp.update(params)
    ss[k_url] = (params.get("comparison"), params.get("runs"))
    return by_id.loc[chosen].reset_index(drop=True), names


def open_page(page: str, params: dict[str, str]) -> None:
    """Go to ``page`` with ``params`` as its query (``?comparison=`` / ``?runs=``)."""
    try:
        st.switch_page(page, query_params=params)
    except StreamlitAPIException as e:
        st.error(f"Cannot open {page} in this app ({e}). Start the dashboard with "
                 "`streamlit run dashboard.py`.")


# ---------------------------------------------------------------------------- charts
def chart_downloads(chart, stem: str, *, key: str, what: str = "") -> None:
    """PNG and SVG download buttons (``what``: the chart, when several share a row); the
    image is rendered only when one is clicked."""
    row = st.container(horizontal=True)
    for fmt in runtable.IMAGE_MIME:
        row.download_button(f"{what} {fmt.upper()}".strip(), data=lambda fmt=fmt: runtable.chart_bytes(chart, fmt),
                            file_name=f"{stem}.{fmt}", mime=runtable.IMAGE_MIME[fmt],
                            key=f"{key}_{fmt}", on_click="ignore", icon=":material/download:")


# ------------------------------------------------------------------------- Runs page
TABLE_COLUMNS = ("comparison", "method", "seed", "dataset", "model", "activation", "status",
                 "step", *runtable.FINAL_METRICS, "created", "tags", "comparison_tags",
                 "notes", "name", "id")
TABLE_CONFIG = {
    "comparison": st.column_config.TextColumn("comparison", width="medium"),
    "name": st.column_config.TextColumn("run name"),
    "step": st.column_config.NumberColumn("steps"),
    "train_loss": st.column_config.NumberColumn("train loss", format="%.3f"),
    "train_acc": st.column_config.NumberColumn("train acc", format="percent"),
    "val_loss": st.column_config.NumberColumn("val loss", format="%.3f"),
    "val_acc": st.column_config.NumberColumn("val acc", format="percent"),
    "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
    "tags": st.column_config.ListColumn("tags"),
    "comparison_tags": st.column_config.ListColumn("comparison tags"),
    "id": st.column_config.TextColumn("run id"),
}


def run_filters(table: pd.DataFrame) -> dict:
    """Filter widgets; returns the keyword arguments of :func:`runtable.filter_runs`."""
    opts = runtable.filter_options(table)
    names = dict(zip(table["comparison_id"], table["comparison"]))
    # two rows, so the chips, the date range and every label show whole at 1280 px with
    #   the sidebar open (one row of six left a tag chip one letter wide)
    top, bottom = st.columns(2), st.columns([1, 1, 1, 1.6])
    out = {"comparisons": top[0].multiselect("Comparison", opts["comparisons"],
                                             placeholder="all",
                                             format_func=lambda i: f"{names[i]} ({i})"),
           "tags": top[1].multiselect("Tag", opts["tags"], placeholder="all" if opts["tags"]
                                      else "no tags yet", disabled=not opts["tags"]),
           "datasets": bottom[0].multiselect("Dataset", opts["datasets"], placeholder="all"),
           "methods": bottom[1].multiselect("Method", opts["methods"], placeholder="all"),
           "statuses": bottom[2].multiselect("Status", opts["statuses"], placeholder="all")}
    dates = bottom[3].date_input("Created between", value=tuple(opts["dates"]),
                                 min_value=opts["dates"][0], max_value=opts["dates"][1])
    dates = dates if isinstance(dates, (tuple, list)) else (dates,)
    out["since"], out["until"] = (list(dates) + [None, None])[:2]
    return out


def set_selection(run_ids) -> None:
    """Select these runs in the Runs table (a fresh table widget shows them ticked)."""
    ss["runs_selected"] = list(run_ids)
    ss["_runs_table_gen"] = ss.get("_runs_table_gen", 0) + 1


def select_runs(view: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The runs table with row selection; returns the selected run ids, kept by id so a
    selection survives filtering (runs hidden by a filter stay selected)."""
    valid = set(table["id"])
    chosen = [r for r in ss.get("runs_selected", []) if r in valid]
    ids = list(view["id"])
    digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:12]
    key = f"runs_table_{digest}_{ss.get('_runs_table_gen', 0)}"
    default = {"selection": {"rows": [i for i, r in enumerate(ids) if r in set(chosen)],
                             "columns": []}}
    event = st.dataframe(view[list(TABLE_COLUMNS)],
                         key=key, on_select="rerun", selection_mode="multi-row",
                         selection_default=default, hide_index=True,
                         column_config=TABLE_CONFIG)
    picked = [ids[i] for i in event.selection.rows if i < len(ids)]
    chosen = [r for r in chosen if r not in set(ids)] + picked
    ss["runs_selected"] = chosen
    return chosen


def pick_target(targets: list[runtable.Target]) -> runtable.Target:
    labels = [t.label for t in targets]
    digest = hashlib.sha1("|".join(labels).encode()).hexdigest()[:10]  # new selection: reset
    label = st.selectbox("Apply to", labels, key=f"runs_target_{digest}")
    return targets[labels.index(label)] if label in labels else targets[0]


def flash(panel: str) -> None:
    """Show (once) the result message an action button left for ``panel``."""
    kind, text = ss.pop(f"_flash_{panel}", (None, None))
    if kind:
        getattr(st, kind)(text)


def _say(panel: str, kind: str, text: str) -> None:
    ss[f"_flash_{panel}"] = (kind, text)


def _key(target: runtable.Target) -> str:
    return hashlib.sha1(f"{target.kind}{target.id}{target.run_ids}".encode()).hexdigest()[:10]


def _save(store: Store, target: runtable.Target, k: str) -> None:
    try:
        changed = runtable.apply_edits(store, target, name=ss.get(f"{k}_name"),
                                       tags=runtable.parse_tags(ss[f"{k}_tags"]),
                                       notes=ss[f"{k}_notes"])
    except (ValueError, NotFound) as e:
        return _say("edit", "error", f"Nothing saved: {e}")
    _say("edit", "success" if changed else "info",
         f"Saved the {' and '.join(changed)} of {target.label}." if changed
         else "Nothing to save: the name, tags and notes are unchanged.")


def edit_panel(store: Store, target: runtable.Target) -> None:
    k = f"edit_{_key(target)}"
    with st.form(k, border=False):
        if target.kind != "runs":
            st.text_input("Name", target.name, key=f"{k}_name",
                          help="A run's name may be empty; a comparison needs one.")
        st.text_input("Tags (comma-separated)", ", ".join(target.tags), key=f"{k}_tags",
                      help="Replaces the tags" + (" of each selected run." if
                                                   target.kind == "runs" else "."))
        st.text_area("Notes", target.notes, key=f"{k}_notes", height=80)
        st.form_submit_button("Save", on_click=_save, args=(store, target, k))
    flash("edit")


def download_panel(store: Store, target: runtable.Target) -> None:
    if target.kind == "runs":
        st.info("An export holds one run or one whole comparison: pick it in “Apply to”.")
        return
    row = st.container(horizontal=True)
    for fmt in runtable.EXPORT_MIME:
        row.download_button(fmt.upper(), on_click="ignore", icon=":material/download:",
                            data=lambda fmt=fmt: runtable.export_bytes(store, target.id, fmt),
                            file_name=runtable.export_name(target.id, fmt),
                            mime=runtable.EXPORT_MIME[fmt], key=f"export_{target.id}_{fmt}")
    st.caption("JSON and Parquet hold the configs too and can be imported again; CSV holds "
               "the metric rows only, for spreadsheets.")


def _rerun(store: Store, target: runtable.Target) -> None:
    try:
        cid, run_ids = runtable.rerun(store, target)
    except (ValueError, NotFound) as e:
        return _say("rerun", "error", f"Nothing was queued: {e}")
    set_selection(run_ids)
    _say("rerun", "success", f"Queued comparison {cid} with {len(run_ids)} run(s); they are "
         "selected in the table — open them in Compare to watch them train.")


def rerun_panel(store: Store, target: runtable.Target) -> None:
    st.write(f"Train the stored configs of {target.label} again, as a new comparison.")
    st.button("Re-run", on_click=_rerun, args=(store, target), icon=":material/replay:")
    flash("rerun")


def _delete(store: Store, target: runtable.Target, confirm: str) -> None:
    if not ss.get(confirm):
        return _say("delete", "error", "Nothing was deleted: tick “Yes, delete permanently” "
                    "first.")
    try:
        gone = runtable.delete(store, target)
    except (ValueError, NotFound) as e:
        return _say("delete", "error", f"Nothing was deleted: {e}")
    set_selection([r for r in ss.get("runs_selected", []) if r not in set(gone)])
    _say("delete", "success", f"Deleted {len(gone)} run(s): {', '.join(gone) or '—'}.")


def delete_panel(store: Store, table: pd.DataFrame, target: runtable.Target) -> None:
    st.warning(runtable.deletion_summary(table, target))
    confirm = f"confirm_{_key(target)}"
    st.checkbox("Yes, delete permanently", key=confirm)
    st.button("Delete", type="primary", on_click=_delete, args=(store, target, confirm),
              icon=":material/delete:")
    flash("delete")


def _import(store: Store) -> None:
    upload = ss.get("runs_import_file")
    if upload is None:
        return _say("import", "error", "Choose a file first (a .json or .parquet export).")
    try:
        result = runtable.import_bytes(store, upload.getvalue(), upload.name)
    except ValueError as e:
        return _say("import", "error", f"Nothing was imported. {e}")
    if result.added:
        set_selection(result.added)
    text = (f"Imported {len(result.added)} run(s) from {upload.name}: "
            f"{', '.join(result.added)} (selected in the table)." if result.added
            else f"{upload.name} added nothing.")
    _say("import", "success" if result.added else "info",
         text + (f" {result.skipped}" if result.skipped else ""))


def import_panel(store: Store, *, expanded: bool) -> None:
    with st.expander("Import a NormLab export", expanded=expanded, icon=":material/upload:"):
        st.caption("A .json or .parquet file written by NormLab's export (Download here, or "
                   "`python -m normlab export`). A CSV export needs its .runs.json file "
                   "beside it: import it with `python -m normlab import`.")
        st.file_uploader("Export file", type=list(runtable.IMPORT_TYPES),
                         key="runs_import_file")
        st.button("Import", on_click=_import, args=(store,), icon=":material/upload:")
        flash("import")
