"""normlab.log: a user's own loop recorded into the store as an external run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import normlab
from normlab.measure.probes import Probe
from normlab.runs import exchange
from normlab.runs.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _loop(model, hooks, steps: int = 12, on_step=None):
    """A plain user loop; ``hooks`` is a LoggedRun or a Probe (same protocol)."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 8, generator=gen), torch.randint(0, 3, (128,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        idx = torch.arange(step * 16, step * 16 + 16) % 128
        hooks.arm(step)
        out = model(x[idx])
        hooks.after_forward()
        loss = nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        hooks.after_backward()
        opt.step()
        if isinstance(hooks, Probe):
            hooks.after_update({("model", "train", "loss"): loss.item()})
        else:
            hooks.after_update(loss=loss.item())
        if on_step:
            on_step(step)


def test_logged_run_holds_what_the_probe_measures(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    config = {"lr": 0.1, "arch": "mlp-bn", "device": torch.device("cpu")}
    with normlab.log(_model(), name="my-mlp", config=config, store=store, every=2,
                     total_steps=12) as run:
        _loop(run.probe.model, run)
        run.log(11, {"val/loss": 0.5, ("model", "val", "acc"): 0.75})
    with Probe(_model(), every=2) as probe:
        _loop(probe.model, probe)
    expected = probe.flush().to_frame(run.run_id)

    record = store.run(run.run_id)
    assert record["status"] == "done" and record["source"] == "external"
    assert record["name"] == record["norm"] == "my-mlp"  # its label wherever runs are shown
    assert record["config"] == {"lr": 0.1, "arch": "mlp-bn", "device": "cpu"}  # as given
    assert record["total_steps"] == 12 and record["step"] == 11
    stored = store.metrics(run.run_id)
    probe_rows = stored[stored["site"] != "val"]
    key = ["step", "layer", "site", "metric"]
    merged = probe_rows.astype({"layer": str, "site": str, "metric": str}).merge(
        expected, on=key, suffixes=("", "_ref"))
    assert len(merged) == len(expected) == len(probe_rows)
    np.testing.assert_array_equal(merged["value"], merged["value_ref"])
    val = stored[stored["site"] == "val"].set_index("metric")["value"]
    assert val["loss"] == 0.5 and val["acc"] == 0.75


def test_an_exception_fails_the_run_and_propagates(tmp_path):
    store = Store(tmp_path / "s.sqlite")

    def boom(step):
        if step == 5:
            raise RuntimeError("CUDA out of memory (pretend)")

    with pytest.raises(RuntimeError, match="pretend"):
        with normlab.log(_model(), name="boom", store=store, every=1) as run:
            _loop(run.probe.model, run, on_step=boom)
    record = store.run(run.run_id)
    assert record["status"] == "failed" and record["step"] == 5
    assert "RuntimeError at step 5: CUDA out of memory" in record["error"]
    assert store.metrics(run.run_id)["step"].max() == 5  # what was recorded is kept


def test_cancel_from_the_dashboard_ends_the_loop_quietly(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with normlab.log(_model(), name="c", store=store, every=1) as run:
        run.flush_seconds = 0  # obey requests at every step
        _loop(run.probe.model, run, steps=50,
              on_step=lambda s: s == 3 and store.request(run.run_id, "cancel"))
    record = store.run(run.run_id)
    assert record["status"] == "cancelled" and record["step"] == 4


def test_a_non_finite_loss_ends_the_run_as_diverged(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with normlab.log(_model(), name="d", store=store, every=1) as run:
        for step in range(10):
            run.arm(step)
            run.after_update(loss=float("nan") if step == 2 else 1.0)
    record = store.run(run.run_id)
    assert record["status"] == "diverged" and "step 2" in record["error"]


def test_the_engine_never_claims_an_external_run(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with normlab.log(_model(), name="mine", store=store) as run:
        assert store.claim_run(os.getpid()) is None
        assert store.run(run.run_id)["status"] == "running"
    path = exchange.export(store, run.comparison_id, tmp_path / "mine.json")
    other = Store(tmp_path / "other.sqlite")
    (rid,) = exchange.import_file(other, path)
    assert other.run(rid)["source"] == "external" and other.run(rid)["status"] == "done"


def test_a_killed_logging_process_leaves_an_interrupted_run(tmp_path):
    path = tmp_path / "s.sqlite"
    script = textwrap.dedent(f"""
        import time, torch, normlab
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        with normlab.log(model, name="killed", store={str(path)!r}, every=1) as run:
            for step in range(100000):
                run.arm(step); model(torch.randn(8, 4)).sum().backward(); run.after_update(loss=1.0)
                if step == 3: print("ready", flush=True)
                time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.7)  # at least one flush
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = Store(path)
    (rid,) = store.runs()["id"]
    assert store.run(rid)["status"] == "running"
    assert store.mark_interrupted() == [rid]  # what the next engine start does
    record = store.run(rid)
    assert record["status"] == "interrupted" and len(store.metrics(rid)) > 0


def test_bad_arguments_are_explained(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="needs a name"):
        with normlab.log(_model(), name="  ", store=store):
            pass
    with pytest.raises(TypeError, match="torch.nn.Module"):
        normlab.log("resnet", name="x", store=store)
    with pytest.raises(ValueError, match="'site/metric'"):
        with normlab.log(_model(), name="x", store=store) as run:
            run.log(0, {"loss": 1.0})
    assert store.runs()["status"].tolist() == ["failed"]  # the second block's run


def test_runs_without_seed_norm_or_steps_render_everywhere(tmp_path, monkeypatch):
    """An external run and a failed run with an empty config, on every page and in the
    CLI: shown with what they have, never an exception."""
    from streamlit.testing.v1 import AppTest

    import normlab.ui.common
    from normlab.cli import main

    path = tmp_path / "s.sqlite"
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    monkeypatch.setattr(normlab.ui.common, "ensure_engine", lambda *a, **k: None)
    store = Store(path)
    with normlab.log(_model(), name="my-net", store=store, every=2) as run:
        _loop(run.probe.model, run)
    cid, (odd,) = store.create_comparison([{"model": "resnetish"}], name="odd")
    store.claim_run(os.getpid())
    store.finish(odd, "failed", 0, "unknown model 'resnetish'")
    runs = store.runs()
    assert runs["seed"].isna().all() and runs["total_steps"].isna().all()
    for page in ("pages/0_home.py", "pages/1_compare.py", "pages/2_layers.py",
                 "pages/3_runs.py"):
        for query in ({}, {"comparison": run.comparison_id}, {"comparison": cid},
                      {"runs": ",".join(runs["id"])}):
            at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=60)
            for k, v in query.items():
                at.query_params[k] = v
            at.switch_page(page).run()
            assert not at.exception, (page, query, [e.value for e in at.exception])
            if page in ("pages/1_compare.py", "pages/2_layers.py") \
                    and query.get("comparison") == run.comparison_id:
                assert at.get("vega_lite_chart"), (page, "the logged run is charted")
    for argv in (["list"], ["list", "--status", "failed"], ["show", odd], ["show", cid],
                 ["show", run.run_id]):
        assert main(argv) == 0, argv


def test_the_readme_example_logs_a_resnet_and_a_transformer(tmp_path, monkeypatch):
    """docs/examples/own_loop.py (the README's example), a few steps of each model."""
    import runpy

    monkeypatch.setenv("NORMLAB_STORE", str(tmp_path / "s.sqlite"))
    example = runpy.run_path(str(ROOT / "docs/examples/own_loop.py"), run_name="example")
    cnn = example["train"](example["resnet"], "resnet-ish", example["digits"](),
                           example["cnn_loss"], steps=6)
    lm = example["train"](example["model"], "transformer", example["tokens"](),
                          example["lm_loss"], steps=6)
    store = Store(tmp_path / "s.sqlite")
    layers = {rid: set(store.metrics(rid)["layer"].astype(str)) for rid in (cnn, lm)}
    assert {"1.bn1", "1.bn2", "1.relu", "1.relu#2", "2.conv1", "5"} <= layers[cnn]
    assert {"0.1.ln1", "0.1.ln2", "0.1.attn", "0.2.mlp.1", "0.3", "1"} <= layers[lm]
    assert store.runs()["status"].tolist() == ["done", "done"]
