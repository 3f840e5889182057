"""normlab.views.urlstate: setup ⇄ query parameters. Round trips are exact; garbage is reported
field by field and replaced by defaults, never raised."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from normlab.views import urlstate
from normlab.training.config import ACTIVATIONS, INITS, MODELS, OPTIMIZERS, RunConfig
from normlab.views.palette import METHOD_ORDER
from normlab.methods.registry import norms_for
from normlab.views.urlstate import FORM_FIELDS, View, decode, encode


def test_empty_link_is_the_default_setup():
    state = decode({})
    assert state.config == RunConfig()
    assert state.methods == tuple(norms_for("mlp"))
    assert state.seeds == (0,)
    assert state.comparison is None and state.runs == ()
    assert state.view == View()
    assert state.problems == {} and state.given == frozenset()


def test_round_trip_of_a_full_setup():
    cfg = RunConfig(dataset="mnist1d", model="cnn", depth=2, width=16, activation="relu",
                    init="kaiming", init_scale=0.5, optimizer="adam", lr=0.003, batch_size=32,
                    steps=250, record_interval=5, eval_interval=50)
    view = View(layout="side", log=False, smooth=0.6, band="std", site="pre_norm",
                present=True)
    params = encode(cfg, ["instance", "batch"], [3, 1], "c1234abcd", view)
    assert all(isinstance(v, str) for v in params.values())
    state = decode(params)
    assert state.config == cfg
    assert state.methods == ("instance", "batch")  # the order given is kept
    assert state.seeds == (3, 1)
    assert state.comparison == "c1234abcd"
    assert state.view == view
    assert state.problems == {}
    assert state.given == frozenset((*FORM_FIELDS, "methods", "seeds"))


def test_every_form_field_is_written_but_default_view_options_are_not():
    params = encode(RunConfig(), ["batch"], [0])
    assert set(params) == {*FORM_FIELDS, "methods", "seeds"}
    assert params["lr"] == "0.1" and params["steps"] == "1000"


def test_runs_are_written_only_without_a_comparison():
    assert encode(RunConfig(), ["batch"], [0], None, View(), ["r1", "r2"])["runs"] == "r1,r2"
    params = encode(RunConfig(), ["batch"], [0], "c1", View(), ["r1"])
    assert params["comparison"] == "c1" and "runs" not in params
    assert decode({"runs": "r1, r2,,r1"}).runs == ("r1", "r2")


@pytest.mark.parametrize("name, raw, fragment", [
    ("lr", "abc", "'abc' is not a number"),
    ("lr", "-1", "outside"),
    ("lr", "nan", "outside"),
    ("lr", "inf", "outside"),
    ("depth", "0", "outside 1..64"),
    ("depth", "2.5", "not a whole number"),
    ("width", "", "not a whole number"),
    ("steps", "1e9", "not a whole number"),
    ("activation", "swish", "not one of sigmoid"),
    ("model", "transformer", "not one of mlp, cnn"),
    ("dataset", "imagenet", "unknown"),
    ("dataset", "csv:", "unknown"),
])
def test_a_bad_field_is_reported_by_name_and_falls_back(name, raw, fragment):
    state = decode({name: raw, "steps": "300"} if name != "steps" else {name: raw})
    assert fragment in state.problems[name]
    assert repr(raw) in state.problems[name]  # the message names the value
    assert getattr(state.config, name) == getattr(RunConfig(), name)
    if name != "steps":
        assert state.config.steps == 300  # the good fields are still used


def test_file_datasets_pass_through():
    assert decode({"dataset": "csv:/data/x.csv"}).config.dataset == "csv:/data/x.csv"
    assert decode({"dataset": "idx:/data/mnist"}).problems == {}


def test_methods_and_seeds_garbage():
    state = decode({"methods": "batch,,bogus,layer,batch", "seeds": "2, x, -1, 2, 7"})
    assert state.methods == ("batch", "layer")
    assert "'bogus'" in state.problems["methods"]
    assert state.seeds == (2, 7)
    assert "'x'" in state.problems["seeds"] and "'-1'" in state.problems["seeds"]
    none = decode({"methods": "???", "seeds": "", "model": "cnn"})
    assert none.methods == tuple(norms_for("cnn")) and "methods" in none.problems
    assert none.seeds == (0,) and "seeds" in none.problems
    many = decode({"seeds": ",".join(map(str, range(30)))})
    assert len(many.seeds) == urlstate.MAX_SEEDS and "at most" in many.problems["seeds"]


def test_methods_not_applying_to_the_model_are_kept_for_the_form_to_explain():
    assert decode({"methods": "instance", "model": "mlp"}).methods == ("instance",)


def test_view_garbage_is_ignored_with_a_message():
    state = decode({"layout": "grid", "log": "maybe", "smooth": "2", "band": "iqr",
                    "site": "inside", "present": "yes"})
    assert state.view == View(present=True)
    assert set(state.problems) == {"layout", "log", "smooth", "band", "site"}


@pytest.mark.parametrize("raw", ["c1<script>", "", "x" * 100, "a b", "c1;drop"])
def test_malformed_comparison_ids_are_reported(raw):
    state = decode({"comparison": raw})
    assert state.comparison is None and "comparison" in state.problems


def test_list_values_use_the_last_one():
    assert decode({"lr": ["0.5", "0.2"]}).config.lr == 0.2


def test_from_comparison_record():
    base = RunConfig(lr=0.05, steps=200).to_dict()
    record = {"id": "cabc", "base": base, "grid": {"norm": ["batch", "none"], "seed": [0, 1]}}
    state = urlstate.from_comparison(record)
    assert state.config == RunConfig(lr=0.05, steps=200)
    assert state.methods == ("batch", "none") and state.seeds == (0, 1)
    assert state.comparison == "cabc" and state.problems == {}
    odd = urlstate.from_comparison({"id": "c", "base": {"nonsense": 1},
                                    "grid": {"lr": [0.1, 0.2]}})
    assert odd.config == RunConfig() and {"comparison", "grid"} <= set(odd.problems)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*FORM_FIELDS, "methods", "seeds", "comparison",
                                        "runs", "layout", "log", "smooth", "band", "site",
                                        "present", "tab", "other"]),
                       st.one_of(st.text(max_size=30), st.lists(st.text(max_size=10)))))
@example({"seeds": "⒈"})  # a Unicode digit that int() refuses (found by hypothesis)
def test_decode_never_raises_and_always_gives_a_usable_state(params):
    state = decode(params)
    assert state.config.model in MODELS and state.config.activation in ACTIVATIONS
    assert state.config.init in INITS and state.config.optimizer in OPTIMIZERS
    for name, allowed in FORM_FIELDS.items():
        if not isinstance(allowed[0], str):
            assert allowed[0] <= getattr(state.config, name) <= allowed[1]
    assert state.methods and set(state.methods) <= set(METHOD_ORDER)
    assert state.seeds and all(s >= 0 for s in state.seeds)
    again = decode(encode(state.config, state.methods, state.seeds, state.comparison,
                          state.view, state.runs))
    assert (again.config, again.methods, again.seeds, again.view) == (
        state.config, state.methods, state.seeds, state.view)
    assert again.problems == {}


def test_a_comparison_shown_with_its_own_setup_needs_only_its_id_and_the_tab():
    cfg = RunConfig(steps=40, lr=0.05)
    params = encode(cfg, ["batch"], [0], "c1a2b3c4", View(log=False), setup=False,
                    tab="gradients")
    assert params == {"comparison": "c1a2b3c4", "tab": "gradients", "log": "0"}
    state = decode(params)
    assert (state.comparison, state.tab, state.view.log, state.given) == \
        ("c1a2b3c4", "gradients", False, frozenset())
    # without a comparison the setup is always written, and a tab means nothing
    assert set(encode(cfg, ["batch"], [0], None, setup=False, tab="gradients")) == \
        {*FORM_FIELDS, "methods", "seeds"}


def test_setup_diff_names_the_fields_that_differ():
    record = {"id": "c1", "base": RunConfig(steps=40, lr=0.05).to_dict(),
              "grid": {"norm": ["batch", "none"], "seed": [0, 1]}}
    shown = urlstate.from_comparison(record)
    assert urlstate.setup_diff(shown, RunConfig(steps=40, lr=0.05), ["batch", "none"],
                               [0, 1]) == []
    assert urlstate.setup_diff(shown, RunConfig(steps=50, lr=0.05, width=7), ["none", "batch"],
                               [0]) == ["width", "steps", "methods", "seeds"]


@pytest.mark.parametrize("name,slug", [("Loss & accuracy", "loss-accuracy"),
                                       ("Gradients", "gradients"), ("Sweep", "sweep")])
def test_tab_slugs(name, slug):
    assert urlstate.tab_slug(name) == slug
    assert decode({"tab": slug}).tab == slug


def test_a_malformed_tab_is_reported():
    state = decode({"tab": "<script>"})
    assert state.tab is None and "not a tab name" in state.problems["tab"]
