"""PyTorch Lightning: ``Trainer(callbacks=[NormLabCallback(name="resnet18-bn")])``.

The callback attaches NormLab's probe to the ``LightningModule`` when training starts and
records every ``every``-th optimizer step (activations, gradients, weights, the training
loss) plus the validation metrics Lightning logged, into the run store as an external run.
A cancel from the dashboard asks the trainer to stop (``trainer.should_stop``); the run
then ends 'cancelled'. An exception in training ends it 'failed'.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from normlab.runs.logger import LoggedRun, RunStopped


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return float(value) if isinstance(value, (int, float)) else None


class NormLabCallback(pl.Callback):
    """Log a Lightning training run into NormLab (see the module docstring)."""

    def __init__(self, name: str | None = None, *, config: Mapping[str, Any] | None = None,
                 store: str | os.PathLike | None = None, every: int = 10):
        self.name, self.config, self.store, self.every = name, config, store, every
        self.run: LoggedRun | None = None
        self._stopped: RunStopped | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        config = dict(self.config) if self.config is not None else dict(pl_module.hparams)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.run = LoggedRun(pl_module, name=self.name or type(pl_module).__name__,
                             config=config, store=self.store, every=self.every,
                             total_steps=total).__enter__()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.run is not None:
            self.run.arm(trainer.global_step)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.run is not None:
            self.run.after_backward()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.run is None or self._stopped is not None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        try:
            self.run.after_update(loss=_scalar(loss))
        except RunStopped as stop:
            self._stopped = stop
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.run is None or trainer.sanity_checking:
            return
        values = {}
        for key, value in trainer.callback_metrics.items():
            v = _scalar(value)
            site, _, metric = key.replace("/", "_").partition("_")
            if v is not None and site == "val" and metric:
                values[f"val/{metric}"] = v
        if values:
            self.run.log(trainer.global_step, values)

    def on_train_end(self, trainer, pl_module) -> None:
        self._end(type(self._stopped) if self._stopped else None, self._stopped)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._end(type(exception), exception)

    def _end(self, kind, exc) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.__exit__(kind, exc, None)
