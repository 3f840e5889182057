"""Benchmark of the quick start's first curve on a cold server: the issue 12 figure.

Each repeat starts the README's ``python dashboard.py`` (``--entry streamlit``: ``streamlit
run dashboard.py``) as a freshly installed machine would run it — a new store, an empty numba kernel cache (``NUMBA_CACHE_DIR``), kernels ``auto``
— opens Home in Debian's chromium (playwright), waits for the quick-start button and the
methods table, clicks, and times click → the first line of a chart, as the browser test
does (``tests/test_browser.py``), but stops there. Then it stops the server, its engine
and its background kernel compile (found by pid: the processes whose environment names
this repeat's cache folder). Every repeat is printed with the load average at its click;
the last line is the median. ``--tree`` times another checkout (an A/B against an older
commit: ``git archive <commit> | tar -x -C /tmp/old``), alternate the two on a noisy
machine.

    python benchmarks/bench_first_curve.py [--repeats 3] [--tree PATH] [--entry streamlit]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browserserver import ARGS, CHROMIUM, serve  # noqa: E402

from tests.test_browser import CURVE  # noqa: E402  (the test's first curve, not Home's chart)


def _stop_ours(marker: str) -> None:
    """SIGKILL every process whose environment holds ``marker`` (this repeat's folder)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


def one_repeat(tree: Path, entry: str = "python") -> dict:
    folder = Path(tempfile.mkdtemp(prefix="normlab-first-curve-"))
    cache = folder / "numba-cache"
    cache.mkdir()
    env = {**os.environ, "NORMLAB_STORE": str(folder / "runs.sqlite"),
           "NUMBA_CACHE_DIR": str(cache), "NORMLAB_KERNELS": "auto", "PYTHONPATH": str(tree)}
    result: dict = {}
    try:
        with serve(tree, env, folder / "streamlit.log", entry=entry) as url:
            result.update(_click_to_curve(url, tree))
    finally:
        _stop_ours(str(folder))  # the engine, its workers and the kernel compile
    return result


def _preloaded(tree: Path) -> list[str]:
    """The modules Home of ``tree`` preloads (none for a tree older than the preload)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from normlab.ui.preload "
            "import modules_of; print(json.dumps(list(modules_of())))")
    out = subprocess.run([sys.executable, "-c", code, str(tree)], capture_output=True,
                         text=True)
    return json.loads(out.stdout) if out.returncode == 0 else []


def _click_to_curve(url: str, tree: Path = ROOT) -> dict:
    """Home → quick-start click → the first line of a chart, in chromium."""
    result: dict = {}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        opened = time.monotonic()
        page.goto(url + "/")
        quick = page.get_by_role("button", name="Compare all methods on digits")
        quick.wait_for(timeout=60_000)
        page.get_by_text("Ioffe & Szegedy 2015").wait_for(timeout=60_000)
        # Home loaded, the Compare page's element code included (normlab.ui.preload; the
        #   browser test waits for it too): a reader's first second on the page
        page.wait_for_function(
            "(names) => names.every(n => performance.getEntriesByType('resource')"
            ".some(e => e.name.endsWith('/static/js/' + n)))", arg=_preloaded(tree),
            timeout=30_000)
        result["home_s"] = round(time.monotonic() - opened, 2)
        result["load_at_click"] = open("/proc/loadavg").read().split()[0]
        clicked = time.monotonic()
        quick.click()
        page.locator(f"{CURVE} >> visible=true").first.wait_for(timeout=150_000)
        result["click_to_curve_s"] = round(time.monotonic() - clicked, 2)
        browser.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to time")
    parser.add_argument("--entry", choices=("python", "streamlit"), default="python",
                        help="python dashboard.py (the README's; the engine starts with the "
                             "server) or streamlit run dashboard.py (it starts with Home)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing (apt-get install chromium)")
    figures = []
    for i in range(args.repeats):
        result = one_repeat(args.tree.resolve(), args.entry)
        figures.append(result["click_to_curve_s"])
        print(f"repeat {i + 1}: {json.dumps(result)}", flush=True)
    print(f"quick start click -> first curve, cold (median of {len(figures)}): "
          f"{statistics.median(figures):.2f}s")


if __name__ == "__main__":
    main()
