"""Probes: per-layer activation, gradient and weight statistics of any ``nn.Module``.

Modelled on fastai's ``callback/hook.py`` (``ActivationStats``): the capture lives in a
context manager that always undoes it, and stores scalar summaries and small histograms,
never raw activations. The metric names and sites are defined once, in :mod:`normlab.measure.schema`.

Which modules are measured, and under which names, works on a user's own model too and
is :mod:`normlab.measure.sites`: weight layers by module path, every normalization and
activation module as a site under its path (a block with one weight layer lends its
name: ``hidden1``), a module called twice measured at each call (``name#2``).

What a step measures: the model as it is *before* that step's update — the forward
pass's activations, the backward pass's gradients, the weights the optimizer is about to
change — plus the size of the update (‖Δw‖/‖w‖, relative to those weights). For a
weight-space layer (WeightNorm, CosineNorm) w is the effective weight its map uses: at a
recorded step the probe asks the layer to keep the weight of its forward pass with its
gradient retained (``keep_weight``), and reads the gradients of v and g apart.

Histogram ranges are fitted per slot at the first recorded step
(:func:`normlab.measure.schema.fit_range`, one ``torch.aminmax`` per tensor, once).

Cost: the arithmetic runs in compiled kernels (:mod:`normlab.measure.kernels`) that read the
tensors in place, one call after the forward pass (every activation tensor, a copy of the
layer weights) and one after the update (every gradient, the step the weights took, the
training accuracy; with ``carry_weights`` also the copy of the weights the next recorded
step starts from, so that step copies nothing), writing into a preallocated block of
float64 rows; :meth:`Probe.flush` turns the rows
into one :class:`~normlab.measure.schema.RecordBatch`. With ``threaded=True`` (NormLab's
trainer) and the compiled kernels, the activation statistics run on the probe's helper
thread with the GIL released (:class:`normlab.measure.handoff.Helper`) while the training
thread computes the loss and the backward pass. The probe holds the activations until it
joins the thread (:meth:`Probe.after_update`), so the numbers are the same; only a second
core makes it faster. The parameter statistics (~10 µs) stay in line: on the thread they
waited for the GIL through the next forward pass, which costs more than they do. It
requires a loop that writes nothing into the model's activations between
:meth:`Probe.after_forward` and :meth:`Probe.after_update`
(autograd never does; a user's loop might, so :mod:`normlab.runs.logger` keeps it off).

Mean, variance and saturation use every value; percentiles and histograms use a fixed
random sample of at most ``sample`` positions per activation tensor (default
:data:`SAMPLE`, every value of an MLP layer at batch 64; ``sample=None`` uses every value).
"""
from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from normlab.measure import backends, kernelspec
from normlab.measure.handoff import (Addresses, Helper, Layout, addresses,  # noqa: F401
                                      addresses_and_shapes, quantiles_for, sample_index,
                                      stop_statistics_thread, units_of_shape)

from normlab.measure.sites import LayerSites, find_layers  # noqa: F401 (find_layers re-exported)
from normlab.methods import weightnorm
from normlab.measure.schema import (HIST_BINS, HIST_EXTRA, HIST_METRICS, MEDIAN_CI, PERCENTILES,
                                    UNIT_PERCENTILES, UNITS, RecordBatch, fit_range, hist_edges,
                                    unit_metric, unit_picks)

SATURATED_THRESHOLD = 0.05  # "saturated": derivative below 5% of the activation's maximum
# sigmoid'(x) = y(1-y) < 5% of 1/4  <=>  y outside [a, 1-a]; tanh' = 1 - y² < 5%  <=>  |y| > b
_SIG_A = (1 - (1 - SATURATED_THRESHOLD) ** 0.5) / 2
_SATURATION_BOUNDS = {"sigmoid": (_SIG_A, 1 - _SIG_A),
                      "tanh": (-(1 - SATURATED_THRESHOLD) ** 0.5, (1 - SATURATED_THRESHOLD) ** 0.5)}
# The sample behind percentiles and histograms: every value of a tensor of at most
# SAMPLE values (an MLP layer of 100 units at batch 64 holds 6,400), else a fixed random
# sample of SAMPLE positions (6,400 · 0.15 is whole, so the 15/50/85th percentiles are
# order statistics). The median's sampling error is then about 0.016 σ for a normal
# layer (0.06 σ with the 501 values used before, which made the median jump 0.14–0.18
# from step to step); p50_lo / p50_hi record its 95% interval.
SAMPLE = 6401
_ACT_STATS = (("mean", "var") + tuple(f"p{q}" for q in PERCENTILES) + MEDIAN_CI
              + HIST_METRICS + HIST_EXTRA)
_SLOT_WIDTH = len(_ACT_STATS) + UNITS * len(UNIT_PERCENTILES)


class Probe:
    """Context manager recording per-layer statistics of ``model`` every ``every`` steps.

    Use from a training loop::

        with Probe(model, every=1) as probe:
            for step in range(steps):
                probe.arm(step)                 # capture activations if step is recorded
                out = model(x)
                probe.after_forward()           # activation statistics, weight copy
                loss = loss_fn(out, y)
                opt.zero_grad()
                loss.backward()
                probe.after_backward()          # gradient norms (optional, see there)
                opt.step()
                probe.after_update(extra={...}) # update ratio; the row is complete
            batch = probe.flush()               # RecordBatch of the recorded steps

    Only :meth:`arm` and :meth:`after_update` are required: a loop that skips
    :meth:`after_forward` gets its activation statistics at :meth:`after_update` (and
    its weight copy at :meth:`after_backward`, without which it records no update ratio).
    """

    def __init__(self, model: nn.Module, *, every: int = 1, sample: int | None = SAMPLE,
                 activation_sites: bool = True, threaded: bool = False,
                 carry_weights: bool = False):
        if every < 1:
            raise ValueError(f"every must be at least 1 (got {every})")
        if sample is not None and sample < 1:
            raise ValueError(f"sample must be at least 1 or None for every value (got {sample})")
        self.model, self.every, self.sample = model, every, sample
        self.activation_sites = activation_sites
        self.threaded = threaded  # activation statistics on the helper thread (see _join)
        # the loop changes no weight between steps: after_update copies the weights for
        # the next recorded step (see after_update); off for weight-space layers
        self.carry_weights = carry_weights
        self._carried_to = -1  # the step whose weights after_update copied
        self._logits = np.zeros(4, dtype=np.int64)  # the accuracy's tensors, for the kernel
        self.kernels = backends.current()  # compiled, or numpy until they are
        self.groups = find_layers(model)  # every name records are kept under
        self.layers = [g for g in self.groups if g.weight is not None]  # weight metrics
        if not self.layers:
            raise ValueError("found no Linear/Conv layer to probe in "
                             f"{type(model).__name__}")
        self._undo: list = []  # what __exit__ calls to unwrap the captured modules
        # per captured module: its slots (in, out) for each call in a forward pass, what
        # it measures, and how often it was called in the step being recorded
        self._call_slots: list[list[tuple[int | None, int]]] = []
        self._capture_sites: list[tuple[LayerSites, tuple[str | None, str]]] = []
        self._calls: list[int] = []
        self._no_calls: list[int] = []  # what arm resets _calls to
        self._spill: list[tuple[int, int, object, object]] = []  # calls beyond the slots
        self._finished: list[RecordBatch] = []  # rows recorded before the slots grew
        self._slots: list[tuple[str, str, str | None]] = []  # (layer, site, activation)
        self._slot_layer: list[LayerSites] = []
        self._captured: list[torch.Tensor | None] = []
        self._armed = False
        self._step = -1
        self._block: np.ndarray | None = None  # recorded rows, first len(_steps) in use
        self._steps: list[int] = []
        self._extras: list[list[float]] = []  # per recorded row: the extra values
        self._activations_done = False  # after_forward ran this step
        self._extra_keys: list[tuple[str, str, str]] | None = None
        self._layouts: dict[tuple, Layout] = {}
        self._helper: Helper | None = None  # threaded: the thread, made at the first job
        self._held: tuple = ()  # what the job in flight reads: kept alive until joined
        self._all_params = [p for p in model.parameters() if p.requires_grad]
        # weight-space layers (WeightNorm, CosineNorm): their weight, update and gradient
        # are those of the effective weight the map uses; v's and g's gradients go apart
        self._wrapped = [(i, layer.weight) for i, layer in enumerate(self.layers)
                         if isinstance(layer.weight, weightnorm._WrappedLayer)]
        wrapped = dict(self._wrapped)
        self._layer_params = [p for i, layer in enumerate(self.layers)
                              for p in (layer.params[:1] if i in wrapped else layer.params)]
        self._layer_sizes = np.array([p.numel() for p in self._layer_params], dtype=np.int64)
        self._param_owner = np.repeat(np.arange(len(self.layers)),
                                      [1 if i in wrapped else len(layer.params)
                                       for i, layer in enumerate(self.layers)])
        index = {id(q): j for j, q in enumerate(self._all_params)}
        self._layer_in_all = np.array([index[id(p)] for p in self._layer_params], dtype=np.int64)
        self._vg_in_all = np.array([[index.get(id(_direction(m)), -1),
                                     index.get(id(_magnitude(m)), -1)]
                                    for _, m in self._wrapped], dtype=np.int64).reshape(-1, 2)
        self._snapshot = np.empty(int(self._layer_sizes.sum()), dtype=np.float32)
        self._copied = False  # this step's weights are in _snapshot, their norms in _weight2
        self._graded = False  # this step's squared gradient norms are in _grad2
        self._grad2 = np.zeros(len(self._all_params))  # squared gradient norms
        self._weight2 = np.zeros(len(self._layer_params))  # squared weight norms, before
        self._grads, self._weights = Addresses(), Addresses()
        self._edges: list[np.ndarray] = []  # per slot: histogram bin edges
        self._fitted: list[bool] = []  # per slot: its range is fitted to the data
        self._all_fitted = True
        self._units_at = np.zeros((0, UNITS), dtype=np.int64)  # per slot: units, -1 padded
        self._sat_slots: list[int] = []  # slots at post_act with a known activation
        self._kinds = np.zeros(0, dtype=np.int64)
        self._bounds = np.zeros((0, 2))
        self._edge_matrix = np.zeros((0, HIST_BINS + 1))
        self._act_base = 1 + 3 * len(self.layers)
        self._saturation_at = np.zeros(0, dtype=np.int64)

    # -- capture -----------------------------------------------------------------------
    def __enter__(self) -> "Probe":
        if not self.activation_sites:
            return self
        for group in self.groups:
            if group.norm is not None:
                self._undo.append(self._capture(group.norm, group, ("pre_norm", "post_norm")))
            elif group.record_output:
                self._undo.append(self._capture(group.weight, group, (None, "pre_norm")))
            if group.act is not None:
                self._undo.append(self._capture(group.act, group, (None, "post_act")))
        self._finish_slots()
        return self

    def _finish_slots(self) -> None:
        """The per-slot arrays the activation kernel reads (after slots are added)."""
        self._kinds = np.array([_saturation_kind(a) for _, _, a in self._slots], dtype=np.int64)
        self._bounds = np.array([_SATURATION_BOUNDS.get(a, (np.nan, np.nan))
                                 for _, _, a in self._slots]).reshape(-1, 2)
        self._edge_matrix = np.array(self._edges).reshape(-1, HIST_BINS + 1)
        self._units_at = np.array([_padded(unit_picks(_units_of(self._slot_layer[i])))
                                   for i in range(len(self._slots))],
                                  dtype=np.int64).reshape(-1, UNITS)
        self._act_base = 1 + 3 * len(self.layers)
        after = self._act_base + len(self._slots) * _SLOT_WIDTH
        self._saturation_at = np.full(len(self._slots), -1, dtype=np.int64)
        self._saturation_at[self._sat_slots] = after + np.arange(len(self._sat_slots))

    def __exit__(self, *exc) -> None:
        self._join()
        if self._helper is not None:
            self._helper.stop()
            self._helper = None
        for _, module in self._wrapped:
            module.keep_weight, module.used_weight = False, None
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._armed = False
        self._captured = [None] * len(self._captured)

    def _add_slot(self, layer: LayerSites, site: str, suffix: str = "") -> int:
        activation = layer.activation if site == "post_act" else None
        self._slots.append((layer.name + suffix, site, activation))
        self._slot_layer.append(layer)
        self._edges.append(hist_edges(site, activation))
        self._fitted.append(False)
        self._all_fitted = False
        if activation is not None:
            self._sat_slots.append(len(self._slots) - 1)
        self._captured.append(None)
        return len(self._slots) - 1

    def _capture(self, module: nn.Module, group: LayerSites, sites: tuple[str | None, str]):
        """Make ``module`` hand its input (if ``sites[0]``) and output to the probe at
        recorded steps, one pair of slots per call in the forward pass (a module used
        twice — a shared ReLU — is measured at each call: ``name``, ``name#2``, …; calls
        beyond the known slots add slots at :meth:`_grow`); returns what undoes it. Calls
        with gradients off (an evaluation pass under ``torch.no_grad()`` between
        :meth:`arm` and the training pass) are not the training step's: not captured.

        Wraps the module's ``forward`` (as accelerate's ``add_hook_to_module`` does)
        rather than registering a forward hook: any hook sends every call of the module
        through ``nn.Module``'s slow path, ~3 µs a call here, paid at every step. The
        captured tensors are held only until the step's statistics are taken (no detach:
        the kernels read memory, and dropping the reference frees nothing autograd needs).
        """
        cid = len(self._call_slots)
        self._call_slots.append([tuple(None if s is None else self._add_slot(group, s)
                                       for s in sites)])
        self._capture_sites.append((group, sites))
        self._calls.append(0)
        self._no_calls = [0] * len(self._calls)
        before = module.__dict__.get("forward")  # an instance-level forward (a wrapper)

        calls, slots = self._calls, self._call_slots[cid]  # both mutated in place only
        want_input, is_grad_enabled, tensor = sites[0] is not None, torch.is_grad_enabled, torch.Tensor

        def take(inputs, output) -> None:
            call = calls[cid]
            calls[cid] = call + 1
            y = output if isinstance(output, tensor) else _first_tensor(output)
            x = None
            if want_input:
                x = (inputs[0] if inputs and isinstance(inputs[0], tensor)
                     else _first_tensor(inputs))
            if call >= len(slots):
                self._spill.append((cid, call, x, y))
                return
            in_slot, out_slot = slots[call]
            captured = self._captured
            if in_slot is not None:
                captured[in_slot] = x
            captured[out_slot] = y

        def forward(this, *args, **kwargs):  # bound below, so a deepcopy rebinds it
            output = (type(this).forward(this, *args, **kwargs) if before is None
                      else before(*args, **kwargs))
            if self._armed and this is module and is_grad_enabled():
                take(args or tuple(kwargs.values()), output)
            return output

        bound = types.MethodType(forward, module)
        try:
            module.forward = bound
        except (AttributeError, RuntimeError, TypeError):  # e.g. a scripted module: a hook
            def hook(module, inputs, output):
                if self._armed and torch.is_grad_enabled():
                    take(inputs, output)
            return module.register_forward_hook(hook).remove

        def undo():
            if module.__dict__.get("forward") is bound:  # else someone wrapped it after us
                if before is None:
                    del module.forward
                else:
                    module.forward = before
        return undo

    def _grow(self) -> None:
        """Give the calls of this step that had no slot (a module called more often than
        before) their own slots, named ``name#k``. The rows recorded so far keep their
        columns: they are set aside as a batch that :meth:`flush` returns with the rest."""
        self._join()
        rows = self._take_rows()
        if rows is not None:
            self._finished.append(rows)
        for cid, call, x, y in self._spill:
            group, sites = self._capture_sites[cid]
            slots = self._call_slots[cid]
            while len(slots) <= call:
                suffix = f"#{len(slots) + 1}"
                slots.append(tuple(None if s is None else self._add_slot(group, s, suffix)
                                   for s in sites))
            in_slot, out_slot = slots[call]
            if in_slot is not None:
                self._captured[in_slot] = x
            self._captured[out_slot] = y
        self._spill = []
        self._block = None
        self._finish_slots()

    # -- the training-loop protocol ----------------------------------------------------
    def records(self, step: int) -> bool:
        """Whether ``step`` is a recorded step."""
        return step % self.every == 0

    def arm(self, step: int) -> bool:
        """Call before the forward pass of ``step``; returns whether it is recorded. A step
        armed but never completed by :meth:`after_update` (a diverged one) leaves no row."""
        self._join()  # a step left unfinished (diverged) may still be measured
        self._step = step
        self._armed = step % self.every == 0
        self._graded = self._activations_done = False
        self._copied = self._armed and self._carried_to == step  # see after_update
        self._carried_to = -1
        for _, module in self._wrapped:
            module.keep_weight, module.used_weight = self._armed, None
        if self._armed:
            self._calls[:] = self._no_calls  # in place: the capture wrappers hold the list
            self._spill = []
        return self._armed

    def after_forward(self) -> None:
        """Call after the forward pass: activation statistics, while the activations are
        still in the CPU's cache, and a copy of the layer weights (so :meth:`after_update`
        can measure the step the optimizer takes) with their norms."""
        if self._armed and not self._activations_done:
            self._activation_stats(copy_weights=not self._copied)

    def after_backward(self) -> None:
        """Call after the backward pass, before anything changes the gradients: gradient
        norms of every parameter (a missing gradient counts as 0), and the weight copy if
        :meth:`after_forward` did not take it.

        Optional when the gradients stay as the backward pass left them until
        :meth:`after_update` (the optimizer only reads them; the loop zeroes them before
        the next backward pass): :meth:`after_update` then reads them itself."""
        if not self._armed:
            return
        grads = self._grads
        grads.update([p.grad for p in self._all_params])
        held = self._weight_tensors(before=True)  # alive until the kernel has read them
        weights = self._weights.update(held) if not self._copied else _NO_TENSORS
        self.kernels.before_step(grads.addresses, grads.sizes, self._grad2, weights,
                            self._weights.sizes, self._snapshot, self._weight2)
        self._copied = self._graded = True

    def after_update(self, extra: dict[tuple[str, str, str], float] | None = None,
                     accuracy: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Call after the optimizer step: gradient norms (unless :meth:`after_backward`
        took them), weight norms and update ratios (activation statistics too if
        :meth:`after_forward` was not called); appends the step's row.

        ``extra`` adds model-level values (loss...) keyed (layer, site, metric); the key set
        must be the same at every recorded step. ``accuracy``: the step's (logits,
        targets), whose :func:`accuracy` is added as ``("model", "train", "acc")``
        (computed in the same compiled call as the parameter statistics).

        With ``carry_weights`` (a loop that changes no weight between steps, as NormLab's
        trainer) the same call also copies the weights as they are now — the weights the
        next step starts from — when the next step is recorded, so that step needs no
        copy of its own; the numbers are the same either way.
        """
        if not self._armed:
            return
        if not self._activations_done:
            self._activation_stats(copy_weights=False)  # the weights have changed
        self._join()
        self._armed = False
        row = self._row()
        weights = self._weights
        if self._graded:
            grads = _NO_TENSORS
        else:
            grads = self._grads.update([p.grad for p in self._all_params])
        held = self._weight_tensors(before=False)  # alive until the kernel has read them
        carry = (self.carry_weights and not self._wrapped
                 and (self._step + 1) % self.every == 0)
        logits, acc = _NO_LOGITS, np.nan
        if accuracy is not None:
            if _logits_args(*accuracy, self._logits):
                logits = self._logits  # the kernel computes it
            else:  # not float32/int64 contiguous CPU tensors
                acc = _torch_accuracy(*accuracy)
        value = self.kernels.parameter_stats(  # in line: ~10 µs, less than a thread hand-off
            weights.update(held), weights.sizes, self._snapshot, self._copied, grads,
            self._grads.sizes, self._grad2, self._weight2, self._layer_in_all,
            self._param_owner, row, carry, logits)
        self._carried_to = self._step + 1 if carry else -1
        if self._wrapped:
            self._wrapped_stats(row)
        extra = extra or {}
        if accuracy is not None:
            extra = {**extra, TRAIN_ACC: value if logits is self._logits else acc}
        if self._extra_keys is None:
            self._extra_keys = list(extra)
        self._extras.append([extra.get(key, np.nan) for key in self._extra_keys])
        self._steps.append(self._step)
        self._copied = self._graded = self._activations_done = False

    def _activation_stats(self, copy_weights: bool) -> None:
        """The activation statistics of the step (on the helper thread with the compiled
        kernels: :meth:`_join` waits for them), and the weight copy if ``copy_weights``."""
        if self._spill:
            self._grow()
        captured, keep = self._captured, []
        if not self._all_fitted:
            self._fit_ranges(captured)
        pointers, shapes = addresses_and_shapes(captured, keep)
        layout = self._layout(shapes)
        held = self._weight_tensors(before=True)  # alive until the kernel has read them
        weights = self._weights.update(held) if copy_weights else _NO_TENSORS
        args = (pointers, layout.shapes, layout.samples, layout.sample_index,
                self._edge_matrix, self._kinds, self._bounds, layout.quantiles,
                self._units_at, _UNIT_QUANTILES, self._row(), self._act_base,
                self._saturation_at, layout.work32, layout.work64)
        if copy_weights:  # now: the optimizer changes them before the thread is joined
            self.kernels.copy_weights(weights, self._weights.sizes, self._snapshot,
                                      self._weight2)
        self._run(self.kernels.activation_stats, args, (captured, keep))
        self._copied = self._copied or copy_weights
        self._activations_done = True
        self._captured = [None] * len(captured)

    def _run(self, kernel, args: tuple, held) -> None:
        """``kernel(*args)``: on the helper thread if threaded (and the kernels release the
        GIL), holding ``held`` (the tensors it reads) until :meth:`_join`; else now."""
        if self.threaded and getattr(self.kernels, "RELEASES_GIL", False):
            if self._helper is None:
                self._helper = Helper()
            self._helper.submit(kernel, args)
            self._held = held
        else:
            kernel(*args)

    def _join(self) -> None:
        """Wait for the activation statistics in flight (if any: from :meth:`after_forward`
        to :meth:`after_update`), then let go of the tensors they read. Every reader of
        the rows (:meth:`flush`) joins first."""
        if self._helper is not None and self._helper.busy:
            self._helper.join()
        self._held = ()

    def _row(self) -> np.ndarray:
        """The row of the step being recorded, in the block of rows (grown by doubling)."""
        n = len(self._steps)
        if self._block is None or n == len(self._block):
            block = np.empty((max(16, 2 * n), len(self._measured_keys())))
            if n:
                block[:n] = self._block[:n]
            self._block = block
        return self._block[n]

    # -- weight-space layers -----------------------------------------------------------
    def _weight_tensors(self, before: bool) -> list[torch.Tensor]:
        """The tensors whose norm and step are the layers' weight norms and updates: the
        weight parameters, and for a weight-space layer its effective weight — as the
        forward pass used it (``before``, when it was kept) or as it is now."""
        if not self._wrapped:
            return self._layer_params
        tensors = list(self._layer_params)
        at = np.searchsorted(self._param_owner, [i for i, _ in self._wrapped])
        for j, (_, module) in zip(at, self._wrapped):
            kept = module.used_weight if before else None
            with torch.no_grad():
                tensors[j] = (kept.detach() if kept is not None
                              else module.effective_weight().detach().contiguous())
        return tensors

    def _wrapped_stats(self, row: np.ndarray) -> None:
        """Per weight-space layer: the gradient norm of the effective weight (replacing
        the kernel's) and those of v (direction) and g (magnitude)."""
        at = self._act_base + len(self._slots) * _SLOT_WIDTH + len(self._sat_slots)
        for k, ((i, module), (v, g)) in enumerate(zip(self._wrapped, self._vg_in_all)):
            used = module.used_weight
            grad = None if used is None else used.grad
            row[1 + i] = (np.nan if grad is None
                          else float(torch.linalg.vector_norm(grad, dtype=torch.float64)))
            row[at + 2 * k] = np.sqrt(self._grad2[v]) if v >= 0 else np.nan
            row[at + 2 * k + 1] = np.sqrt(self._grad2[g]) if g >= 0 else np.nan
            module.used_weight = None

    # -- activation statistics ---------------------------------------------------------
    def _fit_ranges(self, captured: list) -> None:
        """Each slot's histogram range from its first captured values
        (:func:`normlab.measure.schema.fit_range`), kept for the rest of the run."""
        for i, t in enumerate(captured):
            if self._fitted[i] or t is None or t.numel() == 0:
                continue
            with torch.no_grad():
                low, high = torch.aminmax(t.detach())
            _, site, activation = self._slots[i]
            lo, hi = fit_range(float(low), float(high), site, activation)
            self._edge_matrix[i] = np.linspace(lo, hi, HIST_BINS + 1)
            self._fitted[i] = True
        self._all_fitted = all(self._fitted)

    def _layout(self, shapes: tuple) -> Layout:
        if shapes not in self._layouts:
            units = np.array([units_of_shape(s) if s is not None else (0, 0, 0) for s in shapes],
                             dtype=np.int64).reshape(-1, 3)
            index: dict[int, tuple[int, np.ndarray]] = {}  # one sample per tensor size
            at = 0
            for n in units.prod(axis=1):
                if int(n) not in index:
                    positions = sample_index(int(n), self.sample)
                    index[int(n)] = (at, positions)
                    at += len(positions)
            samples = np.array([(index[int(n)][0], len(index[int(n)][1]))
                                for n in units.prod(axis=1)], dtype=np.int64).reshape(-1, 2)
            self._layouts[shapes] = Layout(units, samples, np.concatenate(
                [p for _, p in index.values()] + [np.zeros(0, np.int64)]).astype(np.int32))
        return self._layouts[shapes]

    # -- output ------------------------------------------------------------------------
    def keys(self) -> list[tuple[str, str, str]]:
        """The (layer, site, metric) key of each column of a recorded row."""
        return self._measured_keys() + list(self._extra_keys or [])

    def _measured_keys(self) -> list[tuple[str, str, str]]:
        keys = [("model", "train", "grad_norm")]
        keys += [(layer.name, "param", "grad_norm") for layer in self.layers]
        keys += [(layer.name, "param", "weight_norm") for layer in self.layers]
        keys += [(layer.name, "param", "update_ratio") for layer in self.layers]
        for (layer, site, _), units in zip(self._slots, self._units_at):
            keys += [(layer, site, m) for m in _ACT_STATS]
            keys += [(layer, site, unit_metric(u, q) if u >= 0 else f"u_none{j}_p{q}")
                     for j, u in enumerate(units) for q in UNIT_PERCENTILES]
        keys += [(self._slots[i][0], "post_act",
                  "saturated" if self._slots[i][2] in ("sigmoid", "tanh") else "dead")
                 for i in self._sat_slots]
        keys += [(self.layers[i].name, "param", metric) for i, _ in self._wrapped
                 for metric in WRAPPED_METRICS]
        return keys

    def _take_rows(self) -> RecordBatch | None:
        """The rows recorded since the last flush (None if none), and forget them."""
        self._join()
        if not self._steps:
            return None
        n = len(self._steps)
        values = np.concatenate([self._block[:n], np.array(self._extras).reshape(n, -1)], axis=1)
        batch = RecordBatch(np.asarray(self._steps, dtype=np.int64), self.keys(), values)
        self._steps, self._extras = [], []
        return batch

    def flush(self) -> RecordBatch | None:
        """The rows recorded since the last flush as one batch (None if there are none).
        A probe on the numpy kernels moves to the compiled ones here once they exist
        (:func:`normlab.measure.backends.upgrade`)."""
        self.kernels = backends.upgrade(self.kernels)
        batches = [*self._finished, self._take_rows()]
        self._finished = []
        batches = [b for b in batches if b is not None]
        if not batches:
            return None
        return batches[0] if len(batches) == 1 else RecordBatch.concat(batches)


def _first_tensor(value) -> torch.Tensor | None:
    """``value`` if a tensor, else the first tensor in a tuple or list (an attention
    module returns (output, weights)), else None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


_UNIT_QUANTILES = np.asarray(UNIT_PERCENTILES, dtype=np.float64) / 100


def _padded(units: list[int]) -> list[int]:
    return (units + [-1] * UNITS)[:UNITS]


def _out_units(module: nn.Module | None) -> int:
    """Output features (Linear) or channels (convs) of a weight layer, or the features a
    norm module normalizes (0 when unknown)."""
    for name in ("out_features", "out_channels", "num_features", "num_channels"):
        if isinstance(getattr(module, name, None), int):
            return getattr(module, name)
    return 0


def _units_of(group: LayerSites) -> int:
    """The units (dimension 1 of its activations) of a measured group."""
    return _out_units(group.weight) or _out_units(group.norm)

WRAPPED_METRICS = ("grad_norm_v", "grad_norm_g")  # weight-space layers, at "param"


def _direction(module: nn.Module) -> nn.Parameter:
    """The direction parameter of a weight-space layer: WeightNorm's v, CosineNorm's weight."""
    return module.v if isinstance(module, weightnorm.WeightNorm) else module.weight


def _magnitude(module: nn.Module) -> torch.Tensor | None:
    """The magnitude parameter: WeightNorm's g, CosineNorm's scale (None if fixed)."""
    if isinstance(module, weightnorm.WeightNorm):
        return module.g
    return module.scale if isinstance(module.scale, nn.Parameter) else None
_NO_TENSORS = np.zeros(0, dtype=np.int64)  # no addresses: a kernel skips that part


def _saturation_kind(activation: str | None) -> int:
    if activation in _SATURATION_BOUNDS:
        return kernelspec.KIND_BOUNDS
    return kernelspec.KIND_NONE if activation is None else kernelspec.KIND_DEAD


def saturation(y: torch.Tensor, activation: str) -> float:
    """What the probe records at ``post_act`` for one activation output ``y``.

    Sigmoid/tanh: fraction of values whose derivative is below 5% of its maximum.
    ReLU/GELU: fraction of *units* (features, or channels of a conv) that are <= 0 for
    every example (and position) of the batch — dead units."""
    return float(activation_row(y, np.arange(y.numel()), hist_edges("post_act", activation),
                                activation)[-1])


def activation_row(t: torch.Tensor, sample: np.ndarray, edges: np.ndarray,
                   activation: str | None = None) -> np.ndarray:
    """The statistics the probe records for one activation tensor ``t`` (mean, var,
    percentiles, histogram over ``edges``, then saturation or dead fraction if
    ``activation`` is known, else NaN), from the sample positions ``sample``."""
    keep: list = []
    pointers, (shape,) = addresses_and_shapes([t], keep)
    layout = Layout(np.array([units_of_shape(shape)], dtype=np.int64),
                     np.array([[0, len(sample)]], dtype=np.int64), sample.astype(np.int32))
    units = np.array([_padded(unit_picks(int(layout.shapes[0, 1])))], dtype=np.int64)
    row = np.full(_SLOT_WIDTH + 1, np.nan)
    backends.current().activation_stats(pointers, layout.shapes, layout.samples, layout.sample_index,
                             np.asarray(edges, dtype=np.float64)[None],
                             np.array([_saturation_kind(activation)], dtype=np.int64),
                             np.array([_SATURATION_BOUNDS.get(activation, (np.nan, np.nan))]),
                             layout.quantiles, units, _UNIT_QUANTILES, row, 0,
                             np.array([_SLOT_WIDTH if activation else -1], dtype=np.int64),
                             layout.work32, layout.work64)
    return row


TRAIN_ACC = ("model", "train", "acc")
_NO_LOGITS = np.zeros(4, dtype=np.int64)  # rows 0: no accuracy to compute


def _logits_args(logits: torch.Tensor, targets: torch.Tensor, out: np.ndarray) -> bool:
    """Whether the compiled accuracy can read ``logits`` (N, classes; float32) and
    ``targets`` (N; int64) in place (contiguous, on the CPU); if so, their (address, rows,
    cols, address) into ``out``."""
    shape = logits.shape
    if (len(shape) == 2 and logits.dtype is torch.float32 and targets.dtype is torch.int64
            and logits.is_cpu and targets.is_cpu and logits.is_contiguous()
            and targets.is_contiguous() and targets.shape == shape[:1] and shape[0]):
        out[0], out[1], out[2], out[3] = (logits.data_ptr(), shape[0], shape[1],
                                          targets.data_ptr())
        return True
    return False


def _torch_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(1) == targets).float().mean().item()


def accuracy(logits: torch.Tensor, targets: torch.Tensor, kernels=None) -> float:
    """Fraction of rows of ``logits`` (N, classes) whose argmax is the target (one
    compiled pass instead of four tensor operations and a sync; ``kernels``: a probe's
    :attr:`Probe.kernels`, default :func:`normlab.measure.backends.current`)."""
    args = np.zeros(4, dtype=np.int64)
    if _logits_args(logits, targets, args):
        return (kernels or backends.current()).accuracy(*(int(v) for v in args))
    return _torch_accuracy(logits, targets)
