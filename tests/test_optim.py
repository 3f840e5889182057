"""The trainer's optimizers (``normlab.training.optim``): torch's own update, bit for bit,
without importing ``torch._dynamo``.

* every optimizer the config offers gives, after many steps of the trainer's loop, the
  same parameters, buffers and optimizer state as the ``torch.optim`` class a person
  writes with the same settings (compared with ``torch.equal``);
* it is that ``torch.optim`` class (``isinstance``), step hooks and closures included,
  and under ``torch.compile`` it steps as torch does, its hooks run once;
* training a run (every quick-start method, each optimizer) and the engine's warm-up
  import no ``torch._dynamo`` (checked in a fresh interpreter).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normlab.training.config import OPTIMIZERS, RunConfig
from normlab.training.models import build_model
from normlab.training.trainer import make_optimizer

ROOT = Path(__file__).resolve().parents[1]

# what a person writes for each config name (the reference, independent of normlab)
TORCH = {
    "sgd": lambda cfg, p: torch.optim.SGD(p, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "momentum": lambda cfg, p: torch.optim.SGD(p, lr=cfg.lr, momentum=0.9,
                                               weight_decay=cfg.weight_decay),
    "adam": lambda cfg, p: torch.optim.Adam(p, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


def test_every_config_optimizer_has_a_reference():
    assert set(TORCH) == set(OPTIMIZERS)


def _train(cfg: RunConfig, make, steps: int):
    """The trainer's loop (zero_grad keeping the tensors, backward, step) on fixed data,
    on one torch thread as the engine's workers train (two contend with other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _loop(cfg, make, steps)
    finally:
        torch.set_num_threads(before)


def _loop(cfg: RunConfig, make, steps: int):
    torch.manual_seed(0)
    model = build_model(cfg, (64,), 10)
    opt = make(cfg, model.parameters())
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 64, generator=data)
        y = torch.randint(0, 10, (32,), generator=data)
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("norm", ["batch", "weight"])
def test_steps_are_bit_identical_to_torch_optim(optimizer, norm):
    cfg = RunConfig(optimizer=optimizer, norm=norm, lr=0.05, weight_decay=1e-3, width=24,
                    depth=2)
    ours, ours_opt = _train(cfg, make_optimizer, 60)
    ref, ref_opt = _train(cfg, TORCH[optimizer], 60)
    assert isinstance(ours_opt, type(ref_opt))
    start = build_model(cfg, (64,), 10)
    moved = 0
    for (name, a), (_, b), (_, c) in zip(ours.state_dict().items(), ref.state_dict().items(),
                                         start.state_dict().items()):
        assert torch.equal(a, b), name
        moved += not torch.equal(a, c)
    assert moved >= 4  # the parameters did change
    assert ours_opt.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]
    ours_state, ref_state = ours_opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert ours_state.keys() == ref_state.keys()
    assert bool(ref_state) == (optimizer != "sgd")  # momentum buffers, Adam's moments
    for key in ref_state:
        assert ours_state[key].keys() == ref_state[key].keys()
        for field, value in ref_state[key].items():
            assert torch.equal(torch.as_tensor(ours_state[key][field]),
                               torch.as_tensor(value)), (key, field)


def test_step_hooks_closure_and_grad_mode_behave_as_torch():
    cfg = RunConfig(optimizer="momentum", lr=0.1, width=8, depth=1)
    model = build_model(cfg, (4,), 3)
    opt = make_optimizer(cfg, model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    seen_grad_mode = []

    def closure():
        seen_grad_mode.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad():  # the closure still gets grad mode, as torch's step gives it
        loss = opt.step(closure)
        assert not torch.is_grad_enabled()  # and the caller's mode is back afterwards
    assert calls == ["pre", "post"] and seen_grad_mode == [True]
    assert loss is not None and loss.requires_grad
    opt.step()  # outside no_grad: the update itself records no graph
    assert torch.is_grad_enabled()
    assert all(p.grad_fn is None for p in model.parameters())
    state = opt.state_dict()
    fresh = torch.optim.SGD(model.parameters(), lr=1.0)
    fresh.load_state_dict(state)  # a plain torch optimizer loads it
    assert fresh.param_groups[0]["momentum"] == 0.9


NO_DYNAMO = """
import json, sys
from dataclasses import replace
from normlab.runs.engine import _warm_up
_warm_up()
after_warm_up = 'torch._dynamo' in sys.modules
from normlab.training.trainer import train
from normlab.views import compareview as views, urlstate
quick = views.QUICK_START
for optimizer in ("sgd", "momentum", "adam"):
    for norm in urlstate.default_methods(quick.model):
        train(replace(quick, norm=norm, optimizer=optimizer, steps=3, eval_interval=3))
print(json.dumps({"warm_up": after_warm_up, "runs": 'torch._dynamo' in sys.modules}))
"""


def test_warm_up_and_runs_never_import_the_compiler():
    out = subprocess.run([sys.executable, "-c", NO_DYNAMO], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"warm_up": False,
                                                                "runs": False}


def test_under_torch_compile_the_step_is_torchs_and_hooks_run_once():
    cfg = RunConfig(optimizer="adam", lr=0.01, width=8, depth=1)
    models = [build_model(cfg, (4,), 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = make_optimizer(cfg, models[0].parameters())
    ref = TORCH["adam"](cfg, models[1].parameters())
    calls = []
    ours.register_step_post_hook(lambda *a: calls.append("post"))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for model, opt in ((models[0], ours), (models[1], ref)):
        F.cross_entropy(model(x), y).backward()
        torch.compile(opt.step, backend="eager")()
    assert calls == ["post"]
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
