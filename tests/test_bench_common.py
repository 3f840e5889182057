"""The benchmarks' baseline is honest: the torch.nn model a person writes computes what
NormLab's model computes (same architecture, init and batches), for every method torch
has a layer for, so their step times compare like with like."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import COUNTERPARTS, native_model, step_segments  # noqa: E402
from normlab.methods.registry import NORMS
from normlab.training.config import RunConfig
from normlab.training.models import build_model
from normlab.training.trainer import load_for

BASE = {"mlp": RunConfig(dataset="digits", model="mlp", depth=3, width=100, batch_size=64),
        "cnn": RunConfig(dataset="digits", model="cnn", depth=3, width=32, activation="relu",
                         batch_size=64)}
CASES = [(m, n) for m in BASE for n in COUNTERPARTS if m in NORMS[n].models]


@pytest.fixture(scope="module")
def data():
    return load_for(BASE["mlp"])


@pytest.mark.parametrize("model,name", CASES)
def test_native_model_is_the_same_function_as_normlabs(model, name, data):
    cfg = BASE[model].replace(norm=name)
    shape = tuple(data.input_shape)
    torch.manual_seed(0)
    ours = build_model(cfg, shape, data.num_classes)
    torch.manual_seed(0)
    native = native_model(cfg, shape, data.num_classes)
    x = data.view(data.x_train, model)[:64]
    torch.testing.assert_close(native(x), ours(x), atol=1e-5, rtol=1e-4)
    if name == "rms" and model == "cnn":
        return  # nn.RMSNorm((C, H, W)) learns g per position: other parameters, same cost
    assert (sorted(p.numel() for p in native.parameters()) ==
            sorted(p.numel() for p in ours.parameters()))


def test_native_loop_trains_like_normlabs_loop(data):
    """Same batches and init: the two loops' parameters agree after a few steps."""
    cfg = BASE["mlp"].replace(norm="batch")
    models = {}

    def keep(key):
        def setup(model):
            models[key] = model
        return setup

    for key, build in (("ours", build_model), ("native", native_model)):
        loop = step_segments(cfg, data, build, setup=keep(key))
        next(loop)
        loop.send(5)
    for a, b in zip(models["ours"].parameters(), models["native"].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
