"""The instrumented training loop: a seeded CPU run of one config, yielding record batches.

It knows nothing of Streamlit or the store: :meth:`Trainer.batches` is a generator of
:class:`~normlab.measure.schema.RecordBatch` es (at least one per ``flush_seconds``), so a caller
can stream them anywhere, pause a run by not asking for the next batch, or cancel it by
closing the generator. :func:`train` runs a config to the end and returns everything.

Determinism: the data split, the init and the batch order come from the config's seed
(a private ``torch.Generator`` for batches), and probes never draw random numbers, so the
same config gives bit-identical metrics in a fresh process, whatever the record interval.
Bit-identical needs the same number of torch threads too (a reduction split over two
threads adds in another order: ~15% of values differ at ~1e-6): the engine's workers use
:data:`THREADS` (1), and so does :func:`train` unless told otherwise, so a run gives the
same numbers in the engine and in a notebook. :class:`Trainer` uses the process's setting.

Divergence: a non-finite training loss stops the run with status ``diverged`` and the
message ``diverged at step k``; everything recorded before it is kept.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from normlab.training.config import ConfigError, RunConfig, validate
from normlab.training.config import warnings as config_warnings
from normlab.training.data import Dataset, load_dataset
from normlab.training.limits import problems as cap_problems
from normlab.training.models import build_model
from normlab.training.optim import SGD, Adam
from normlab.measure.ics import IcsMeter, model_blocks, probe_examples
from normlab.measure.probes import SAMPLE, Probe
from normlab.measure.decorrelation import DecorrelationProbe
from normlab.measure.schema import RecordBatch
from normlab.measure.stages import StageProbe
from normlab.methods.weightnorm import data_dependent_init


VAL_KEYS = [("model", "val", "loss"), ("model", "val", "acc")]
TRAIN_MODE_KEYS = [("model", "val_train_mode", "loss"), ("model", "val_train_mode", "acc")]


def load_for(cfg: RunConfig) -> Dataset:
    """The dataset a config names, with its split and standardization."""
    return load_dataset(cfg.dataset, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        standardize=cfg.standardize, n_samples=cfg.n_samples, noise=cfg.noise)


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The config's optimizer: a ``torch.optim.SGD`` or ``torch.optim.Adam`` (torch's own
    update, bit for bit) that never imports the compiler (:mod:`normlab.training.optim`)."""
    if cfg.optimizer == "sgd":
        return SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "momentum":
        return SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, momentum or adam")


INIT_EXAMPLES = 256  # examples WeightNorm's data-dependent init computes μ, σ from
FIRST_FLUSH_GAP = 0.05  # s: a live run's second flush after its first (the gaps double)
THREADS = 1  # torch threads of a run: the engine's workers' setting, train()'s default


@dataclass
class Outcome:
    status: str  # "running", "done", "diverged"
    step: int  # optimizer steps taken
    message: str = ""
    threads: int = 0  # torch threads the run used (train() sets it; 0: not recorded)


def usable_cores() -> int:
    """How many cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Trainer:
    """One run: validated config → data, model, optimizer, probe.

    Raises :class:`~normlab.training.config.ConfigError` (every bad field) or a dataset error
    before any training happens.
    """

    def __init__(self, cfg: RunConfig, data: Dataset | None = None, *,
                 probe_sample: int | None = SAMPLE, probe_threaded: bool | None = None):
        validate(cfg)
        self.cfg = cfg
        self.data = data if data is not None else load_for(cfg)
        validate(cfg, train_size=len(self.data.y_train))
        self.warnings = config_warnings(cfg, tuple(self.data.input_shape))
        for field, message in self.warnings.items():  # the engine's log is the worker's stderr
            print(f"normlab warning ({field}): {message}", file=sys.stderr, flush=True)
        over = cap_problems(cfg, tuple(self.data.input_shape), self.data.num_classes,
                            len(self.data.y_train) + len(self.data.y_val))
        if over:  # memory and storage caps (normlab.training.limits)
            raise ConfigError(over)
        torch.manual_seed(cfg.seed)
        self.x_train = self.data.view(self.data.x_train, cfg.model)
        self.x_val = self.data.view(self.data.x_val, cfg.model)
        self.model = build_model(cfg, tuple(self.data.input_shape), self.data.num_classes)
        if cfg.norm == "weight" and cfg.weight_init == "data":
            data_dependent_init(self.model, self.init_batch())
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # the loop below writes no activation, so the probe may take its statistics on a
        # helper thread: by default when this process may use a second core (the engine
        # turns it off when its workers fill every core)
        if probe_threaded is None:
            probe_threaded = usable_cores() > 1
        self.probe = Probe(self.model, every=cfg.record_interval, sample=probe_sample,
                           threaded=probe_threaded, carry_weights=True)  # see batches
        self.decorrelation = DecorrelationProbe.for_config(self.model, cfg)  # Lab 2, opt-in
        self.stages = (StageProbe(self.model, every=cfg.record_interval,  # opt-in (Lab 1)
                                  features_every=cfg.eval_interval, sample=probe_sample)
                       if cfg.stages else None)
        self.outcome = Outcome("running", 0)
        self.ics = (IcsMeter(self.model, model_blocks(self.model), F.cross_entropy, cfg.lr,
                             probe_examples(self.x_train, cfg.seed))
                    if cfg.ics_interval else None)  # Lab 3, opt-in: a copy of the model

    def init_batch(self) -> torch.Tensor:
        """The examples WeightNorm's data-dependent init sees: up to INIT_EXAMPLES (at
        least a batch) training examples, drawn by their own generator from the seed, so
        the training batches are the same with either init."""
        n = len(self.data.y_train)
        take = min(n, max(self.cfg.batch_size, INIT_EXAMPLES))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))
        return self.x_train[order[:take]]

    def _evaluate(self) -> tuple[float, float]:
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.x_val)
            loss = F.cross_entropy(logits, self.data.y_val).item()
            acc = (logits.argmax(1) == self.data.y_val).float().mean().item()
        self.model.train()
        return loss, acc

    def _evaluate_train_mode(self) -> tuple[float, float]:
        """Validation loss and accuracy with the model in training mode, as it normalizes
        during training: batch statistics over consecutive batches of ``batch_size``
        validation examples (a last partial batch joins the one before it). Running
        statistics and every other buffer are restored afterwards, so training is unchanged.
        """
        model, x, y = self.model, self.x_val, self.data.y_val
        size = self.cfg.batch_size
        saved = [(b, b.detach().clone()) for b in model.buffers()]
        starts = list(range(0, len(y), size))
        if len(starts) > 1 and len(y) - starts[-1] < size:
            starts.pop()  # the partial tail goes with the previous batch
        ends = starts[1:] + [len(y)]
        total_loss, correct = 0.0, 0
        model.train()
        try:
            with torch.no_grad():
                for a, b in zip(starts, ends):
                    logits = model(x[a:b])
                    total_loss += F.cross_entropy(logits, y[a:b], reduction="sum").item()
                    correct += int((logits.argmax(1) == y[a:b]).sum())
        finally:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)
        return total_loss / len(y), correct / len(y)

    def batches(self, flush_seconds: float = 1.0,
                first_flush_after: int | None = None) -> Iterator[RecordBatch]:
        """Train, yielding the records at least every ``flush_seconds`` and at the end
        (and once after ``first_flush_after`` steps, so a live chart starts at once; then
        at gaps doubling from FIRST_FLUSH_GAP to ``flush_seconds``, so it has a line —
        two points — a few steps later rather than ``flush_seconds`` later).
        A batch holds the probe's rows then the validation rows, so a step can appear
        twice, each series at most once (:func:`train` merges them into one row a step).

        Step ``s`` records the model as it is *before* update ``s + 1`` is applied (so step 0
        is the initial model); validation runs at steps divisible by ``eval_interval`` and
        at the last step.
        """
        cfg, probe, model, opt = self.cfg, self.probe, self.model, self.optimizer
        n = len(self.data.y_train)
        pending_val: list[RecordBatch] = []
        last_flush = time.monotonic()
        gap = flush_seconds if first_flush_after is None else min(FIRST_FLUSH_GAP,
                                                                   flush_seconds)
        model.train()
        decor = self.decorrelation
        with probe, (decor if decor is not None else nullcontext()), \
                (self.stages or nullcontext()):
            for step in range(cfg.steps):
                idx = torch.randint(0, n, (cfg.batch_size,), generator=self.generator)
                x, y = self.x_train[idx], self.data.y_train[idx]
                recorded = probe.arm(step)
                if self.stages is not None:
                    self.stages.arm(step)
                if decor is not None:
                    decor.arm(step)
                shift = self.ics is not None and step % cfg.ics_interval == 0
                if shift:
                    self.ics.arm(model)
                if step % cfg.eval_interval == 0:
                    pending_val.append(self._validation(step))
                logits = model(x)
                probe.after_forward()
                loss = F.cross_entropy(logits, y)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    self.outcome = Outcome("diverged", step,
                                           f"diverged at step {step}: training loss is "
                                           f"{loss_value}; try a smaller lr or another norm")
                    break
                opt.zero_grad(set_to_none=False)
                loss.backward()  # the gradients stay as they are until the next zero_grad,
                if shift:
                    self.ics.take_gradient(model)
                opt.step()  # so the probe reads them in after_update (no after_backward)
                if self.stages is not None:
                    self.stages.after_update()
                if shift:
                    pending_val.append(self.ics.measure(model, x, y, step))
                if recorded:
                    probe.after_update({("model", "train", "loss"): loss_value},
                                       accuracy=(logits, y))
                self.outcome.step = step + 1
                first = step + 1 == first_flush_after
                if first or time.monotonic() - last_flush >= gap:
                    yield self._collect(pending_val)
                    pending_val, last_flush = [], time.monotonic()
                    gap = gap if first else min(2 * gap, flush_seconds)
            else:
                self.outcome = Outcome("done", cfg.steps)
                pending_val.append(self._validation(cfg.steps))
        batch = self._collect(pending_val)
        if len(batch):
            yield batch

    def _validation(self, step: int) -> RecordBatch:
        """The validation rows of ``step`` (and the training-mode ones if asked for)."""
        keys, values = list(VAL_KEYS), list(self._evaluate())
        if self.cfg.eval_train_mode:
            keys += TRAIN_MODE_KEYS
            values += self._evaluate_train_mode()
        return _single(step, keys, values)

    def _collect(self, pending_val: list[RecordBatch]) -> RecordBatch:
        """The probe's rows, then the validation rows (a step can have one of each: every
        series is measured at most once per step, so nothing needs merging to store)."""
        decor = self.decorrelation.flush() if self.decorrelation is not None else None
        stages = self.stages.flush() if self.stages is not None else None
        parts = [b for b in [self.probe.flush(), decor, stages, *pending_val] if b is not None]
        return RecordBatch.concat(parts)


def _single(step: int, keys, values) -> RecordBatch:
    return RecordBatch(np.array([step], dtype=np.int64), list(keys),
                       np.asarray([values], dtype=np.float64))


def _merge_steps(batch: RecordBatch) -> RecordBatch:
    """Rows of the same step (probe row + validation row) merged into one, sorted by step.

    Each series is measured at most once per step, so a NaN-ignoring max merges them;
    only the few steps with more than one row need it."""
    steps, values = batch.steps, batch.values
    if len(steps) and (steps[1:] < steps[:-1]).any():
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    starts = (np.flatnonzero(np.r_[True, steps[1:] != steps[:-1]]) if len(steps)
              else np.zeros(0, dtype=np.int64))
    if len(starts) == len(steps):
        return RecordBatch(steps.astype(np.int64), batch.keys, values)
    ends = np.r_[starts[1:], len(steps)]
    merged = values[starts]
    with np.errstate(invalid="ignore"):
        for g in np.flatnonzero(ends - starts > 1):
            merged[g] = np.fmax.reduce(values[starts[g]:ends[g]], axis=0)
    return RecordBatch(steps[starts].astype(np.int64), batch.keys, merged)


def train(cfg: RunConfig, data: Dataset | None = None, *,
          threads: int | None = THREADS) -> tuple[RecordBatch, Outcome]:
    """Run ``cfg`` to the end: all its records as one batch, and how it ended.

    ``threads``: torch threads while it trains (default :data:`THREADS`, the engine's, so
    the numbers are bit-identical to the engine's; None keeps the process's setting). The
    process's setting is restored afterwards; ``outcome.threads`` records the count used.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None (got {threads!r}); "
                         f"use {THREADS}, the engine's setting")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        trainer = Trainer(cfg, data)
        batches = list(trainer.batches(flush_seconds=float("inf")))
        trainer.outcome.threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return _merge_steps(RecordBatch.concat(batches)), trainer.outcome
