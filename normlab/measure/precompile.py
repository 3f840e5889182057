"""Compile the probes' statistics kernels once per machine, in the background:
``python -m normlab.measure.precompile`` (started by :func:`normlab.measure.backends.start_compile`).

It runs a few probed steps of a tiny model with the compiled kernels (so numba compiles
and caches every kernel with the signatures a training run uses), then writes the marker
that tells :func:`normlab.measure.backends.current` the cache is built. One compile at a
time per machine: a second one finds the lock held and exits.
"""
from __future__ import annotations

import fcntl
import os
import sys

from normlab.measure import backends
from normlab.measure.backends import MODE_ENV


def compile_kernels() -> bool:
    """Compile (or load) every kernel by running what a training run calls, then write
    the marker. Returns False without compiling if another process holds the lock."""
    path = backends.marker()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if path.exists():
            return True
        before = os.environ.get(MODE_ENV)
        os.environ[MODE_ENV] = "compiled"
        try:
            _exercise()
        finally:
            if before is None:
                del os.environ[MODE_ENV]
            else:
                os.environ[MODE_ENV] = before
        tmp = path.with_suffix(".tmp")
        tmp.write_text("compiled\n")
        tmp.replace(path)
        return True


def _exercise() -> None:
    """Call every kernel the way a training run does (a few probed steps of a tiny model:
    sigmoid and ReLU blocks, with and without ``after_backward``), so each compiles."""
    import torch
    from torch import nn

    from normlab.measure.probes import Probe, accuracy, saturation

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    with Probe(model) as probe:
        for step in range(3):
            probe.arm(step)
            logits = model(x)
            probe.after_forward()
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            if step:
                probe.after_backward()
            opt.step()
            probe.after_update({("model", "train", "acc"): accuracy(logits, y, probe.kernels)})
    saturation(torch.randn(4, 3).sigmoid(), "sigmoid")


if __name__ == "__main__":  # the background compile
    try:
        compile_kernels()
    except Exception as exc:  # into the log next to the marker; the fallback stays
        print(f"normlab: compiling the statistics kernels failed: {exc}", file=sys.stderr)
        sys.exit(1)
