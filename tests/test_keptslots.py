"""The Compare tabs' kept slots (normlab.views.keptslots): which are built at a rerun and
which are sent as last built, while runs train and once they have ended."""
from __future__ import annotations

import dataclasses

from normlab.views import keptslots as ks
from normlab.views.keptslots import KeptSlots, Slot
from normlab.views.urlstate import View

GROUPS = ["Loss & accuracy", "Gradients", "Activations"]
ALL = len(GROUPS) * len(ks.LAYOUTS)


def _run(kept: KeptSlots, shown, view: View, sig, training: bool,
         owner: str = "c1") -> dict[Slot, str]:
    """One rerun: the plan, and every slot built recorded as the page does."""
    plan = kept.plan(owner, GROUPS, shown, view.layout, training)
    for slot, what in plan:
        if what == "build":
            kept.built(slot, sig, ("body", slot, view, sig))
    return dict(plan)


def test_order_shows_the_open_slot_first_then_its_other_layout_then_the_rest():
    kept = KeptSlots()
    order = kept.order(GROUPS, Slot("Gradients", "side"), "side")
    assert order[:2] == [Slot("Gradients", "side"), Slot("Gradients", "overlay")]
    assert order[2:4] == [Slot("Loss & accuracy", "side"), Slot("Activations", "side")]
    assert sorted(order, key=str) == sorted(ks.slots(GROUPS), key=str) and len(order) == ALL
    assert kept.order(GROUPS, None, "overlay")[0] == Slot("Loss & accuracy", "overlay")
    assert len({s.name for s in ks.slots(GROUPS)}) == ALL  # names tell slots apart
    assert Slot("Loss & accuracy", "side").name == "side-loss-accuracy"


def test_a_finished_comparison_builds_every_slot_once_then_keeps_them():
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    first = _run(kept, shown, view, "done", training=False)
    assert set(first.values()) == {"build"} and len(first) == ALL
    # a tab switch, a layout toggle, a log-scale or smoothing change: only the shown slot
    for other_view, other in ((view, Slot("Gradients", "overlay")),
                              (dataclasses.replace(view, layout="side"),
                               Slot("Gradients", "side")),
                              (dataclasses.replace(view, log=False, smooth=0.6), shown)):
        plan = _run(kept, other, other_view, "done", training=False)
        assert plan[other] == "build"
        assert {what for slot, what in plan.items() if slot != other} == {"keep"}


def test_an_out_of_date_hidden_slot_is_kept_until_it_is_shown():
    """What the server draws of a slot changed (presenter mode, the seed band, the runs
    ended): only the shown slot is built; a hidden one is sent as it was (its drawing
    stays) and built by the rerun that shows it. Rebuilding every hidden slot at once
    held the browser's main thread for seconds."""
    view = View()
    shown, hidden = Slot("Loss & accuracy", "overlay"), Slot("Activations", "side")
    for changed, sig in ((dataclasses.replace(view, present=True), "done"),
                         (dataclasses.replace(view, band="std"), "done"),
                         (view, "ended")):
        kept = KeptSlots()
        _run(kept, shown, view, "done", training=False)
        before = kept.body(hidden)
        plan = _run(kept, shown, changed, sig, training=False)
        assert plan[shown] == "build" and kept.body(shown) == ("body", shown, changed, sig)
        assert {w for s, w in plan.items() if s != shown} == {"keep"}
        assert kept.body(hidden) == before  # the same body: the browser keeps its drawing
        side = dataclasses.replace(changed, layout="side")
        assert _run(kept, hidden, side, sig, training=False)[hidden] == "build"
        assert kept.body(hidden) == ("body", hidden, side, sig)


def test_while_training_hidden_slots_are_built_once_then_kept():
    """While runs train, the hidden slots are built at the view's rerun, then sent as
    they are: the rerun that shows one brings its newest rows (hidden charts given rows
    at each poll made the browser's memory grow)."""
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    assert set(_run(kept, shown, view, 0, training=True).values()) == {"build", "skip"}
    assert set(_run(kept, shown, view, 1, training=True).values()) == {"build"}
    for sig in range(2, 6):  # a toggle between polls: only the shown slot is built
        plan = _run(kept, shown, dataclasses.replace(view, log=sig % 2 == 0), sig,
                    training=True)
        assert plan[shown] == "build"
        assert {w for s, w in plan.items() if s != shown} == {"keep"}
    # shown again, a slot is built with the newest rows; the others keep theirs
    gradients = Slot("Gradients", "overlay")
    assert _run(kept, gradients, view, 6, training=True)[gradients] == "build"
    assert kept.kept[gradients].sig == 6 and kept.kept[shown].sig == 5
    plan = _run(kept, gradients, view, "ended", training=False)  # the runs have ended
    assert plan[gradients] == "build" and kept.kept[shown].sig == 5


def test_a_placeholder_is_built_again_and_another_comparison_starts_afresh():
    kept, view = KeptSlots(), View()
    shown, hidden = Slot("Loss & accuracy", "overlay"), Slot("Gradients", "overlay")
    _run(kept, shown, view, 0, training=False)
    kept.built(hidden, 0, ("info", "waiting"), final=False)
    assert dict(kept.plan("c1", GROUPS, shown, "overlay", False))[hidden] == "build"
    plan = dict(kept.plan("c2", GROUPS, shown, "overlay", False))
    assert set(plan.values()) == {"build"} and kept.owner == "c2" and not kept.kept


def test_before_the_first_curve_the_hidden_slots_wait_for_it():
    """While runs train, a plan whose shown slot has no rows yet (a placeholder) leaves
    the hidden slots for later, so the browser draws the first curve before them; once
    the shown slot has rows, the page is asked to rerun (catch_up) and builds them."""
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    plan = kept.plan("c1", GROUPS, shown, "overlay", training=True)
    assert plan[0] == (shown, "build") and {w for _, w in plan[1:]} == {"skip"}
    kept.built(shown, 0, ("info", "waiting"), final=False)
    assert kept.deferred and not kept.catch_up()  # no rows shown yet: nothing to catch up
    plan = dict(kept.plan("c1", GROUPS, shown, "overlay", training=True))
    assert set(plan.values()) == {"build", "skip"} and plan[shown] == "build"
    kept.built(shown, 1, ("chart", "first rows"))
    assert kept.catch_up()  # the first curve is drawn: rerun (once: the rerun's own
    assert not kept.catch_up()  # check, before its plan, says no)
    plan = _run(kept, shown, view, 2, training=True)
    assert set(plan.values()) == {"build"} and not kept.deferred and not kept.catch_up()
    # a finished comparison builds everything at once
    fresh = KeptSlots()
    assert set(_run(fresh, shown, view, "done", training=False).values()) == {"build"}
