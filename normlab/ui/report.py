"""The "Download report" button of Compare, Layer dynamics and every lab page.

The HTML (:func:`normlab.views.report.build`) is built only when the button is clicked:
``st.download_button`` takes a callable as ``data`` and runs it then, on its own thread
(Streamlit ≥ 1.52), so drawing a page never pays for a report. The callable opens the
store by path and never calls ``st.*``.

Lab pages: :func:`normlab.ui.lab.readout` records each readout it shows
(:func:`record_readout`), and the lab's button puts them in the report beside the claim.
"""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from normlab.runs.store import Store
from normlab.ui.common import get_store
from normlab.views import report
from normlab.views.urlstate import VIEW_DEFAULTS, View

PAGE_READOUTS = "_report_readouts"  # readouts drawn by the page's script run
LIVE_READOUTS = "_report_live_readouts"  # ... and by the live fragment's latest run
IN_LIVE = "_report_in_live"


def report_id(runs: pd.DataFrame) -> str:
    """A comparison id when ``runs`` are exactly one comparison's runs, else the run ids."""
    cids = runs["comparison_id"].dropna().unique() if "comparison_id" in runs else []
    if len(cids) == 1:
        every = get_store().runs(comparison=cids[0])
        if set(every["id"]) == set(runs["id"]):
            return str(cids[0])
    return ",".join(runs["id"])


def _file_name(id: str) -> str:
    ids = id.split(",")
    return f"normlab-report-{ids[0]}" + (f"-and-{len(ids) - 1}-more" if len(ids) > 1 else "") \
        + ".html"


def download_button(id: str, *, page: str = "compare", view: View = VIEW_DEFAULTS,
                    site: str | None = None, layers: list[str] | None = None,
                    readouts=(), key: str = "report") -> None:
    """A "Download report" button for comparison or runs ``id`` as ``page`` shows them."""
    path = get_store().path
    readouts = tuple(readouts)

    def data() -> bytes:  # runs on click, on Streamlit's download thread
        try:
            text = report.build(Store(path), id, page=page, view=view, site=site,
                                layers=layers, readouts=readouts)
        except Exception as exc:  # the download must still say what went wrong
            text = ("<!doctype html><meta charset='utf-8'><title>NormLab report</title>"
                    f"<p>The report of {html.escape(id)} could not be built: "
                    f"{html.escape(str(exc))}</p><p>Write it from a terminal: "
                    f"<code>{html.escape(report.command(id, page, site, layers))}</code></p>")
        return text.encode("utf-8")

    st.download_button("Download report", data, file_name=_file_name(id), mime="text/html",
                       icon=":material/download:", key=key, on_click="ignore",
                       help="One HTML file that opens offline: the setup, the methods, "
                            "these charts (interactive) and the runs themselves — "
                            "`normlab import` reads it back into another store.")


def start_page_readouts() -> None:
    """A lab page's script starts: forget the readouts of its previous run."""
    st.session_state[PAGE_READOUTS] = []
    st.session_state[IN_LIVE] = False


def record_readout(text: str) -> None:
    """Remember a readout the page shows, for its report."""
    which = LIVE_READOUTS if st.session_state.get(IN_LIVE) else PAGE_READOUTS
    st.session_state.setdefault(which, []).append(text)


def readouts() -> list[str]:
    """The readouts shown on the page now (page-level, then the live view's), once each."""
    return list(dict.fromkeys(st.session_state.get(PAGE_READOUTS, [])
                              + st.session_state.get(LIVE_READOUTS, [])))
