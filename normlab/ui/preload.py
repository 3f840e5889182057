"""The Compare page's browser code, loaded while Home is read.

Streamlit's frontend loads an element's code (a JavaScript module and the modules it
imports) the first time a page draws that element. Home draws text, a table, a button
and a chart; the Compare page adds the setup form's widgets, the progress table, the
view options and the download button. So the quick start's click used to make the
browser fetch ~60 modules from the server — requested ~0.55 s after the click, the last
one in at ~1.4 s — while that same server process was computing the Compare page's
first charts (measured in session 10, benchmarks/bench_first_curve.py's setting).

:func:`preload_compare` imports those modules into the page once Home is drawn (an
``import()`` per element, from an inline script), so the click finds them loaded: the
same URLs as the frontend's own imports, so the browser's module map serves them, and
importing a component's module only defines it. The modules are found by their names in
the installed Streamlit's static folder; an element whose module is not found there
(another Streamlit version) is skipped, and the Compare page loads it itself as before.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import streamlit as st

# the elements the Compare page draws that Home does not (Streamlit's module names)
COMPARE_ELEMENTS = ("Selectbox", "Multiselect", "NumberInput", "TextInput", "Checkbox",
                    "Slider", "ButtonGroup", "Progress", "DataFrame", "DownloadButton",
                    "loadVegaEmbed")


def static_folder() -> Path:
    """The folder the Streamlit server serves its frontend from (``/static``: js, css)."""
    return Path(st.__file__).parent / "static" / "static"


@functools.cache
def modules_of(elements: tuple[str, ...] = COMPARE_ELEMENTS, kind: str = "js"
               ) -> tuple[str, ...]:
    """The ``kind`` files (``js`` modules, ``css`` style sheets) of ``elements`` in the
    installed Streamlit (``Name.<hash>.js``)."""
    try:
        names = [p.name for p in (static_folder() / kind).iterdir()]
    except OSError:
        return ()
    wanted = [re.compile(re.escape(e) + r"\.[A-Za-z0-9_-]+\." + kind) for e in elements]
    return tuple(sorted(n for n in names if any(w.fullmatch(n) for w in wanted)))


def preload_script(modules: tuple[str, ...], sheets: tuple[str, ...] = ()) -> str:
    """An inline script importing ``modules`` from ``./static/js/`` (and preloading the style
    ``sheets`` of ``./static/css/``) when the browser is idle, or after 0.3 s at the latest
    (Streamlit's page may keep a headless chromium from ever being idle); a failed import
    is ignored: the element then loads its code when drawn."""
    return ("<script>(window.requestIdleCallback || setTimeout)(() => {"
            " for (const f of " + json.dumps(list(modules)) + ")"
            " import('./static/js/' + f).catch(() => {});"
            " for (const f of " + json.dumps(list(sheets)) + ") {"
            " const link = document.createElement('link'); link.rel = 'preload';"
            " link.as = 'style'; link.href = './static/css/' + f;"
            " document.head.appendChild(link); } }, {timeout: 300});</script>")


def preload_compare() -> None:
    """Load the Compare page's element code into the browser (see the module docstring);
    draws nothing visible. Call it where it is in view (the sidebar): the browser runs a
    page's script only once it has drawn that part of the page."""
    modules = modules_of()
    if modules:
        st.html(preload_script(modules, modules_of(kind="css")),
                unsafe_allow_javascript=True)
