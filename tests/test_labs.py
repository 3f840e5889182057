"""The labs' computing (normlab.views.labs): the invariance table against Ba et al.'s
published cells and closed-form expectations, the gradient's 1/λ, the readouts against
hand-computed sweeps, the chart builders via to_dict, the presets' configs, and the
opt-in training-mode validation against a direct computation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from normlab.methods.specs import NORM_NAMES
from normlab.runs.comparisons import check
from normlab.training.config import RunConfig
from normlab.training.trainer import Trainer, train
from normlab.views import sweep
from normlab.views.labs import invariance as inv, sensitivity as sens
from normlab.views.labs.scaffold import preset_configs, with_changes


@pytest.fixture(scope="module")
def table():
    return inv.invariance_table()


@pytest.mark.parametrize("method", sorted(inv.PAPER))
def test_invariance_table_agrees_with_the_papers_cells(table, method):
    got = table[table["method"] == method].set_index("transform")["invariant"]
    assert tuple(got[k] for k in inv.TRANSFORMS) == inv.PAPER[method]
    assert table[table["method"] == method]["agrees"].all()


# What the formulas give for the methods the paper does not list (no centring → no
# re-centering invariance; per-example statistics → single-case invariance; ...).
EXPECTED = {
    "none": "NNNNNN", "instance": "YNYYNY", "group": "YYNYNY", "rms": "YNNYNY",
    "cosine": "YNYYNY", "whiten": "YNNYYN",
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_invariance_of_the_other_methods_follows_their_formulas(table, method):
    got = table[table["method"] == method].set_index("transform")["invariant"]
    assert "".join("Y" if got[k] else "N" for k in inv.TRANSFORMS) == EXPECTED[method]


def test_invariant_cells_are_small_and_the_others_are_not(table):
    assert table.loc[table["invariant"], "change"].max() < inv.TOL
    assert table.loc[~table["invariant"], "change"].min() > 100 * inv.TOL  # a clear gap
    assert len(table) == len(NORM_NAMES) * len(inv.TRANSFORMS)


def test_table_display_and_readout(table):
    shown = inv.table_display(table)
    assert list(shown.columns) == list(inv.TRANSFORMS.values()) and len(shown) == 10
    assert shown.loc["LayerNorm", "weight matrix re-centering"].endswith("paper Y")
    assert inv.table_readout(table).startswith("18 of 18 published cells reproduced")
    broken = table.copy()
    i = broken.index[(broken["method"] == "batch") & (broken["transform"] == "x_case")][0]
    broken.loc[i, ["invariant", "agrees"]] = [True, False]
    assert "disagreeing: BatchNorm / single training case re-scaling" in \
        inv.table_readout(broken)
    assert "⚠" in inv.table_display(broken).loc["BatchNorm", "single training case re-scaling"]


def test_gradient_falls_as_one_over_lambda_for_invariant_methods():
    frame = inv.gradient_scaling(["none", "batch", "layer", "weight"])
    s = inv.slopes(frame)
    assert s["none"] == pytest.approx(0, abs=1e-9)
    for m in ("batch", "layer", "weight"):
        assert s[m] == pytest.approx(-1, abs=0.01)
    g = frame[frame["method"] == "weight"].set_index("lam")["grad_norm"]
    assert g[0.1] / g[10.0] == pytest.approx(100, rel=1e-6)  # exactly 1/λ: no eps in WN
    assert inv.gradient_readout(frame).startswith(
        "Fitted log–log slopes — slope −1 (gradient ∝ 1/λ): batch, layer, weight; slope 0: none")
    spec = inv.gradient_chart(frame).to_dict()
    assert spec["layer"][1]["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["layer"][1]["encoding"]["y"]["scale"]["type"] == "log"
    guide = next(iter(spec["datasets"].values()))
    (a, b) = guide
    assert math.log(b["grad_norm"] / a["grad_norm"]) / math.log(b["lam"] / a["lam"]) == \
        pytest.approx(-1)


def _weights_frame():
    rows = []
    for run, method, wd, growth in (("a", "batch", 0.0, 2.0), ("b", "batch", 0.01, 0.5)):
        for step in range(0, 100, 10):
            w = 1.0 * growth ** (step / 90)
            rows += [{"run": run, "step": step, "layer": "hidden1", "site": "param",
                      "metric": "weight_norm", "value": w},
                     {"run": run, "step": step, "layer": "hidden1", "site": "param",
                      "metric": "update_ratio", "value": 0.1 / w ** 2}]
    metrics = pd.DataFrame(rows)
    runs = pd.DataFrame({"id": ["a", "b"], "config": [
        RunConfig(norm="batch", weight_decay=0.0).to_dict(),
        RunConfig(norm="batch", weight_decay=0.01).to_dict()]})
    return inv.weight_frame(metrics, runs)


def test_weight_readout_and_chart_from_a_constructed_frame():
    frame = _weights_frame()
    text = inv.weight_readout(frame, "hidden1")
    # first tenth = step 0 (w = 1), last tenth = step 90 (w = growth): ×2.00 and ×0.25
    assert "batch wd 0: ‖w‖ ×2, ‖Δw‖/‖w‖ ×0.25" in text
    assert "batch wd 0.01: ‖w‖ ×0.5, ‖Δw‖/‖w‖ ×4" in text
    spec = inv.weight_chart(frame, "hidden1").to_dict()
    assert len(spec["hconcat"]) == 2
    assert spec["hconcat"][0]["encoding"]["strokeDash"]["field"] == "decay"
    with pytest.raises(ValueError, match="no weight measurements for layer 'hidden9'"):
        inv.weight_chart(frame, "hidden9")


def _sweep(values: dict[tuple[str, float], list[float]], diverged=()) -> pd.DataFrame:
    rows, finals = [], {}
    for (method, x), accs in values.items():
        for seed, acc in enumerate(accs):
            rid = f"{method}-{x}-{seed}"
            status = "diverged" if (method, x, seed) in diverged else "done"
            rows.append({"id": rid, "status": status, "error": None,
                         "config": RunConfig(norm=method, lr=x, seed=seed).to_dict()})
            finals[rid] = acc
    return sweep.sweep_frame(pd.DataFrame(rows), pd.Series(finals), "lr")


def test_tolerance_is_the_widest_contiguous_run_reaching_90_percent_of_the_best():
    frame = _sweep({
        ("batch", 0.01): [0.80, 0.90], ("batch", 0.1): [0.95, 0.97], ("batch", 1.0): [0.96, 0.96],
        ("batch", 10.0): [0.90, 0.50],
        ("none", 0.01): [0.10, 0.10], ("none", 0.1): [0.90, 0.88], ("none", 1.0): [0.95, 0.95],
        ("none", 10.0): [0.95, 0.95]}, diverged={("none", 10.0, 1)})
    table, best = sens.tolerance(frame)
    assert best == pytest.approx(0.96)  # batch at 0.1 and 1.0: means 0.96
    t = table.set_index("series")
    # 90% of 0.96 = 0.864: batch 0.01 (0.85) misses, 0.1 and 1 reach, 10 (0.70) misses
    assert (t.loc["batch", "lo"], t.loc["batch", "hi"]) == (0.1, 1.0)
    assert t.loc["batch", "decades"] == pytest.approx(1.0)
    # none: 0.1 (0.89) and 1 (0.95) reach; 10 has a diverged seed, so it does not count
    assert (t.loc["none", "lo"], t.loc["none", "hi"]) == (0.1, 1.0)
    text = sens.tolerance_readout(frame, "lr")
    assert text == ("lr range reaching ≥ 90% of the best accuracy (0.960): none 0.1–1 "
                    "(1.0 decades); batch 0.1–1 (1.0 decades).")


def test_batch_readout_reads_both_modes():
    ev = _sweep({("batch", 2.0): [0.6, 0.7], ("batch", 128.0): [0.9, 0.92],
                 ("layer", 2.0): [0.9, 0.9], ("layer", 128.0): [0.91, 0.91]})
    tr = _sweep({("batch", 2.0): [0.85, 0.85], ("batch", 128.0): [0.9, 0.9],
                 ("layer", 2.0): [0.9, 0.9], ("layer", 128.0): [0.91, 0.91]})
    text = sens.batch_readout(ev, tr)
    assert text.startswith("Validation error, eval mode: batch 0.35 at B=2 → 0.09 at B=128 "
                           "(training mode 0.15 at B=2)")
    assert "layer 0.10 at B=2 → 0.09 at B=128" in text


@pytest.mark.parametrize("lab,key", [(inv.LAB, "weights"), (sens.LR_LAB, "lr"),
                                     (sens.LR_LAB, "init"), (sens.BATCH_LAB, "batch")])
def test_presets_are_valid_and_as_described(lab, key):
    preset = lab.preset(key)
    configs = preset_configs(preset)
    check(configs)
    assert len(configs) == len({tuple(sorted(c.to_dict().items())) for c in configs})
    assert len(configs) <= 100


def test_lr_preset_is_the_issues_grid():
    configs = preset_configs(sens.LR_LAB.preset("lr"))
    assert sorted({c.lr for c in configs}) == [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0,
                                               3.16, 10.0]
    assert {c.norm for c in configs} == {"none", "batch", "layer", "weight"}
    assert {(c.steps, c.activation, c.width, c.depth) for c in configs} == {(500, "sigmoid", 100, 3)}


def test_with_changes_and_the_tied_batch_fields():
    preset = with_changes(sens.BATCH_LAB.preset("batch"), {"lr": 0.2},
                          {"batch_size": [4, 64], "seed": [0]})
    configs = preset_configs(preset)
    assert [(c.batch_size, c.lr, c.steps) for c in configs if c.norm == "batch"] == \
        [(4, 0.025, sens.EXAMPLES // 4), (64, 0.4, sens.EXAMPLES // 64)]
    with pytest.raises(ValueError, match="give at least one seed"):
        with_changes(preset, grid={"seed": []})
    with pytest.raises(ValueError, match="no preset 'x'"):
        sens.BATCH_LAB.preset("x")


def test_train_mode_validation_matches_a_direct_computation_and_changes_nothing():
    cfg = RunConfig(steps=30, width=16, depth=2, batch_size=8, eval_interval=15,
                    record_interval=5, norm="batch")
    plain, _ = train(cfg)
    both, _ = train(cfg.replace(eval_train_mode=True))
    a, b = plain.to_frame(), both.to_frame()
    b_same = b[b["site"] != "val_train_mode"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b_same)  # training unchanged
    tm = b[b["site"] == "val_train_mode"]
    assert sorted(tm["step"].unique()) == [0, 15, 30]
    # direct: the trained model in train mode on batches of 8 (last partial batch merged)
    trainer = Trainer(cfg.replace(eval_train_mode=True))
    for _ in trainer.batches(flush_seconds=math.inf):
        pass
    model, x, y = trainer.model, trainer.x_val, trainer.data.y_val
    running = model.hidden1.norm.running_mean.clone()
    loss, acc = trainer._evaluate_train_mode()
    assert torch.equal(model.hidden1.norm.running_mean, running)  # restored
    model.train()
    n = len(y)
    starts = list(range(0, n, 8))
    if n % 8:
        starts.pop()  # the spec: a last partial batch joins the batch before it
    bounds = list(zip(starts, starts[1:] + [n]))
    assert bounds[-1][1] - bounds[-1][0] >= 8
    with torch.no_grad():
        logits = torch.cat([model(x[s:e]) for s, e in bounds])
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    last = tm[tm["step"] == 30].set_index("metric")["value"]
    assert last["acc"] == pytest.approx(acc) and last["loss"] == pytest.approx(loss, rel=1e-6)
