"""Log a user's own PyTorch training loop into the run store (``normlab.log``).

In the spirit of TensorBoard's ``SummaryWriter`` and W&B's ``watch``: the user keeps their
model, data and loop; a :class:`~normlab.measure.probes.Probe` measures the model, and
this module puts the records into the store as an *external* run, so Compare, Layer
dynamics, Runs and exports show it like any NormLab run, live while it trains::

    with normlab.log(model, name="resnet18-bn", config={"lr": 0.1}, every=10) as run:
        for step, (x, y) in enumerate(loader):
            run.arm(step)
            out = model(x)
            run.after_forward()
            loss = loss_fn(out, y)
            opt.zero_grad(); loss.backward()
            run.after_backward()
            opt.step()
            run.after_update(loss=loss.item(), acc=(out.argmax(1) == y).float().mean().item())
        run.log(step, {"val/loss": 0.31})  # any scalar: "site/metric" or (layer, site, metric)

The run is created 'running' (never claimed by the engine), records are flushed every
``flush_seconds``, and it ends 'done' when the block ends, 'failed' (with the exception's
message, which still propagates) on an exception, 'cancelled' when someone cancels it in
the dashboard or CLI (the next ``after_update`` ends the block quietly), and 'interrupted'
if the process dies (the next engine start sees its pid gone). A pause request blocks the
loop at ``after_update`` until resumed.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from normlab.measure.probes import SAMPLE, Probe
from normlab.measure.schema import RecordBatch
from normlab.runs.store import Store

FLUSH_SECONDS = 0.5  # the engine's workers flush twice a second too


class RunStopped(Exception):
    """Raised at ``after_update`` to end the loop: the run was cancelled from the
    dashboard or CLI (``status`` 'cancelled'), or its loss became non-finite ('diverged').
    The ``with normlab.log(...)`` block swallows it and the run ends with that status."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _key(name: str | tuple[str, str, str]) -> tuple[str, str, str]:
    """'val/loss' → ('model', 'val', 'loss'); a (layer, site, metric) triple as is."""
    if isinstance(name, tuple) and len(name) == 3:
        return tuple(map(str, name))  # type: ignore[return-value]
    parts = str(name).split("/")
    if len(parts) == 2 and all(parts):
        return ("model", parts[0], parts[1])
    raise ValueError(f"metric name {name!r}: write 'site/metric' (e.g. 'val/loss', "
                     "'train/acc') or a (layer, site, metric) tuple")


def _jsonable(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` with values JSON cannot hold written as their ``str`` (so any config
    dict, e.g. with a torch.device or a class in it, is stored as given)."""
    import json

    out = {}
    for k, v in dict(config or {}).items():
        try:
            json.dumps(v, allow_nan=False)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out


class LoggedRun:
    """One external run: a probe on ``model`` whose records go to ``store`` as they come.

    The training-loop protocol is the probe's (:class:`~normlab.measure.probes.Probe`):
    :meth:`arm`, :meth:`after_forward`, :meth:`after_backward`, :meth:`after_update`;
    :meth:`log` adds any scalar at any step (validation metrics, learning rate).
    """

    def __init__(self, model: nn.Module, *, name: str, config: Mapping[str, Any] | None = None,
                 store: Store | str | os.PathLike | None = None, every: int = 10,
                 sample: int | None = SAMPLE, total_steps: int | None = None,
                 tags: tuple[str, ...] = (), flush_seconds: float = FLUSH_SECONDS):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.store = store if isinstance(store, Store) else Store(store)
        self.probe = Probe(model, every=every, sample=sample)
        self.config = _jsonable(config)
        steps = total_steps if total_steps is not None else self.config.get("steps")
        self.total_steps = int(steps) if isinstance(steps, (int, float)) and steps > 0 else None
        self.name, self.tags, self.flush_seconds = name, tags, flush_seconds
        self.comparison_id: str | None = None
        self.run_id: str | None = None
        self.step = 0
        self._pending: list[RecordBatch] = []
        self._last_flush = 0.0
        self._start = 0.0

    # -- the context ---------------------------------------------------------------------
    def __enter__(self) -> "LoggedRun":
        self.comparison_id, self.run_id = self.store.create_external_run(
            self.name, self.config, pid=os.getpid(), total_steps=self.total_steps,
            tags=self.tags)
        self.probe.__enter__()
        self._start = self._last_flush = time.monotonic()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.probe.__exit__(kind, exc, tb)
        try:
            self._flush()
        finally:
            if kind is None:
                self.store.finish(self.run_id, "done", self.step)
            elif issubclass(kind, RunStopped):
                self.store.finish(self.run_id, exc.status, self.step,
                                  str(exc) if exc.status == "diverged" else None)
            else:
                message = f"{kind.__name__} at step {self.step}: {exc}"
                self.store.finish(self.run_id, "failed", self.step, message)
        return kind is not None and issubclass(kind, RunStopped)

    # -- the training-loop protocol ------------------------------------------------------
    def arm(self, step: int) -> bool:
        """Call before the forward pass of ``step``; whether the step is recorded."""
        self.step = int(step)
        return self.probe.arm(step)

    def after_forward(self) -> None:
        self.probe.after_forward()

    def after_backward(self) -> None:
        self.probe.after_backward()

    def after_update(self, loss: float | None = None, acc: float | None = None,
                     extra: Mapping[str | tuple, float] | None = None) -> None:
        """Call after the optimizer step: the step's row (with the training ``loss`` and
        ``acc`` if given, and any ``extra`` scalars), a flush when due, and the dashboard's
        requests (cancel raises :class:`RunStopped`, pause waits)."""
        values = {("model", "train", "loss"): loss, ("model", "train", "acc"): acc}
        values.update({_key(k): v for k, v in (extra or {}).items()})
        self.probe.after_update({k: float(v) for k, v in values.items() if v is not None})
        if loss is not None and not math.isfinite(loss):
            raise RunStopped("diverged", f"diverged at step {self.step}: training loss is "
                             f"{loss}")
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush()
            self._obey(self.store.control(self.run_id))

    def log(self, step: int, values: Mapping[str | tuple, float]) -> None:
        """Record scalars at ``step`` (e.g. ``{"val/loss": 0.3, "val/acc": 0.9}``)."""
        keys = [_key(k) for k in values]
        row = np.array([[float(v) for v in values.values()]], dtype=np.float64)
        self._pending.append(RecordBatch(np.array([int(step)], dtype=np.int64), keys, row))

    # -- writing -------------------------------------------------------------------------
    def _flush(self) -> None:
        batches = [b for b in [self.probe.flush(), *self._pending] if b is not None and len(b)]
        self._pending = []
        for batch in batches:
            self.store.append(self.run_id, batch)
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self.store.progress(self.run_id, self.step, (self.step + 1) / elapsed)
        self._last_flush = time.monotonic()

    def _obey(self, request: str | None) -> None:
        if request == "pause":
            self.store.set_status(self.run_id, "paused")
            paused = time.monotonic()
            while (request := self.store.control(self.run_id)) == "pause":
                time.sleep(0.2)
                self.store.progress(self.run_id, self.step)  # heartbeat
            self._start += time.monotonic() - paused
            if request != "cancel":
                self.store.set_status(self.run_id, "running")
        if request == "cancel":
            raise RunStopped("cancelled", f"cancelled at step {self.step}")


def log(model: nn.Module, *, name: str, config: Mapping[str, Any] | None = None,
        store: Store | str | os.PathLike | None = None, every: int = 10,
        sample: int | None = SAMPLE, total_steps: int | None = None,
        tags: tuple[str, ...] = ()) -> LoggedRun:
    """Log ``model``'s training, done by your own loop, into the store (see the module
    docstring): ``with normlab.log(model, name=...) as run:``. ``every``: record every
    k-th step; ``config`` is stored and shown as given; ``store`` defaults to
    ``NORMLAB_STORE`` or ``~/.normlab/normlab.sqlite``, the dashboard's."""
    return LoggedRun(model, name=name, config=config, store=store, every=every, sample=sample,
                     total_steps=total_steps, tags=tags)
