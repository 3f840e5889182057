"""The Compare page's layout, log-scale toggle, smoothing slider and activation site,
mirrored to its charts in the browser: a change redraws (or shows) the charts at once, not
after the server's rerun.

The live charts read three options from Vega-Lite params bound to hidden elements of the
page (:mod:`normlab.views.viewparams`), and each chart tab is kept in the page in both
layouts, one container ("slot") each (:mod:`normlab.views.keptslots`). :func:`bridge`
draws a script that

* creates a hidden element per option and slot, whose ``value`` reads the Streamlit
  widget's state in the page (the toggle's checkbox, the slider's range input, the
  selectbox's label; found by their keys' ``st-key-…`` classes), or when a widget cannot
  be read (not drawn, another Streamlit version's markup) the server's value, which the
  script carries (so the charts' specs do not change with the options);
* whenever that state changes (a click, a key, a drag), sends an ``input`` event to the
  elements of the slots shown, which Vega answers by redrawing their charts; a slot
  hidden meanwhile gets its events when it is shown (a tab switch, a layout toggle), so
  hidden charts do not redraw at each toggle;
* shows the slot of the selected tab and layout and hides the others (a CSS rule it
  rewrites when they change; the slots sit under the tab bar, not in the tabs' panels).

The server's rerun that the widget causes as always then sends the same state, and the
shown slot's newest rows. The browser test (``tests/test_browser.py``) checks that each
toggle and a tab switch redraw or show the charts with the server's messages held back.
Streamlit helpers: imported by pages only (``import normlab`` loads no Streamlit).
"""
from __future__ import annotations

import json

import streamlit as st

from normlab.views.compareview import CHART_GROUPS
from normlab.views.keptslots import SLOT_PREFIX, SLOTS_KEY, slots
from normlab.ui.common import TAB
from normlab.views.urlstate import SMOOTH_MAX, View, tab_slug
from normlab.views.viewparams import ELEMENTS, LOG, SITE, SMOOTH

KEYS = {LOG: "view_log", SMOOTH: "view_smooth",  # the widgets' keys (normlab.ui.form)
        SITE: "view_site", "layout": "view_layout", "tab": TAB}

_SCRIPT = """<script>(() => {
  const ids = %(ids)s, keys = %(keys)s, max = %(max)s, sites = %(sites)s;
  const slots = %(slots)s, layouts = %(layouts)s, tabs = %(tabs)s, prefix = %(prefix)s;
  window.__normlabServer = %(server)s;  // the server's view: what a widget not read gives
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
    layout: () => { const b = widget('layout', '[role="radio"][aria-checked="true"]');
                    return b ? layouts[b.textContent.trim()] || '' : ''; },
    // the selected tab's slug ('-': a tab without slots, e.g. Explore)
    tab: () => { const t = widget('tab', '[role="tab"][aria-selected="true"]');
                 return t ? tabs[t.textContent.trim()] || '-' : ''; },
  };
  const value = name => read[name]() || window.__normlabServer[name] || '';
  let style = document.getElementById('nl-view-style');
  if (!style) {
    style = document.createElement('style');
    style.id = 'nl-view-style';
    document.head.appendChild(style);
  }
  // every slot hidden but the one of the tab and layout shown
  const showing = () => `${value('layout')}-${value('tab')}`;
  const css = shown => `${%(css)s}[class*="st-key-${prefix}"]:not(.st-key-${prefix}${shown})` +
    '{display: none !important;}';
  if (style.dataset.shown !== showing()) {
    style.dataset.shown = showing(); style.textContent = css(style.dataset.shown);
  }
  for (const slot of slots) for (const name of Object.keys(ids)) {
    const id = `${ids[name]}--${slot}`;
    if (document.getElementById(id)) continue;
    const el = document.createElement('span');
    el.id = id; el.hidden = true;
    // Vega reads .value when it binds and on each event; it may write it back (ignored)
    Object.defineProperty(el, 'value', { get: () => value(name), set: () => {} });
    document.body.appendChild(el);
  }
  if (window.__normlabCheck) { window.__normlabCheck(); return; }
  const last = {}, shown = {};
  // the slot shown (a CSS rule hides the others), and an input event to each
  //   shown slot's element whose value changed, or to all of a slot just shown: a hidden
  //   slot's charts are not redrawn for a change made while they are hidden
  const check = () => {
    const now_shown = showing();
    if (style.dataset.shown !== now_shown) {
      style.dataset.shown = now_shown; style.textContent = css(now_shown);
    }
    const now = {};
    for (const name of Object.keys(ids)) now[name] = value(name);
    for (const slot of slots) {
      const box = document.querySelector(`.st-key-${prefix}${slot}`);
      if (!box || !box.checkVisibility()) { shown[slot] = false; continue; }
      const fresh = !shown[slot];
      shown[slot] = true;
      const was = last[slot] || (last[slot] = {});
      for (const name of Object.keys(ids)) {
        if (!fresh && was[name] === now[name]) continue;
        was[name] = now[name];
        const el = document.getElementById(`${ids[name]}--${slot}`);
        if (el) el.dispatchEvent(new Event('input'));
      }
    }
  };
  window.__normlabCheck = check;
  const soon = () => { setTimeout(check, 0); requestAnimationFrame(check); };
  for (const type of ['click', 'change', 'input', 'keyup', 'pointerup'])
    document.addEventListener(type, soon, true);
  new MutationObserver(check).observe(document.body, {
    subtree: true, attributes: true,
    attributeFilter: ['aria-valuenow', 'aria-valuetext', 'aria-checked', 'aria-expanded',
                      'aria-selected', 'value', 'hidden', 'inert']});
  check();
})();</script>"""

# the slots' container has no gap between them (one is shown)
_CSS = f".st-key-{SLOTS_KEY} {{gap: 0 !important;}}"


def script(site_labels: dict[str, str], layout_labels: dict[str, str], view: View,
           tab: str | None = None) -> str:
    """The bridge's script (see the module docstring); ``site_labels`` / ``layout_labels``:
    the site selectbox's and the layout control's label of each value; ``view`` and
    ``tab`` (the chart tab's name, None: the first): the server's, what the page uses when
    a widget cannot be read."""
    groups = list(CHART_GROUPS)
    server = {LOG: "on" if view.log else "off", SMOOTH: repr(float(view.smooth)),
              SITE: view.site, "layout": view.layout,
              "tab": "-" if tab is not None and tab not in groups
              else tab_slug(tab or groups[0])}
    return _SCRIPT % {"ids": json.dumps(ELEMENTS), "keys": json.dumps(KEYS),
                      "max": json.dumps(SMOOTH_MAX),
                      "sites": json.dumps({label: site for site, label in site_labels.items()}),
                      "slots": json.dumps([s.name for s in slots(groups)]),
                      "prefix": json.dumps(SLOT_PREFIX),
                      "tabs": json.dumps({g: tab_slug(g) for g in groups}),
                      "layouts": json.dumps({label: key for key, label in layout_labels.items()}),
                      "server": json.dumps(server), "css": json.dumps(_CSS),
                      "log": json.dumps(LOG), "smooth": json.dumps(SMOOTH),
                      "site": json.dumps(SITE)}


def bridge(site_labels: dict[str, str], layout_labels: dict[str, str], view: View) -> None:
    """Draw the bridge (once per page; drawn again with another ``view``, it takes the
    server's new values and re-reads the widgets)."""
    st.html(script(site_labels, layout_labels, view, st.session_state.get(TAB)),
            unsafe_allow_javascript=True)
