"""A link must not make the dashboard read server files (issue 11, point 1): a file dataset
in a link waits for the user's confirmation, and once read, errors never show content."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import normlab.runs.comparisons
import normlab.training.datafiles
import normlab.ui.common
from normlab.runs.engine import stop_engine
from normlab.views import urlstate

APP = str(Path(__file__).resolve().parents[1] / "dashboard.py")
SECRET = "TOPSECRET_51c2"


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("NORMLAB_STORE", str(path))
    for module in (normlab.ui.common, normlab.runs.comparisons):
        monkeypatch.setattr(module, "ensure_engine", lambda *a, **k: None)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield path
    stop_engine(path)
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def reads(monkeypatch):
    """Paths the data-file reader opened."""
    opened = []
    real = normlab.training.datafiles._open_data

    def spy(path, kind):
        opened.append(str(path))
        return real(path, kind)

    monkeypatch.setattr(normlab.training.datafiles, "_open_data", spy)
    return opened


def _everything(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "markdown", "info", "warning", "error", "caption")
             for e in getattr(at, kind)]
    return "\n".join(map(str, parts))


def test_hold_file_dataset_is_pure():
    state = urlstate.decode({"dataset": "csv:/etc/shadow", "lr": "0.5"})
    held_state, held = urlstate.hold_file_dataset(state)
    assert held == "csv:/etc/shadow" and held_state.config.dataset == "digits"
    assert held_state.config.lr == 0.5
    plain = urlstate.decode({"dataset": "moons"})
    assert urlstate.hold_file_dataset(plain) == (plain, None)


def test_link_file_is_read_only_after_confirmation(store, tmp_path, reads):
    secret = tmp_path / "environ"
    secret.write_text(f"{SECRET}=value\nPATH=/usr/bin\n")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["dataset"] = f"csv:{secret}"
    at = at.switch_page("pages/1_compare.py").run()
    assert not at.exception
    assert reads == []  # the page did not open the file
    assert at.selectbox(key="cfg_dataset").value == "digits"
    assert any(f"csv:{secret}" in w.value for w in at.warning)
    at.button(key="_held_use").click().run()
    assert not at.exception
    assert str(secret) in reads
    text = _everything(at)
    assert "has no 'label' column (among its 1 columns)" in text
    assert SECRET not in text


def test_ignoring_the_held_file_never_reads_it(store, tmp_path, reads):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["dataset"] = "csv:/dev/zero"
    at = at.switch_page("pages/1_compare.py").run()
    at.button(key="_held_ignore").click().run()
    assert not at.exception and reads == []
    assert not any("/dev/zero" in w.value for w in at.warning)


def test_streamlit_serves_this_machine_only_and_sends_no_statistics():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False


def test_live_view_says_when_no_engine_serves_the_store(store, monkeypatch):
    from normlab.runs.store import Store
    from normlab.training.config import RunConfig
    import normlab.ui.live

    started = []
    monkeypatch.setattr(normlab.ui.live, "ensure_engine", lambda path: started.append(path))
    with Store(store) as s:
        cid, _ = s.create_comparison([RunConfig(steps=5).to_dict()], name="waiting")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["comparison"] = cid
    at = at.switch_page("pages/1_compare.py").run()
    assert not at.exception
    assert any("No engine is serving the run store" in w.value for w in at.warning)
    at.button(key="_restart_engine").click().run()
    assert started == [store]
