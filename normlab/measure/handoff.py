"""How a probe hands tensors to the compiled kernels (:mod:`normlab.measure.kernels`).

* their memory: the int64 data address of each tensor, read in place (a tensor that is
  not contiguous float32 on the CPU is copied first, the copy kept alive for the call);
* the layout of a step's activations: per tensor its (outer, units, inner) shape, the
  positions of its sample, the quantiles to report, the kernel's scratch;
* the helper thread a threaded probe runs a kernel on, beside the training thread
  (:class:`Helper`: one job at a time, handed over and joined through two locks).

The probe itself, and what it measures, is :mod:`normlab.measure.probes`.
"""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from normlab.measure import kernelspec
from normlab.measure.schema import HIST_BINS, PERCENTILES

Z95 = 1.959963984540054  # the normal 97.5% quantile


class Helper:
    """A probe's helper thread: one job at a time, handed over and joined through two
    locks (a release and an acquire each: no future, no queue, where a
    ``ThreadPoolExecutor`` made a future and a work item and woke its thread through a
    queue at every step). Started at a probe's first job, ended at its ``__exit__``."""

    def __init__(self):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job: tuple | None = None
        self._error: BaseException | None = None
        self.busy = False
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._serve, name="normlab-probe", daemon=True)
        self._thread.start()
        _live.add(self)

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                self._done.release()
                return
            try:
                job[0](*job[1])
            except BaseException as error:  # handed to the training thread at join
                self._error = error
            self._done.release()

    def submit(self, function, args: tuple) -> None:
        """Run ``function(*args)`` on the thread (after the job in flight, if any)."""
        self.join()
        self._job, self.busy = (function, args), True
        self._go.release()

    def join(self) -> None:
        """Wait for the job in flight (if any); raise what it raised."""
        if self.busy:
            self._done.acquire()
            self.busy, self._job = False, None
            if self._error is not None:
                error, self._error = self._error, None
                raise error

    def stop(self) -> None:
        self.join()
        if self._thread.is_alive() and self.pid == os.getpid():
            self._job = None
            self._go.release()
            self._done.acquire()
            self._thread.join()
        _live.discard(self)


_live: "weakref.WeakSet[Helper]" = weakref.WeakSet()


def stop_statistics_thread() -> None:
    """End every probe helper thread of this process (a probe's own ``__exit__`` ends
    its thread; this is for a process about to fork, so the child is forked from a
    single-threaded parent)."""
    for helper in list(_live):
        helper.stop()


def sample_index(n: int, size: int | None) -> np.ndarray:
    """A fixed random subset of ``size`` positions out of ``n`` (all of them when ``size``
    is None or at least ``n``), drawn from its own generator: the training RNG is never
    touched, so probing does not change a run."""
    if size is None or n <= size:
        return np.arange(n, dtype=np.int64)
    gen = torch.Generator().manual_seed(n)
    return torch.randperm(n, generator=gen)[:size].sort().values.numpy()


def addresses(tensors: list[torch.Tensor | None], keep: list) -> np.ndarray:
    """The data address of each tensor for :mod:`normlab.measure.kernels` (0 for None). A tensor
    that is not contiguous float32 on the CPU is copied into one first; the copy goes in
    ``keep``, which the caller holds until the kernel has run."""
    return addresses_and_shapes(tensors, keep)[0]


def addresses_and_shapes(tensors: list[torch.Tensor | None], keep: list
                          ) -> tuple[np.ndarray, tuple]:
    """:func:`addresses`, and the tensors' shapes (None for None), in one pass."""
    pointers, shapes = [], []
    f32 = torch.float32
    for t in tensors:
        if t is None:
            pointers.append(0)
            shapes.append(None)
            continue
        if not (t.dtype is f32 and t.is_cpu and t.is_contiguous()):
            t = t.detach().to("cpu", f32).contiguous()
            keep.append(t)
        pointers.append(t.data_ptr())
        shapes.append(t.shape)
    return np.array(pointers, dtype=np.int64), tuple(shapes)


class Addresses:
    """:func:`addresses` of the parameters or their gradients, re-checked only when a
    data address changes (torch keeps a parameter's gradient at the parameter's shape,
    dtype and layout, so the same address means the same checked memory)."""

    def __init__(self):
        self._pointers: list = []
        self._keep: list = []
        self.addresses = np.zeros(0, dtype=np.int64)
        self.sizes = np.zeros(0, dtype=np.int64)

    def update(self, tensors: list[torch.Tensor | None]) -> np.ndarray:
        pointers = [None if t is None else t.data_ptr() for t in tensors]
        if pointers != self._pointers or self._keep:  # copies are snapshots: redone
            self._keep = []
            self.addresses = addresses(tensors, self._keep)
            self.sizes = np.array([0 if t is None else t.numel() for t in tensors],
                                  dtype=np.int64)
            self._pointers = pointers
        return self.addresses


def units_of_shape(shape: torch.Size) -> tuple[int, int, int]:
    """(outer, units, inner) of an activation: (B, C, H·W) for (B, C, H, W); the units
    are dimension 1 (features, or a conv's channels)."""
    if len(shape) < 2:
        return 1, (shape[0] if shape else 1), 1
    outer, units = shape[0], shape[1]
    return outer, units, (shape.numel() // (outer * units) if outer * units else 0)


@dataclass
class Layout:
    """What the activation kernel needs for one set of activation shapes."""

    shapes: np.ndarray  # (S, 3) int64: (outer, units, inner)
    samples: np.ndarray  # (S, 2) int64: (start, length) of each slot's sample positions
    sample_index: np.ndarray  # int32: the sample positions of each tensor size, concatenated
    quantiles: np.ndarray = field(init=False)  # (S, 5): p15, p50, p85, the median's interval
    work32: np.ndarray = field(init=False)  # the kernel's scratch, sized for the samples
    work64: np.ndarray = field(init=False)

    def __post_init__(self):
        longest = int(self.samples[:, 1].max()) if len(self.samples) else 1
        unit = int((self.shapes[:, 0] * self.shapes[:, 2]).max()) if len(self.shapes) else 0
        self.quantiles = np.array([quantiles_for(int(m), int(n)) for (_, m), n in
                                   zip(self.samples, self.shapes.prod(axis=1))]
                                  ).reshape(-1, len(PERCENTILES) + 2)
        n32, n64 = kernelspec.workspace(max(longest, 1), HIST_BINS, len(PERCENTILES) + 2, unit)
        self.work32, self.work64 = np.empty(n32, np.float32), np.empty(n64, np.int64)


def quantiles_for(m: int, n: int) -> np.ndarray:
    """The quantiles of a sample of ``m`` of ``n`` values the probe reports: the 15/50/85th
    percentiles, then the 95% interval of the median's sampling error, as quantiles of
    the sample: 0.5 ∓ 1.96·sqrt(0.25 · fpc / m), fpc = (n − m)/(n − 1) (sampling without
    replacement; 0 when every value is used)."""
    fpc = (n - m) / (n - 1) if n > 1 else 0.0
    half = Z95 * np.sqrt(0.25 * max(fpc, 0.0) / max(m, 1))
    return np.array([q / 100 for q in PERCENTILES]
                    + [max(0.5 - half, 0.0), min(0.5 + half, 1.0)])
