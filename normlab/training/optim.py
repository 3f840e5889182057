"""Torch's optimizers, used without importing ``torch._dynamo`` (the compiler).

``torch.optim`` wraps several optimizer methods for ``torch.compile``: ``add_param_group``
and ``zero_grad`` in ``torch._disable_dynamo`` (its first call imports ``torch._dynamo``),
and ``step`` in ``_use_grad``, which imports it too and calls ``torch._dynamo.graph_break()``
twice per step. In a process that never compiles, that import is ~2 s of CPU (as much as
``import torch``) in the run engine's start, before the first run can begin.

:class:`SGD` and :class:`Adam` are ``torch.optim.SGD`` and ``torch.optim.Adam`` (subclasses:
``isinstance`` holds, state dicts load either way) whose three methods call torch's own
function under those wrappers, so every update is torch's own code, bit for bit
(``tests/test_optim.py`` compares parameters and state after many steps). ``step`` sets
grad mode as ``_use_grad`` does and keeps the step hooks and the profiler label (torch
wraps a subclass's ``step`` with them at construction). Under ``torch.compile`` the
methods go through torch's wrappers as usual, graph breaks included.
"""
from __future__ import annotations

import inspect

import torch


def _unwrapped(function):
    """The function under torch's wrappers (each is a ``functools.wraps``: ``__wrapped__``)."""
    return inspect.unwrap(function)


def _without_hooks(step):
    """A ``torch.optim`` class's ``step`` without the step-hook wrapper torch puts on the
    class when its first instance is made (ours runs the hooks once already)."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


_ADD_PARAM_GROUP = _unwrapped(torch.optim.Optimizer.add_param_group)
_ZERO_GRAD = _unwrapped(torch.optim.Optimizer.zero_grad)


class _Eager:
    """The methods' bodies without the dynamo wrappers, for a ``torch.optim`` subclass."""

    _torch_class: type[torch.optim.Optimizer]
    _torch_step: staticmethod  # the torch class's step body, unwrapped

    def add_param_group(self, param_group: dict) -> None:
        if torch.compiler.is_compiling():
            return self._torch_class.add_param_group(self, param_group)
        _ADD_PARAM_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if torch.compiler.is_compiling():
            return self._torch_class.zero_grad(self, set_to_none)
        _ZERO_GRAD(self, set_to_none)

    def step(self, closure=None):
        if torch.compiler.is_compiling():  # torch's step with its graph breaks; the hooks
            return _without_hooks(self._torch_class.step)(self, closure)  # wrap this one
        # what torch's _use_grad does around the step, without its two graph breaks
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return self._torch_step(self, closure)


class SGD(_Eager, torch.optim.SGD):
    """``torch.optim.SGD`` (plain or with momentum) that never imports ``torch._dynamo``."""

    _torch_class = torch.optim.SGD
    _torch_step = staticmethod(_unwrapped(torch.optim.SGD.step))


class Adam(_Eager, torch.optim.Adam):
    """``torch.optim.Adam`` that never imports ``torch._dynamo``."""

    _torch_class = torch.optim.Adam
    _torch_step = staticmethod(_unwrapped(torch.optim.Adam.step))
