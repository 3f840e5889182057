"""Probe attribution on common architectures, checked against forward hooks written
independently: every norm module is a site under its own path, every weight (QKV
included) is tracked by path, and a reused activation is measured at each call."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.measure.probes import Probe


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one ReLU module used twice."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


class PreLNBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 20, d: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(PreLNBlock(d))
        self.head = nn.Linear(d, 3)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)).mean(1))


class SharedActMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 10), nn.Linear(10, 10), nn.Linear(10, 2)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


def _hooks(model: nn.Module, names: list[str]) -> dict[str, list]:
    """name -> [(input, output) per call] of the named modules, by plain forward hooks."""
    seen: dict[str, list] = {n: [] for n in names}
    modules = dict(model.named_modules())
    for n in names:
        def hook(m, i, o, n=n):
            o = o[0] if isinstance(o, tuple) else o
            seen[n].append((i[0].detach().clone(), o.detach().clone()))
        modules[n].register_forward_hook(hook)
    return seen


def _probe_step(model, x, y) -> dict:
    with Probe(model, sample=None) as probe:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        probe.arm(0)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        probe.after_backward()
        opt.step()
        probe.after_update()
        frame = probe.flush().to_frame()
    return frame.set_index(["layer", "site", "metric"])["value"], grads


def _assert_stats(got, layer: str, site: str, t: torch.Tensor) -> None:
    v = t.double().numpy().ravel()
    assert got[layer, site, "mean"] == pytest.approx(v.mean(), abs=1e-6), (layer, site)
    assert got[layer, site, "var"] == pytest.approx(v.var(), rel=1e-5, abs=1e-8), (layer, site)
    assert got[layer, site, "p50"] == pytest.approx(np.percentile(v, 50), abs=1e-6)


def test_resnet_block():
    torch.manual_seed(0)
    model = ResNetish()
    seen = _hooks(model, ["layer1.0.bn1", "layer1.0.bn2", "layer1.0.relu", "stem", "fc"])
    x, y = torch.randn(6, 1, 5, 5), torch.randint(0, 3, (6,))
    got, grads = _probe_step(model, x, y)
    layers = set(got.index.get_level_values(0))
    assert {"layer1.0.bn1", "layer1.0.bn2", "layer1.0.relu", "layer1.0.relu#2"} <= layers
    for bn in ("layer1.0.bn1", "layer1.0.bn2"):
        (inp, out), = seen[bn]
        _assert_stats(got, bn, "pre_norm", inp)
        _assert_stats(got, bn, "post_norm", out)
    first, second = seen["layer1.0.relu"]  # after bn1, then after the residual add
    _assert_stats(got, "layer1.0.relu", "post_act", first[1])
    _assert_stats(got, "layer1.0.relu#2", "post_act", second[1])
    dead = (second[1] <= 0).all(dim=(0, 2, 3)).double().mean().item()
    assert got["layer1.0.relu#2", "post_act", "dead"] == pytest.approx(dead)
    # weights by path; the head and the stem (no norm takes their output) record it
    for name, param in (("layer1.0.conv1", "layer1.0.conv1.weight"),
                        ("layer1.0.conv2", "layer1.0.conv2.weight"), ("fc", "fc.weight")):
        assert got[name, "param", "grad_norm"] == pytest.approx(
            grads[param].double().norm().item(), rel=1e-6)
    _assert_stats(got, "fc", "pre_norm", seen["fc"][0][1])
    _assert_stats(got, "stem", "pre_norm", seen["stem"][0][1])
    assert ("layer1.0.conv1", "pre_norm", "mean") not in got.index  # bn1 records it


def test_pre_ln_transformer_block():
    torch.manual_seed(0)
    model = TinyTransformer()
    seen = _hooks(model, ["blocks.0.ln1", "blocks.0.ln2", "blocks.0.mlp.1", "embed"])
    tokens, y = torch.randint(0, 20, (4, 5)), torch.randint(0, 3, (4,))
    got, grads = _probe_step(model, tokens, y)
    for ln in ("blocks.0.ln1", "blocks.0.ln2"):  # each under its own path
        (inp, out), = seen[ln]
        _assert_stats(got, ln, "pre_norm", inp)
        _assert_stats(got, ln, "post_norm", out)
    _assert_stats(got, "blocks.0.mlp.1", "post_act", seen["blocks.0.mlp.1"][0][1])
    _assert_stats(got, "embed", "pre_norm", seen["embed"][0][1])
    tracked = {"blocks.0.attn": "blocks.0.attn.in_proj_weight",  # Q, K and V
               "blocks.0.attn.out_proj": "blocks.0.attn.out_proj.weight",
               "blocks.0.mlp.0": "blocks.0.mlp.0.weight", "blocks.0.mlp.2": "blocks.0.mlp.2.weight",
               "embed": "embed.weight", "head": "head.weight"}
    for layer, param in tracked.items():
        assert got[layer, "param", "grad_norm"] == pytest.approx(
            grads[param].double().norm().item(), rel=1e-6), layer
    assert not [k for k in got.index if k[0] == "blocks.0.attn" and k[1] == "post_norm"]


def test_mlp_with_a_shared_activation_is_measured_at_each_call():
    torch.manual_seed(0)
    model = SharedActMLP()
    seen = _hooks(model, ["act"])
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    with Probe(model, sample=None) as probe:  # two recorded steps: the second has the slots
        for step in range(2):
            probe.arm(step)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            probe.after_update()
        frame = probe.flush().to_frame()
    got = frame[frame["step"] == 1].set_index(["layer", "site", "metric"])["value"]
    first, second = seen["act"][2], seen["act"][3]  # step 1's two calls
    _assert_stats(got, "act", "post_act", first[1])
    _assert_stats(got, "act#2", "post_act", second[1])
    sat = ((1 - second[1].square()) < 0.05).double().mean().item()
    assert got["act#2", "post_act", "saturated"] == pytest.approx(sat)
    step0 = frame[frame["step"] == 0]
    assert set(step0.loc[step0["site"] == "post_act", "layer"]) == {"act", "act#2"}


def test_an_evaluation_pass_between_arm_and_training_is_not_measured():
    torch.manual_seed(0)
    model = SharedActMLP()
    seen = _hooks(model, ["act"])
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    with Probe(model, sample=None) as probe:
        probe.arm(0)
        with torch.no_grad():
            model(torch.randn(50, 6))  # validation
        F.cross_entropy(model(x), y).backward()
        probe.after_update()
        got = probe.flush().to_frame().set_index(["layer", "site", "metric"])["value"]
    _assert_stats(got, "act", "post_act", seen["act"][2][1])  # the training pass's
