"""Hugging Face ``transformers``: ``Trainer(..., callbacks=[NormLabHFCallback(name="bert-tiny")])``.

Attaches NormLab's probe to the trainer's model when training starts and records every
``every``-th optimizer step (activations, gradients, weights) into the run store as an
external run; the losses the Trainer logs (``loss``, ``eval_loss``, ``eval_accuracy``, …)
are stored as ``train/…`` and ``val/…``. A cancel from the dashboard sets
``control.should_training_stop``; the run ends 'cancelled'.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from normlab.runs.logger import LoggedRun, RunStopped


class NormLabHFCallback(TrainerCallback):
    """Log a ``transformers.Trainer`` run into NormLab (see the module docstring)."""

    def __init__(self, name: str | None = None, *, config: Mapping[str, Any] | None = None,
                 store: str | os.PathLike | None = None, every: int = 10):
        self.name, self.config, self.store, self.every = name, config, store, every
        self.run: LoggedRun | None = None
        self._stopped: RunStopped | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = dict(self.config) if self.config is not None else {
            k: v for k, v in args.to_dict().items()
            if isinstance(v, (int, float, str, bool)) and not k.endswith("token")}
        self.run = LoggedRun(model, name=self.name or type(model).__name__, config=config,
                             store=self.store, every=self.every,
                             total_steps=state.max_steps or None).__enter__()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.arm(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.after_backward()

    def on_step_end(self, args, state, control, **kwargs):
        if self.run is None or self._stopped is not None:
            return
        try:
            self.run.after_update()
        except RunStopped as stop:
            self._stopped = stop
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is None or not logs:
            return
        values = {}
        for key, value in logs.items():
            if not isinstance(value, (int, float)) or key in ("epoch", "step"):
                continue
            if key.startswith("eval_"):
                values[f"val/{key[5:].replace('/', '_')}"] = value
            elif key in ("loss", "grad_norm", "learning_rate"):
                values[f"train/{'lr' if key == 'learning_rate' else key}"] = value
        if values:
            self.run.log(state.global_step, values)

    def on_train_end(self, args, state, control, **kwargs):
        run, self.run = self.run, None
        if run is not None:
            stop = self._stopped
            run.__exit__(type(stop) if stop else None, stop, None)
