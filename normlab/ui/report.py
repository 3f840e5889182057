"""The "Download report" button of Compare, Layer dynamics and every lab page.

The HTML (:func:`normlab.views.report.build`) is built only when the button is clicked:
``st.download_button`` takes a callable as ``data`` and runs it then, on its own thread
(Streamlit ≥ 1.52), so drawing a page never pays for a report. The callable opens the
store by path and never calls ``st.*``.

A lab page's button writes the lab's report (``page="lab"``): its claim, its own charts
and the readouts the lab computes from the runs (:mod:`normlab.views.labs.sections`).
"""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from normlab.runs.store import Store
from normlab.ui.common import get_store
from normlab.views.urlstate import VIEW_DEFAULTS, View


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
                    lab: str | None = None, key: str = "report") -> None:
    """A "Download report" button for comparison or runs ``id`` as ``page`` shows them
    (``page="lab"``: as lab ``lab``'s page shows comparison ``id``)."""
    path = get_store().path

    def data() -> bytes:  # runs on click, on Streamlit's download thread
        # imported here: the report's lab sections import torch (~2.5 s of CPU), which the
        # Compare page must not pay on its first run (the quick start's first curve)
        from normlab.views import report

        try:
            text = report.build(Store(path), id, page=page, view=view, site=site,
                                layers=layers, lab=lab)
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
