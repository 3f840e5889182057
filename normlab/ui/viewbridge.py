"""The Compare page's log-scale toggle, smoothing slider and activation site, mirrored to
its charts in the browser: a change redraws the charts at once, not after the server's
rerun.

The live charts read the three options from Vega-Lite params bound to hidden elements of
the page (:mod:`normlab.views.viewparams`). :func:`bridge` draws a script that creates
those elements — their ``value`` reads the Streamlit widgets' state in the page (the
toggle's checkbox, the slider's range input, the selectbox's label; the widgets are found by their keys'
``st-key-…`` classes) — and, whenever that state changes (a click, a key, a drag), sends
an ``input`` event, which Vega answers by redrawing the bound charts. The server's rerun
that the widget causes as always then sends the same state in the spec.

If a widget cannot be read (not drawn, another Streamlit version's markup), its element
says ``""`` and the charts draw the server's value: slower, never wrong. The browser test
(``tests/test_browser.py``) checks a toggle redraws the drawn charts before any rerun
could. Streamlit helpers: imported by pages only (``import normlab`` loads no Streamlit).
"""
from __future__ import annotations

import json

import streamlit as st

from normlab.views.urlstate import SMOOTH_MAX
from normlab.views.viewparams import ELEMENTS, LOG, SITE, SMOOTH

KEYS = {LOG: "view_log", SMOOTH: "view_smooth",  # the widgets' keys (normlab.ui.form)
        SITE: "view_site"}

_SCRIPT = """<script>(() => {
  const ids = %(ids)s, keys = %(keys)s, max = %(max)s, sites = %(sites)s;
  const widget = (name, sel) => document.querySelector(`.st-key-${keys[name]} ${sel}`);
  const read = {
    %(log)s: () => { const box = widget(%(log)s, 'input[type="checkbox"]');
                     return box ? (box.checked ? 'on' : 'off') : ''; },
    %(smooth)s: () => { const r = widget(%(smooth)s, 'input[type="range"]');
                        const s = r ? null : widget(%(smooth)s, '[role="slider"]');
                        const v = r ? Number(r.value)
                          : s ? Number(s.getAttribute('aria-valuenow')) : NaN;
                        return Number.isFinite(v) && v >= 0 && v <= max ? String(v) : ''; },
    // the selectbox's text, when it is a site's label (not while it is typed in)
    %(site)s: () => { const box = widget(%(site)s, 'input[role="combobox"]');
                      if (!box || box.getAttribute('aria-expanded') === 'true') return '';
                      return sites[box.value] || ''; },
  };
  const last = {};
  for (const name of Object.keys(ids)) {
    let el = document.getElementById(ids[name]);
    if (!el) {
      el = document.createElement('span');
      el.id = ids[name]; el.hidden = true;
      // Vega reads .value when it binds and on each event; it may write it back (ignored)
      Object.defineProperty(el, 'value', { get: read[name], set: () => {} });
      document.body.appendChild(el);
    }
    last[name] = read[name]();
  }
  if (window.__normlabBridge) return;
  window.__normlabBridge = true;
  const check = () => {
    for (const name of Object.keys(ids)) {
      const now = read[name]();
      if (now !== last[name]) {
        last[name] = now;
        document.getElementById(ids[name]).dispatchEvent(new Event('input'));
      }
    }
  };
  const soon = () => { setTimeout(check, 0); requestAnimationFrame(check); };
  for (const type of ['click', 'change', 'input', 'keyup', 'pointerup'])
    document.addEventListener(type, soon, true);
  new MutationObserver(check).observe(document.body, {
    subtree: true, attributes: true,
    attributeFilter: ['aria-valuenow', 'aria-valuetext', 'aria-checked', 'aria-expanded',
                      'value']});
})();</script>"""


def script(site_labels: dict[str, str]) -> str:
    """The bridge's script (see the module docstring); ``site_labels``: the site
    selectbox's label of each activation site."""
    return _SCRIPT % {"ids": json.dumps(ELEMENTS), "keys": json.dumps(KEYS),
                      "max": json.dumps(SMOOTH_MAX),
                      "sites": json.dumps({label: site for site, label in site_labels.items()}),
                      "log": json.dumps(LOG), "smooth": json.dumps(SMOOTH),
                      "site": json.dumps(SITE)}


def bridge(site_labels: dict[str, str]) -> None:
    """Draw the bridge (once per page; drawn again, it only re-reads the widgets)."""
    st.html(script(site_labels), unsafe_allow_javascript=True)
