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
    plan = kept.plan(owner, GROUPS, shown, view, sig, training)
    for slot, what in plan:
        if what == "build":
            kept.built(slot, view, sig, ("body", slot, sig))
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


def test_what_the_server_draws_of_a_hidden_slot_makes_it_out_of_date():
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    _run(kept, shown, view, "done", training=False)
    # the seed band and presenter mode: every slot; the site: only side by side (overlaid,
    #   the browser picks the site among every site's rows)
    for changed, stale in ((dataclasses.replace(view, band="std"), ALL - 1),
                           (dataclasses.replace(view, present=True), ALL - 1),
                           (dataclasses.replace(view, site="pre_norm"), len(GROUPS))):
        fresh = KeptSlots()
        _run(fresh, shown, view, "done", training=False)
        plan = _run(fresh, shown, changed, "done", training=False)
        built = [s for s, w in plan.items() if w == "build" and s != shown]
        assert len(built) == stale, (changed, built)
        if changed.site != view.site:
            assert {s.layout for s in built} == {"side"}


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
    # shown again, a slot is built with the newest rows; once the runs end, every slot
    gradients = Slot("Gradients", "overlay")
    assert _run(kept, gradients, view, 6, training=True)[gradients] == "build"
    assert kept.kept[gradients].sig == 6 and kept.kept[shown].sig == 5
    assert set(_run(kept, gradients, view, "ended", training=False).values()) == {"build"}


def test_a_placeholder_is_built_again_and_another_comparison_starts_afresh():
    kept, view = KeptSlots(), View()
    shown, hidden = Slot("Loss & accuracy", "overlay"), Slot("Gradients", "overlay")
    _run(kept, shown, view, 0, training=False)
    kept.built(hidden, view, 0, ("info", "waiting"), final=False)
    assert dict(kept.plan("c1", GROUPS, shown, view, 0, False))[hidden] == "build"
    plan = dict(kept.plan("c2", GROUPS, shown, view, 0, False))
    assert set(plan.values()) == {"build"} and kept.owner == "c2" and not kept.kept


def test_before_the_first_curve_the_hidden_slots_wait_for_it():
    """While runs train, a plan whose shown slot has no rows yet (a placeholder) leaves
    the hidden slots for later, so the browser draws the first curve before them; once
    the shown slot has rows, the page is asked to rerun (catch_up) and builds them."""
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    plan = kept.plan("c1", GROUPS, shown, view, 0, training=True)
    assert plan[0] == (shown, "build") and {w for _, w in plan[1:]} == {"skip"}
    kept.built(shown, view, 0, ("info", "waiting"), final=False)
    assert kept.deferred and not kept.catch_up()  # no rows shown yet: nothing to catch up
    plan = dict(kept.plan("c1", GROUPS, shown, view, 1, training=True))
    assert set(plan.values()) == {"build", "skip"} and plan[shown] == "build"
    kept.built(shown, view, 1, ("chart", "first rows"))
    assert kept.catch_up()  # the first curve is drawn: rerun (once: the rerun's own
    assert not kept.catch_up()  # check, before its plan, says no)
    plan = _run(kept, shown, view, 2, training=True)
    assert set(plan.values()) == {"build"} and not kept.deferred and not kept.catch_up()
    # a finished comparison builds everything at once
    fresh = KeptSlots()
    assert set(_run(fresh, shown, view, "done", training=False).values()) == {"build"}


def test_a_rerun_of_the_whole_page_leaves_out_of_date_hidden_slots_to_the_next():
    """Presenter mode (a rerun of the whole page) makes every hidden slot out of date: they
    are left out of that run (Streamlit shows the old page beside the new one until it
    ends) and built at the view's next rerun; slots never built are built at once."""
    kept, view = KeptSlots(), View()
    shown = Slot("Loss & accuracy", "overlay")
    assert set(_run(kept, shown, view, "done", training=False).values()) == {"build"}
    present = dataclasses.replace(view, present=True)
    plan = kept.plan("c1", GROUPS, shown, present, "done", False, page_run=True)
    assert plan[0] == (shown, "build") and {w for _, w in plan[1:]} == {"skip"}
    kept.built(shown, present, "done", "body")
    assert set(_run(kept, shown, present, "done", training=False).values()) == {"build"}
    hidden = Slot("Gradients", "side")  # a placeholder is built again, page run or not
    kept.built(hidden, view, "done", ("info", "waiting"), final=False)
    assert dict(kept.plan("c1", GROUPS, shown, present, "done", False,
                          page_run=True))[hidden] == "build"
    fresh = KeptSlots()  # a first open is a page run too: everything is built
    assert set(dict(fresh.plan("c1", GROUPS, shown, view, "done", False,
                               page_run=True)).values()) == {"build"}
