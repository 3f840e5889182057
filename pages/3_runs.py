"""Runs: every stored comparison and run — filter, select, open, edit, download, re-run,
delete, import."""
import streamlit as st

from normlab.views import runtable
from normlab.ui import picker
from normlab.ui.common import get_store
from normlab.ui import menu

menu.page_setup(menu.RUNS)

st.title("Runs")
st.markdown(
    "Every comparison and run in the store. Filter the table, tick runs — even from "
    "different comparisons — then open them side by side, rename, tag, annotate, download, "
    "re-run or delete them.")

store = get_store()
table = picker.run_table(store)
if table.empty:
    st.info("No runs yet — launch one from Compare or Home, or import an export below.")
    picker.import_panel(store, expanded=True)
    st.stop()

view = runtable.filter_runs(table, **picker.run_filters(table))
st.caption(f"{len(view)} of {len(table)} runs · {table['comparison_id'].nunique()} "
           "comparisons · tick rows to select them (the header box selects all shown).")
selected = picker.select_runs(view, table)

if not selected:
    picker.flash("delete")
    st.info("Select runs in the table to open, edit, download, re-run or delete them.")
else:
    hidden = len(set(selected) - set(view["id"]))
    st.subheader(f"{len(selected)} run(s) selected"
                 + (f" ({hidden} hidden by the filters)" if hidden else ""))
    params = runtable.link_params(table, selected)
    with st.container(horizontal=True):  # buttons as wide as their labels
        if st.button("Open in Layer dynamics", icon=":material/stacked_line_chart:"):
            picker.open_page(menu.LAYERS.path, params)
        if st.button("Open in Compare", icon=":material/compare_arrows:"):
            picker.open_page(menu.COMPARE.path, params)
        st.button("Clear selection", on_click=picker.set_selection, args=([],))

    target = picker.pick_target(runtable.targets(table, selected))
    edit, download, again, delete = st.tabs(["Rename · tag · annotate", "Download", "Re-run",
                                             "Delete"], key="runs_tab")
    with edit:
        picker.edit_panel(store, target)
    with download:
        picker.download_panel(store, target)
    with again:
        picker.rerun_panel(store, target)
    with delete:
        picker.delete_panel(store, table, target)

picker.import_panel(store, expanded=False)
