"""The Compare page's form, URL and shown comparison agree (issue 16): a fresh page shows
the newest comparison with its own setup in the form, the URL then holds just what
reproduces the view (the comparison, the view options, the tab), an edited form is a
visibly new setup whose fields the URL carries, and every written URL, opened fresh,
gives the same page back."""
from __future__ import annotations

from test_pages import (METHODS, TINY, charts, compare, fill, ok, store, texts,  # noqa: F401
                        trained, trained_file)

from normlab.views.compareview import CHART_GROUPS

SHOWN = "The form shows the setup of the comparison shown"


def params(at) -> dict[str, str]:
    """The page's query parameters as plain strings."""
    return {k: v[-1] if isinstance(v, list) else v for k, v in at.query_params.items()}


def form(at) -> tuple:
    return (at.number_input(key="cfg_steps").value, at.number_input(key="cfg_lr").value,
            list(at.multiselect(key="cfg_methods").value), at.text_input(key="cfg_seeds").value)


def test_a_fresh_page_shows_the_newest_comparison_with_its_setup(trained):
    store, cid, _ = trained
    at = ok(compare())
    assert at.selectbox(key="_pick").value == cid
    assert form(at) == (TINY.steps, TINY.lr, list(METHODS), "0, 1")
    assert params(at) == {"comparison": cid}  # no setup it was not run with
    assert SHOWN in texts(at) and "New setup" not in texts(at)
    again = ok(compare(**params(at)))  # the link, opened fresh, gives the same page
    assert again.selectbox(key="_pick").value == cid and form(again) == form(at)


def test_an_edited_form_is_a_new_setup_and_the_link_carries_it(trained):
    store, cid, _ = trained
    at = ok(compare())
    at.number_input(key="cfg_steps").set_value(70)
    at = ok(at.run())
    assert f"differs from the comparison shown ({cid}) in steps" in texts(at)
    link = params(at)
    assert link["comparison"] == cid and link["steps"] == "70"
    assert link["methods"] == ",".join(METHODS) and link["seeds"] == "0,1"
    again = ok(compare(**link))
    assert again.selectbox(key="_pick").value == cid
    assert form(again) == (70, TINY.lr, list(METHODS), "0, 1")
    assert "New setup" in texts(again)
    next(b for b in again.button if b.label == "Back to the shown comparison's setup").click()
    again = ok(again.run())
    assert form(again)[0] == TINY.steps and params(again) == {"comparison": cid}
    assert SHOWN in texts(again)


def test_picking_another_comparison_puts_its_setup_in_the_form(trained):
    store, cid, _ = trained
    other = TINY.replace(steps=20, lr=0.05)
    newer, _ = fill(store, other, ("none",), (3,), train_first=0)
    at = ok(compare())
    assert at.selectbox(key="_pick").value == newer  # the newest
    assert form(at) == (20, 0.05, ["none"], "3") and params(at) == {"comparison": newer}
    at.selectbox(key="_pick").set_value(cid)
    at = ok(at.run())
    assert form(at) == (TINY.steps, TINY.lr, list(METHODS), "0, 1")
    assert params(at) == {"comparison": cid}


def test_the_selected_tab_is_in_the_link(trained):
    store, cid, _ = trained
    at = ok(compare(comparison=cid))
    assert "tab" not in params(at)  # the first tab
    at.session_state["chart_group"] = "Gradients"
    at = ok(at.run())
    assert params(at) == {"comparison": cid, "tab": "gradients"}
    again = ok(compare(**params(at)))
    assert again.session_state["chart_group"] == "Gradients"
    assert len(charts(again)) == len(CHART_GROUPS["Gradients"])
    assert params(again) == {"comparison": cid, "tab": "gradients"}
    bad = ok(compare(comparison=cid, tab="nope"))
    assert "The link's tab 'nope' is not one of loss-accuracy, gradients" in texts(bad)
    assert "tab" not in params(bad)
