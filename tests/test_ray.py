"""The Ray backend on a real local Ray cluster (``ray start --head`` on a free port, two
CPUs, 100 MB object store, stopped at the end): the same metrics as in-process training bit
for bit, pause/resume/cancel reaching remote runs, a killed Ray worker and a killed driver
ending runs ``interrupted`` with their flushed records; and, without a cluster, the backend
column, the claim split between the engines, and the install message without Ray.

Skipped when Ray is not installed, unless NORMLAB_REQUIRE_RAY=1 (CI), where that fails.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from normlab import cli
from normlab.runs import raydriver
from normlab.runs import store as store_mod
from normlab.runs.comparisons import compare, wait_for
from normlab.runs.store import Store
from normlab.training.config import RunConfig

QUICK = RunConfig(steps=60, eval_interval=20, width=16, depth=2)
LONG = RunConfig(steps=1_000_000, eval_interval=1000, width=16, depth=2, record_interval=100)


def until(predicate, timeout=300.0, poll=0.05):  # generous: a loaded host, cold workers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout}s")


# ---------------------------------------------------------------- without a cluster

def test_backend_column_splits_the_queue_between_the_engines(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _, (local,) = store.create_comparison([QUICK.to_dict()])
        _, (remote,) = store.create_comparison([QUICK.to_dict()], backend="ray")
        assert store.run(remote)["backend"] == "ray" and store.run(local)["backend"] == "local"
        assert store.unfinished(backend="ray") == 1 and store.unfinished() == 2
        assert store.claim_run(1)[0] == local
        assert store.claim_run(1) is None  # the local engine never takes a ray run
        assert store.claim_run(2, backend="ray")[0] == remote
        assert store.claim_run(2, backend="ray") is None
        with pytest.raises(ValueError, match="unknown backend 'spark'; use one of local, ray"):
            store.create_comparison([QUICK.to_dict()], backend="spark")


def test_a_version_1_file_gains_the_backend_column_with_local_runs(tmp_path, monkeypatch):
    path = tmp_path / "v1.sqlite"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO comparisons (id, name, created_at) VALUES ('c1', 'old', 1)")
    conn.execute("INSERT INTO runs (id, comparison_id, position, config, created_at) "
                 "VALUES ('r1', 'c1', 0, '{}', 1)")
    conn.commit()
    conn.close()
    monkeypatch.undo()
    with Store(path) as store:
        assert store.run("r1")["backend"] == "local"
        assert store.run("r1")["source"] == "normlab"  # schema v3: trained by NormLab
        assert store.claim_run(1, backend="ray") is None and store.claim_run(1)[0] == "r1"


def test_without_ray_the_backend_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(raydriver, "ray_available", lambda: False)
    path = tmp_path / "s.sqlite"
    code = cli.main(["run", "--norms", "batch", "--steps", "5", "--backend", "ray",
                     "--store", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f'python -m pip install "ray=={raydriver.RAY_VERSION}"' in err
    assert Store(path).runs().empty  # nothing stored
    with pytest.raises(raydriver.RayMissing, match="pip install"):
        compare(QUICK, store=path, backend="ray")
    monkeypatch.setenv("NORMLAB_RAY_ADDRESS", "ray://nowhere:10001")
    assert raydriver.default_backend() == "ray"
    with pytest.raises(raydriver.RayMissing):  # the address alone switches the backend
        compare(QUICK, store=path)


def test_a_ray_client_address_is_refused_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(raydriver, "ray_available", lambda: True)
    path = tmp_path / "s.sqlite"
    with pytest.raises(ValueError, match="Ray Client address, which cannot stream"):
        compare(QUICK, store=path, backend="ray", ray_address="ray://head:10001")
    code = cli.main(["run", "--steps", "5", "--backend", "ray", "--ray-address",
                     "ray://head:10001", "--store", str(path)])
    assert code == 2 and "HEAD:6379" in capsys.readouterr().err
    assert Store(path).runs().empty


def test_importing_normlab_never_imports_ray():
    code = ("import sys, normlab, normlab.cli, normlab.runs.comparisons, "
            "normlab.runs.raydriver, normlab.views.compareview; "
            "normlab.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- a real cluster

def _ray_importable() -> bool:
    if raydriver.ray_available():
        return True
    if os.environ.get("NORMLAB_REQUIRE_RAY") == "1":
        pytest.fail(f"NORMLAB_REQUIRE_RAY=1 but Ray is not installed: {raydriver.INSTALL}")
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants_and(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker``, and all their descendants."""
    parents = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry.name)] = ppid
        if marker in cmdline:
            found.add(int(entry.name))
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_an_unreachable_cluster_fails_the_queued_ray_runs_with_the_reason(tmp_path,
                                                                       monkeypatch):
    if not _ray_importable():
        pytest.skip(f"Ray is not installed ({raydriver.INSTALL})")
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        _, (remote,) = s.create_comparison([QUICK.to_dict()], backend="ray")
        _, (local,) = s.create_comparison([QUICK.to_dict()])

    def refuse(address):  # what ray.init raises, after its retries, for a wrong address
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(raydriver, "connect", refuse)
    with pytest.raises(raydriver.RayUnreachable, match="could not connect to Ray at 10.9.9.9"):
        raydriver.serve(path, address="10.9.9.9:6379")
    with Store(path) as s:
        assert s.run(remote)["status"] == "failed"
        assert "NORMLAB_RAY_ADDRESS" in s.run(remote)["error"]
        assert s.run(local)["status"] == "queued"  # not the driver's to touch
    assert raydriver.driver_pid(path) is None  # the lock is released


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    """A two-CPU Ray head on a free port, in its own temp dir; killed (only its own
    processes, by pid) at the end."""
    if not _ray_importable():
        pytest.skip(f"Ray is not installed ({raydriver.INSTALL})")
    temp = tempfile.mkdtemp(prefix="nlray", dir="/tmp")  # short: Ray's socket paths
    token = Path(temp) / "auth_token"  # token authentication, as on a real cluster
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # for the drivers the tests start, too
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        for attempt in range(3):  # Ray gives its raylet 30 s to start: a loaded host
            port = _free_port()    # can miss that, so start again (own processes killed)
            started = subprocess.run(
                [*ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
                 f"--object-store-memory={100 * 2**20}", "--include-dashboard=false",
                 f"--temp-dir={temp}", "--disable-usage-stats"],
                timeout=300, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if started.returncode == 0:
                break
            _kill(_descendants_and(temp))
        else:
            raise RuntimeError(f"ray start failed 3 times: {started.stderr.decode()[-500:]}")
        yield {"address": f"127.0.0.1:{port}", "temp": temp}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _kill(_descendants_and(temp))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, cluster):
    """One store and one driver for the cluster tests: its Ray workers import torch once."""
    path = tmp_path_factory.mktemp("ray") / "runs.sqlite"
    s = Store(path)
    yield s
    raydriver.stop_driver(path)
    s.close()


def _reference(cfg: RunConfig):
    """The run trained in this process at one torch thread, as tidy rows."""
    import torch

    from normlab.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch, outcome = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return batch.to_frame(), outcome


def _sorted(frame):
    keys = ["layer", "site", "metric", "step"]
    return frame[keys + ["value"]].astype({k: str for k in keys[:3]}).sort_values(keys) \
        .reset_index(drop=True)


def test_a_comparison_on_ray_matches_in_process_training_bit_for_bit(store, cluster):
    cid, runs = compare(QUICK, norms=["batch", "layer"], seeds=[0, 1], store=store,
                        backend="ray", ray_address=cluster["address"])
    statuses = wait_for(cid, store=store, timeout=600)
    assert set(statuses.values()) == {"done"}
    driver = raydriver.driver_pid(store.path)
    table = store.runs(comparison=cid)
    assert (table.worker_pid == driver).all()  # the driver wrote them, not the workers
    assert (table.step == 60).all()
    for rid in runs:
        run = store.run(rid)
        assert run["backend"] == "ray"
        expected, outcome = _reference(RunConfig.from_dict(run["config"]))
        assert outcome.status == "done"
        got = _sorted(store.metrics(rid))
        want = _sorted(expected)
        assert len(got) == len(want) > 100
        assert (got.drop(columns="value") == want.drop(columns="value")).all().all()
        assert (got.value.to_numpy() == want.value.to_numpy()).all()  # bit for bit


def test_pause_resume_and_cancel_reach_a_remote_run(store, cluster):
    cid, (rid,) = compare(LONG, norms=["batch"], store=store, backend="ray",
                          ray_address=cluster["address"])
    until(lambda: store.run(rid)["step"] > 0)
    assert len(store.metrics(rid, metrics=["loss"], sites=["train"])) > 0  # live records
    store.request(rid, "pause")
    until(lambda: store.run(rid)["status"] == "paused")
    time.sleep(1.5)  # the task may finish the batch in hand, then backpressure holds it
    held = store.run(rid)["step"]
    time.sleep(1.0)
    assert store.run(rid)["step"] == held
    store.request(cid, "resume")
    until(lambda: store.run(rid)["status"] == "running" and store.run(rid)["step"] > held)
    store.request(cid, "pause")
    until(lambda: store.run(rid)["status"] == "paused")
    store.request(cid, "cancel")  # while paused: the task is held by backpressure
    until(lambda: store.run(rid)["status"] == "cancelled")
    run = store.run(rid)
    assert run["step"] > held
    steps = store.metrics(rid, metrics=["loss"], sites=["train"]).step
    assert steps.max() <= run["step"]  # nothing past the step it was cancelled at
    until(lambda: not _train_task_pids(cluster), timeout=30)  # the task ended: CPU freed


def _train_task_pids(cluster) -> list[int]:
    return [p for p in _descendants_and(cluster["temp"])
            if _cmdline(p).startswith("ray::train_task")]


def test_a_killed_ray_worker_ends_its_run_interrupted_with_its_records(store, cluster):
    cid, (rid,) = compare(LONG, norms=["layer"], store=store, backend="ray",
                          ray_address=cluster["address"])
    until(lambda: store.run(rid)["step"] > 0)
    (worker,) = until(lambda: _train_task_pids(cluster))
    flushed = len(store.metrics(rid))
    os.kill(worker, signal.SIGKILL)
    until(lambda: store.run(rid)["status"] == "interrupted")
    run = store.run(rid)
    assert "Ray worker lost" in run["error"] and f"step {run['step']}" in run["error"]
    after = store.metrics(rid)
    assert len(after) >= flushed > 0  # nothing flushed was lost
    assert after.step.max() <= run["step"]
    # the driver goes on: a new run trains on a new worker
    cid2, (rid2,) = compare(QUICK, store=store, backend="ray", ray_address=cluster["address"])
    assert wait_for(cid2, store=store, timeout=600) == {rid2: "done"}


def test_a_killed_driver_leaves_runs_interrupted_at_the_next_start(store, cluster):
    cid, (rid,) = compare(LONG, norms=["rms"], store=store, backend="ray",
                          ray_address=cluster["address"])
    until(lambda: store.run(rid)["step"] > 0)
    os.kill(raydriver.driver_pid(store.path), signal.SIGKILL)
    until(lambda: raydriver.driver_pid(store.path) is None)
    until(lambda: not _train_task_pids(cluster), timeout=60)  # Ray stops a dead driver's tasks
    step = store.run(rid)["step"]
    assert store.run(rid)["status"] == "running"
    raydriver.ensure_driver(store.path, cluster["address"])
    until(lambda: store.run(rid)["status"] == "interrupted")
    assert store.run(rid)["step"] == step and len(store.metrics(rid)) > 0



def test_the_dashboard_launches_on_the_backend_chosen_in_the_form(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import normlab.ui.common

    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    monkeypatch.delenv("NORMLAB_RAY_ADDRESS", raising=False)
    monkeypatch.setattr(normlab.ui.common, "ensure_engine", lambda *a, **k: None)
    started = []
    monkeypatch.setattr(raydriver, "ensure_driver", lambda *a, **k: started.append(a))
    monkeypatch.setattr(raydriver, "ray_available", lambda: True)
    st.cache_data.clear()
    st.cache_resource.clear()
    app = str(Path(__file__).resolve().parents[1] / "dashboard.py")
    at = AppTest.from_file(app, default_timeout=60).switch_page("pages/1_compare.py").run()
    assert not at.exception and at.selectbox(key="cfg_backend").value == "local"
    at.selectbox(key="cfg_backend").set_value("ray")
    at.multiselect(key="cfg_methods").set_value(["batch", "layer"])
    at = at.run()
    next(b for b in at.button if b.label == "Launch 2 runs").click()
    at = at.run()
    assert not at.exception and len(started) == 1  # the Ray driver, not the engine
    with Store(path) as store:
        (cid,) = store.comparisons()["id"]
        assert {store.run(r)["backend"] for r in store.comparison(cid)["runs"]} == {"ray"}
    monkeypatch.setattr(raydriver, "ray_available", lambda: False)
    at = at.run()
    assert any("Ray is not installed" in e.value and "pip install" in e.value
               for e in at.error)
    assert next(b for b in at.button if b.label.startswith("Launch")).disabled
    st.cache_data.clear()
    st.cache_resource.clear()
