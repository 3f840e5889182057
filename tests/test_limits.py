"""Resource caps (issue 11, point 2): estimates checked against real models and runs,
refusals with the estimate and the limit, env overrides, and a fast ``list``."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from normlab import cli
from normlab.runs.store import Store
from normlab.training import limits
from normlab.training.config import ConfigError, RunConfig
from normlab.training.models import build_model
from normlab.training.trainer import Trainer, train


@pytest.mark.parametrize("cfg, shape, classes", [
    (RunConfig(model="mlp", depth=3, width=100), (1, 8, 8), 10),
    (RunConfig(model="cnn", depth=4, width=16), (1, 8, 8), 10),
    (RunConfig(model="cnn", depth=5, width=8, norm="group"), (1, 28, 28), 10),
    (RunConfig(model="cnn", depth=3, width=8, norm="layer"), (1, 40), 10),
    (RunConfig(dataset="moons", depth=2, width=5, norm="layer"), (2,), 2),
])
def test_parameter_count_is_exact(cfg, shape, classes):
    model = build_model(cfg, shape, classes)
    assert limits.parameter_count(cfg, shape, classes) == sum(p.numel()
                                                              for p in model.parameters())


@pytest.mark.parametrize("cfg", [
    RunConfig(dataset="digits", steps=30, depth=2, width=8, eval_interval=10),
    RunConfig(dataset="moons", steps=25, depth=4, width=8, record_interval=3,
              eval_interval=7, activation="relu"),
])
def test_values_stored_bounds_what_a_run_records(cfg):
    batch, _ = train(cfg)
    stored = int(np.isfinite(batch.values).sum())
    estimate = limits.values_stored(cfg)
    # an upper bound: off by one record and the validation pair of non-eval steps only
    slack = limits.values_per_record(cfg) + 2 * (cfg.steps // cfg.record_interval + 1)
    assert stored <= estimate <= stored + slack


def test_issue_repros_are_refused_with_estimate_and_limit(capsys, tmp_path):
    store = str(tmp_path / "s.sqlite")
    cases = [
        (["--model", "cnn", "--width", "4096", "--depth", "64"],
         "--width: one run would need about 143.7 GB of memory (9,513,545,738 parameters"),
        (["--dataset", "moons", "--n_samples", "1000000000"],
         "--n_samples: n_samples 1,000,000,000 is more than the cap of 1,000,000"),
        (["--depth", "64", "--width", "8", "--steps", "2000"],
         "--record_interval: the run would store about "
         f"{limits.values_stored(RunConfig(depth=64, width=8, steps=2000)):,} values"),
        (["--seeds", ",".join(map(str, range(100_000)))],
         "--runs: 100,000 runs in one comparison is more than the cap of 200"),
    ]
    for argv, message in cases:
        started = time.monotonic()
        assert cli.main(["run", *argv, "--store", store]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert time.monotonic() - started < 30
    assert Store(store).runs().empty  # nothing queued


def test_suggested_record_interval_fits():
    cfg = RunConfig(depth=64, width=8, steps=2000)
    message = limits.problems(cfg)["record_interval"]
    every = int(message.split("set record_interval to ")[1].split()[0])
    assert not limits.problems(cfg.replace(record_interval=every))
    assert limits.problems(cfg.replace(record_interval=every - 1))


def test_caps_follow_the_environment(monkeypatch, capsys, tmp_path):
    big = RunConfig(depth=64, width=8, steps=2000)
    assert limits.problems(big)
    monkeypatch.setenv("NORMLAB_MAX_VALUES", str(limits.values_stored(big)))
    assert not limits.problems(big)
    monkeypatch.setenv("NORMLAB_MAX_RUNS", "3")
    assert cli.main(["run", "--norms", "batch,layer,none,rms", "--store",
                     str(tmp_path / "s.sqlite")]) == 2
    assert "4 runs in one comparison is more than the cap of 3" in capsys.readouterr().err
    monkeypatch.setenv("NORMLAB_MAX_RUN_MEMORY", "1e-9")
    assert "memory" in limits.problems(RunConfig())["width"]
    monkeypatch.setenv("NORMLAB_MAX_RUNS", "lots")
    assert cli.main(["run", "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "NORMLAB_MAX_RUNS='lots' is not a number" in capsys.readouterr().err


def test_trainer_enforces_caps_with_the_real_data(monkeypatch):
    monkeypatch.setenv("NORMLAB_MAX_VALUES", "1000")  # e.g. an imported queued run
    with pytest.raises(ConfigError, match="record_interval"):
        Trainer(RunConfig(steps=100, depth=2, width=8))


def test_list_stays_fast_with_10000_runs(tmp_path, capsys):
    path = tmp_path / "big.sqlite"
    cfg = json.dumps(RunConfig().to_dict())
    with Store(path) as store, store._write() as conn:
        for c in range(50):
            conn.execute("INSERT INTO comparisons (id, name, created_at) VALUES (?, ?, ?)",
                         (f"c{c:08x}", f"comparison {c}", 1e9 + c))
            conn.executemany(
                "INSERT INTO runs (id, comparison_id, position, config, norm, seed, dataset, "
                "model, total_steps, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(f"r{c:04x}{i:04x}", f"c{c:08x}", i, cfg, "batch", i, "digits", "mlp",
                  1000, 1e9 + c) for i in range(200)])
    started = time.monotonic()
    assert cli.main(["list", "--store", str(path)]) == 0
    elapsed = time.monotonic() - started
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10_000 and lines[0].startswith("r00000000  c00000000  batch")
    assert elapsed < 2.0, f"list took {elapsed:.2f}s for 10,000 runs"
