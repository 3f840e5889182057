"""Labs 5 and 6: how much learning rate, initialization and batch size a method tolerates.

Both labs are sweeps, read through the sweep view (:mod:`normlab.views.sweep`): a final
validation metric against the swept field, one line per method, seeds as a band.

* Lab 5, "Learning rate and initialization" — :data:`LR_LAB`: presets sweeping the
  learning rate (0.001 to 10, 9 values on a log grid) and the init scale (0.01 to 10);
  :func:`tolerance` / :func:`tolerance_readout`: per method, the widest contiguous range of
  swept values whose mean accuracy reaches ≥ 90% of the best accuracy any method reached
  (a value where a seed diverged does not count), in decades.
* Lab 6, "Batch size" — :data:`BATCH_LAB`: batch sizes 2 to 128 with the learning rate
  scaled linearly (``lr = lr₀ · B / B₀``) and the number of examples seen held fixed
  (``steps = examples / B``), :func:`scaled_for_batch`; the runs also evaluate in training
  mode (``eval_train_mode``), since BatchNorm's small-batch gap is an eval-statistics
  effect; :func:`batch_readout` compares the error at the smallest and largest batch.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd

from normlab.training.config import RunConfig
from normlab.views.labs.scaffold import Lab, Preset
from normlab.views.sweep import aggregate

SHARE = 0.9  # "reaches 90% of the best accuracy"


def tolerance(frame: pd.DataFrame, share: float = SHARE) -> tuple[pd.DataFrame, float]:
    """Per series of a sweep frame (:func:`normlab.views.sweep.sweep_frame`, an accuracy):
    the widest contiguous run of swept values whose mean reaches ``share`` × the best mean
    of any series, with no diverged seed there. Returns (table, best): columns series,
    lo, hi (None when no value qualifies), decades (log10 hi/lo), n_values."""
    agg = aggregate(frame)
    finished = agg[agg["n"] > 0]
    best = float(finished["mean"].max()) if len(finished) else math.nan
    rows = []
    for series, g in agg.groupby("series", sort=False):
        g = g.sort_values("x")
        ok = ((g["n"] > 0) & (g["n_diverged"] == 0) & (g["mean"] >= share * best)).to_numpy()
        xs = g["x"].to_numpy(dtype=float)
        run, best_run = [], []
        for x, good in zip(xs, ok):
            run = run + [x] if good else []
            if len(run) > len(best_run) or (len(run) == len(best_run) and run and
                                            run[-1] / run[0] > best_run[-1] / best_run[0]):
                best_run = list(run)
        lo, hi = (best_run[0], best_run[-1]) if best_run else (None, None)
        decades = (math.log10(hi / lo) if lo and lo > 0 else 0.0) if best_run else None
        rows.append({"series": series, "lo": lo, "hi": hi, "decades": decades,
                     "n_values": len(best_run)})
    return pd.DataFrame(rows), best


def tolerance_readout(frame: pd.DataFrame, field: str, share: float = SHARE) -> str:
    """One line: each method's range of ``field`` reaching ``share`` of the best accuracy."""
    table, best = tolerance(frame, share)
    if not math.isfinite(best):
        return "No run has finished yet."
    parts = []
    for r in table.itertuples():
        if r.lo is None or pd.isna(r.lo):  # None becomes NaN beside other series' floats
            parts.append(f"{r.series} none")
        elif r.lo == r.hi:
            parts.append(f"{r.series} only {r.lo:g}")
        else:
            parts.append(f"{r.series} {r.lo:g}–{r.hi:g} ({r.decades:.1f} decades)")
    pending = int(frame["pending"].sum())
    tail = f" ({pending} runs still to finish)" if pending else ""
    return (f"{field} range reaching ≥ {share:.0%} of the best accuracy ({best:.3f}): "
            + "; ".join(parts) + "." + tail)


def batch_readout(eval_frame: pd.DataFrame, train_frame: pd.DataFrame | None = None) -> str:
    """One line: validation error (1 − accuracy, mean over seeds) at the smallest and the
    largest batch per method, in eval mode and, if measured, in training mode."""
    def errors(frame):
        agg = aggregate(frame)
        agg = agg[agg["n"] > 0]
        return {s: g.sort_values("x") for s, g in agg.groupby("series", sort=False)}

    ev = errors(eval_frame)
    if not ev:
        return "No run has finished yet."
    tr = errors(train_frame) if train_frame is not None and len(train_frame) else {}
    parts = []
    for series, g in ev.items():
        lo, hi = g.iloc[0], g.iloc[-1]
        text = (f"{series} {1 - lo['mean']:.2f} at B={lo['x']:g} → {1 - hi['mean']:.2f} at "
                f"B={hi['x']:g}")
        t = tr.get(series)
        if t is not None and len(t) and t.iloc[0]["x"] == lo["x"]:
            text += f" (training mode {1 - t.iloc[0]['mean']:.2f} at B={lo['x']:g})"
        parts.append(text)
    pending = int(eval_frame["pending"].sum())
    tail = f" ({pending} runs still to finish)" if pending else ""
    return "Validation error, eval mode: " + "; ".join(parts) + "." + tail


# --------------------------------------------------------------------------- presets
SWEEP_BASE = RunConfig(dataset="digits", model="mlp", depth=3, width=100,
                       activation="sigmoid", optimizer="sgd", lr=0.1, batch_size=64,
                       steps=500, eval_interval=50, record_interval=50)
LR_VALUES = tuple(float(f"{v:.3g}") for v in np.geomspace(0.001, 10, 9))
INIT_VALUES = tuple(float(f"{v:.3g}") for v in np.geomspace(0.01, 10, 7))
LR_METHODS = ("none", "batch", "layer", "weight")

LR_LAB = Lab(
    key="lr_init", title="Learning rate and initialization",
    claim=("Normalization lets a network train at learning rates and initial weight scales "
           "that stall or break the same network without it. A normalized layer undoes a "
           "bad weight scale at its output, and its gradient shrinks as its weights grow, "
           "so a too-large step corrects itself."),
    look_for=("How wide each method's plateau of high accuracy is along the learning-rate "
              "axis (the readout measures it in decades), where runs diverge (crosses at "
              "the bottom), and how flat each line is against the init scale."),
    presets=(
        Preset("lr", "Learning-rate sweep (0.001 to 10)", SWEEP_BASE,
               {"norm": LR_METHODS, "lr": LR_VALUES, "seed": (0, 1)}),
        Preset("init", "Init-scale sweep (0.01 to 10)", SWEEP_BASE,
               {"norm": LR_METHODS, "init_scale": INIT_VALUES, "seed": (0, 1)}),
    ),
)

BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128)
BATCH_BASE = RunConfig(dataset="digits", model="mlp", depth=3, width=100,
                       activation="relu", optimizer="sgd", lr=0.1, batch_size=32,
                       steps=200, eval_interval=20, record_interval=10,
                       eval_train_mode=True)
EXAMPLES = 3200  # examples seen by every run of the batch-size sweep (~2.2 epochs of digits)


def scaled_for_batch(cfg: RunConfig, base: RunConfig = BATCH_BASE,
                     examples: int = EXAMPLES) -> dict:  # base: lr₀ and B₀
    """The fields tied to the batch size: lr scaled linearly from ``base`` (lr₀ at B₀),
    steps = ``examples`` / B, 5 evaluations and ~10 records per run (a training-mode
    evaluation at batch 2 is 180 forward passes)."""
    steps = max(1, examples // cfg.batch_size)
    return {"lr": float(f"{base.lr * cfg.batch_size / base.batch_size:.4g}"),
            "steps": steps, "eval_interval": max(1, steps // 5),
            "record_interval": max(1, steps // 10)}


BATCH_LAB = Lab(
    key="batch_size", title="Batch size",
    claim=("BatchNorm normalizes with statistics of the mini-batch, so with small batches "
           "those statistics are noisy: the network trains worse, and the running averages "
           "it uses at evaluation are estimated from them. GroupNorm and LayerNorm normalize "
           "each example on its own and do not depend on the batch (Wu & He 2018, Fig. 1)."),
    look_for=("BatchNorm's validation error rising as the batch shrinks while GroupNorm's "
              "and LayerNorm's stay flat. Switch the metric to *training mode* to see "
              "BatchNorm evaluated as it trained, with the statistics of each batch of B "
              "validation examples."),
    presets=(
        Preset("batch", "Batch size 2 to 128 (lr ∝ batch, examples fixed)", BATCH_BASE,
               {"norm": ("batch", "group", "layer", "none"), "batch_size": BATCH_SIZES,
                "seed": (0, 1, 2)},
               tied=partial(scaled_for_batch, examples=EXAMPLES),
               tied_note=(f"lr = {BATCH_BASE.lr:g} × B / {BATCH_BASE.batch_size}; steps = "
                          f"{EXAMPLES} / B (every run sees {EXAMPLES} examples)")),
    ),
)
