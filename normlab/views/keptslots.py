"""The Compare page's chart tabs kept drawn in both layouts: a tab switch or a layout
toggle shows charts already in the page instead of waiting for the server to send them
and the browser to draw them (0.65–1.4 s while 9 runs train on a 2-core machine).

Each chart tab is two *slots* of the page, one per layout (overlay, side by side). The
slot shown is built at every rerun of the view and at each live poll (the page polls only
it: :mod:`normlab.ui.live`). A hidden slot is built once (at the first open, or at the
view's rerun after the first curve), then sent again as it was last built: the same
bytes, so Streamlit's browser keeps its drawing and its message cache does not even
resend them. The page shows or hides slots at once when the tab or the layout changes
(:mod:`normlab.ui.viewbridge`), with the log scale, smoothing and overlaid site the
browser applies; the rerun that follows builds the slot now shown, with its newest rows
and what the server draws of it (the seed band, presenter mode, the site side by side).

A hidden slot is never built again while hidden, even out of date (the runs have moved
on or ended, presenter mode or the band changed): drawn anew, each hidden chart's embed
holds the browser's main thread 0.5–2.5 s (the quick start's Activations, ~4.5 MB), and
rebuilding them all at one rerun (the first tab switch after presenter mode was toggled)
held it 5.4–6.6 s (BENCHMARKS.md, session 13). Rows given to hidden charts at every poll
also grew the browser's memory by ~8 MB/s (session 12). So a slot shown out of date is
drawn as it was for the second or two its rerun takes, then replaced.

:class:`KeptSlots` decides, per rerun, which slots are built and which are sent as kept;
it holds no Streamlit and is tested on its own (``tests/test_keptslots.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from normlab.views.urlstate import View, tab_slug

LAYOUTS = ("overlay", "side")
SLOT_PREFIX = "nl-slot-"  # a slot's container key, + its name (the bridge's CSS reads it)
SLOTS_KEY = "nl-slots"  # the key of the container of every slot


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


@dataclass
class Kept:
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

    def plan(self, owner: str, groups: list[str], shown: Slot | None,
             layout: str, training: bool) -> list[tuple[Slot, str]]:
        """Per slot, in drawing order (:meth:`order`): ``"build"`` (the one shown; a hidden
        one not built yet, or only as a placeholder), ``"keep"`` (sent as last built, out of
        date or not: built again when shown) or ``"skip"`` (not built yet, while runs train
        and the shown slot has not drawn its first rows: the hidden ones wait, so the
        browser draws the first curve before them — :meth:`catch_up`). Kept slots of
        another ``owner`` (comparison) are dropped first."""
        if owner != self.owner:
            self.owner, self.kept = owner, {}
        self.shown = shown
        before = self.kept.get(shown) if shown else None
        defer = training and shown is not None and not (before and before.final)
        self.deferred = False
        out = []
        for slot in self.order(groups, shown, layout):
            kept = self.kept.get(slot)
            if slot == shown:
                out.append((slot, "build"))
            elif kept is not None and kept.final:
                out.append((slot, "keep"))
            elif defer:
                self.deferred = True
                out.append((slot, "skip"))
            else:
                out.append((slot, "build"))
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

    def built(self, slot: Slot, sig: Any, body: Any, final: bool = True) -> None:
        """Record what was drawn in ``slot`` from the runs' state ``sig`` (``final``
        False: a placeholder, built again at the next rerun that may)."""
        self.kept[slot] = Kept(sig, body, final)

    def body(self, slot: Slot) -> Any:
        return self.kept[slot].body


def slot_view(view: View, layout: str) -> View:
    """``view`` as drawn in a slot of ``layout``."""
    return dataclasses.replace(view, layout=layout)
