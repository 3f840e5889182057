"""The Compare page's chart tabs kept drawn in both layouts: a tab switch or a layout
toggle shows charts already in the page instead of waiting for the server to send them
and the browser to draw them (0.65–1.4 s while 9 runs train on a 2-core machine).

Each chart tab is two *slots* of the page, one per layout (overlay, side by side). The
slot shown is built at every rerun of the view and at each live poll (the page polls only
it: :mod:`normlab.ui.live`). The others are sent again as they were last built at a rerun
of the view (a toggle, a tab switch: the same bytes, so Streamlit's browser keeps their
drawing, and its message cache does not even resend them); the page shows or hides them
at once when the tab or the layout changes (:mod:`normlab.ui.viewbridge`), and the rerun
that follows brings the shown slot's newest rows. A hidden slot is built again when what
the server draws of it changed (the seed band, presenter mode, the activation site side
by side: :func:`slot_key`; the log scale, smoothing and overlaid site are applied in the
browser), and once the runs have ended. While runs train, a hidden slot keeps the rows it
had when it was last shown (or first built): hidden charts given newer rows at the live
polls grew the browser's memory by ~8 MB/s (BENCHMARKS.md, session 12), so the rerun
that shows a slot brings them (within ~1–2 s of the switch while 9 runs train).

:class:`KeptSlots` decides, per rerun, which slots are built and which are sent as kept;
it holds no Streamlit and is tested on its own (``tests/test_keptslots.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from normlab.views.urlstate import View, tab_slug

LAYOUTS = ("overlay", "side")


@dataclass(frozen=True)
class Slot:
    """One chart tab in one layout: a container of the page."""

    group: str
    layout: str

    @property
    def name(self) -> str:
        """Its name in the page (the container's key, the bound elements' suffix)."""
        return f"{self.layout}-{tab_slug(self.group)}"


def slots(groups: list[str]) -> list[Slot]:
    """Every slot of the chart tabs ``groups``."""
    return [Slot(g, layout) for g in groups for layout in LAYOUTS]


def slot_key(view: View, layout: str) -> tuple:
    """What the server draws of a slot in ``layout`` for ``view``: a kept slot whose key
    differs is out of date. The log scale and the smoothing are applied in the browser
    (the smoothing's hover values follow at the rerun that shows the slot), and so is the
    activation site when overlaid (:func:`normlab.views.compareview.browser_site`)."""
    return (layout, view.band, view.site if layout == "side" else None, view.present)


@dataclass
class Kept:
    key: tuple  # slot_key it was built for
    sig: Any  # the runs' state it was built from
    body: Any  # what the page draws in it (opaque here)
    final: bool = True  # False: a placeholder (e.g. "waiting for the first measurements")


class KeptSlots:
    """The slots of one comparison's chart tabs, last built (one per browser session)."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.kept: dict[Slot, Kept] = {}
        self.deferred = False  # the last plan left hidden slots to build later
        self.shown: Slot | None = None  # the slot shown at the last plan

    def order(self, groups: list[str], shown: Slot | None, layout: str) -> list[Slot]:
        """Every slot, the one ``shown`` first (None: a tab that is not a chart tab is
        open), then the other layout of its tab, then the other tabs in ``layout``, then
        in the other."""
        other = [lay for lay in LAYOUTS if lay != layout]
        out = [shown] if shown else []
        if shown:
            out += [Slot(shown.group, lay) for lay in other]
        out += [Slot(g, lay) for lay in (layout, *other) for g in groups]
        seen: list[Slot] = []
        for slot in out:
            if slot not in seen:
                seen.append(slot)
        return seen

    def plan(self, owner: str, groups: list[str], shown: Slot | None, view: View, sig: Any,
             training: bool, page_run: bool = False) -> list[tuple[Slot, str]]:
        """Per slot, in drawing order (:meth:`order`): ``"build"`` (the one shown; a hidden
        one out of date or not built yet; a finished comparison's when its runs changed,
        e.g. ended), ``"keep"`` (sent as last built) or ``"skip"`` (while runs train and
        the shown slot has not drawn its first rows yet: the hidden ones wait, so the
        browser draws the first curve before them — :meth:`catch_up`; and in a
        ``page_run``, a rerun of the whole page such as presenter mode toggled, the hidden
        slots built before but out of date: Streamlit shows the page's old elements beside
        the new ones until such a run ends, and rebuilding them kept the page doubled for
        ~7 s instead of ~1.3 s; they are built at the view's next rerun). Kept slots of
        another ``owner`` (comparison) are dropped first."""
        if owner != self.owner:
            self.owner, self.kept = owner, {}
        self.shown = shown
        before = self.kept.get(shown) if shown else None
        defer = training and shown is not None and not (before and before.final)
        self.deferred = False
        out = []
        for slot in self.order(groups, shown, view.layout):
            kept = self.kept.get(slot)
            if slot == shown:
                out.append((slot, "build"))
                continue
            current = (kept is not None and kept.final
                       and kept.key == slot_key(view, slot.layout))
            if not current and page_run and kept is not None and kept.final:
                out.append((slot, "skip"))
            elif not current and defer:
                self.deferred = True
                out.append((slot, "skip"))
            elif not current:
                out.append((slot, "build"))
            elif kept.sig != sig and not training:  # e.g. the runs have just ended
                out.append((slot, "build"))
            else:
                out.append((slot, "keep"))
        return out

    def catch_up(self) -> bool:
        """Whether the page should rerun its view now to build the hidden slots the last
        plan left: the shown slot has drawn its rows since (then the next plan builds
        them). Asked once: the rerun's own first check says no."""
        kept = self.kept.get(self.shown) if self.shown else None
        if self.deferred and kept is not None and kept.final:
            self.deferred = False
            return True
        return False

    def built(self, slot: Slot, view: View, sig: Any, body: Any,
              final: bool = True) -> None:
        """Record what was drawn in ``slot`` for ``view`` and the runs' state ``sig``
        (``final`` False: a placeholder, built again at the next rerun that may)."""
        self.kept[slot] = Kept(slot_key(view, slot.layout), sig, body, final)

    def body(self, slot: Slot) -> Any:
        return self.kept[slot].body


def slot_view(view: View, layout: str) -> View:
    """``view`` as drawn in a slot of ``layout``."""
    return dataclasses.replace(view, layout=layout)
