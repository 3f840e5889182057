"""Shared by the browser benchmarks (``bench_first_curve.py``, ``bench_toggles.py``): a
``python dashboard.py`` (the README's command; or ``streamlit run dashboard.py``) of a checkout, and the chromium the tests drive (the same
binary and flags as ``tests/test_browser.py``)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_browser import (ARGS, CHROMIUM, DASHBOARD, STREAMLIT_RUN,  # noqa: E402,F401
                                _free_port, _healthy)


@contextlib.contextmanager
def serve(root: Path, env: dict, log: Path, timeout: float = 60, entry: str = "python"):
    """``python dashboard.py`` (``entry='streamlit'``: ``streamlit run dashboard.py``, e.g.
    for a checkout older than the launcher) in ``root`` with ``env``, its output in
    ``log``; yields its URL once healthy, then stops its process group."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*(DASHBOARD if entry == "python" else STREAMLIT_RUN), "--server.headless",
             "true", "--server.port", str(port), "--server.fileWatcherType", "none"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start in {root}: see {log}")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have died (see the log)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
