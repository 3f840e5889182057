"""Presenter mode on a finished comparison in a real browser: does toggling it show the
page twice, and how long does each step of a talk hold the browser's main thread?

    python benchmarks/bench_presenter.py [--repeats 3] [--baseline GIT_REF]

The quick start's finished comparison (9 methods × 500 steps, record every 5; trained
once into ``artifacts/``, as ``bench_toggles.py``), served by ``streamlit run
dashboard.py`` of this tree and, with ``--baseline``, of that commit's tree on a copy of
the same store, measured in alternation; Debian's chromium through Playwright, a
1600×1000 window. Once the page has loaded (every chart the server sends is in), each
repeat clicks: Presenter on, the Gradients tab, Activations, Loss & accuracy, Presenter
off, Gradients. Per click, measured in the page:

- *doubled*: seconds during which the page held two tab bars (Streamlit shows the old
  page's elements beside the new ones until a rerun ends when the elements moved),
  sampled every 0.1 s for 7 s;
- *busy*: the main thread's long tasks (> 50 ms, ``PerformanceObserver``) summed over
  the click's rerun: the time the page could not answer a click or paint;
- *settled*: seconds from the click to the end of the last long task.

The first repeat draws presenter mode's charts for the first time (Altair builds them);
later repeats find them in the server's caches. Medians over the repeats are printed
with the load average: the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_toggles import _checkout, _serve_root, quick_start_store  # noqa: E402
from browserserver import ARGS, CHROMIUM  # noqa: E402

LONG_TASKS = ("window.__lt = []; new PerformanceObserver(l => l.getEntries().forEach("
              "e => window.__lt.push([e.startTime, e.duration])))"
              ".observe({type: 'longtask', buffered: true});")
TAB_BARS = "() => document.querySelectorAll('[data-testid=stTabs]').length"
STEPS = (("presenter on", "Presenter"), ("tab Gradients", "Gradients"),
         ("tab Activations", "Activations"), ("tab Loss", "Loss & accuracy"),
         ("presenter off", "Presenter"), ("tab Gradients again", "Gradients"))


def _loaded(page, timeout: float = 180) -> None:
    """Until no long task for 4 s after the first chart (the hidden tabs are drawn too)."""
    page.locator(".vega-embed >> visible=true").first.wait_for(timeout=timeout * 1000)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        last = page.evaluate("() => Math.max(0, ...window.__lt.map(e => e[0] + e[1]))")
        if page.evaluate("() => performance.now()") - last > 4000:
            return
        time.sleep(0.5)
    raise RuntimeError("the page did not settle")


def _click(page, step: str, label: str) -> dict[str, float]:
    main = page.get_by_test_id("stMainBlockContainer")
    target = (main.get_by_text(label, exact=True) if step.startswith("presenter")
              else page.get_by_role("tab", name=label))
    t0 = page.evaluate("() => performance.now()")
    target.click()
    start, doubled = time.monotonic(), 0.0
    while time.monotonic() - start < 7:
        if page.evaluate(TAB_BARS) > 1:
            doubled += 0.1
        time.sleep(0.1)
    while True:  # until 3 s without a long task
        tasks = page.evaluate(f"() => window.__lt.filter(e => e[0] >= {t0})")
        end = max((s + d for s, d in tasks), default=t0)
        if page.evaluate("() => performance.now()") - end > 3000:
            break
        time.sleep(0.5)
    return {"doubled": round(doubled, 1), "busy": sum(d for _, d in tasks) / 1000,
            "settled": (end - t0) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also serve this commit's dashboard on the same store, "
                             "alternating with this tree's")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from normlab.runs.store import Store

    results: dict[str, dict[str, list[dict]]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        cached = quick_start_store()
        roots = {"this": ROOT}
        if args.baseline:
            roots["baseline"] = (Path(args.baseline) if Path(args.baseline).is_dir()
                                 else _checkout(args.baseline, folder / "baseline"))
        urls, cids = {}, {}
        for name, root in roots.items():
            store = folder / f"{name}.sqlite"  # a copy each: the two never share a lock
            shutil.copy(cached, store)
            with Store(store) as s:
                cids[name] = s.comparisons()["id"].iloc[0]
            urls[name] = stack.enter_context(_serve_root(root, store, folder / f"{name}.log"))
        play = stack.enter_context(sync_playwright())
        browser = play.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for r in range(args.repeats):
            for name in (list(roots) if r % 2 == 0 else list(roots)[::-1]):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.add_init_script(LONG_TASKS)
                page.goto(f"{urls[name]}/compare?comparison={cids[name]}")
                _loaded(page)
                loads.append(os.getloadavg()[0])
                for step, label in STEPS:
                    got = _click(page, step, label)
                    results.setdefault(name, {}).setdefault(step, []).append(got)
                    print(f"{name} · {r + 1} · {step}: doubled {got['doubled']:.1f} s, "
                          f"busy {got['busy']:.2f} s, settled {got['settled']:.2f} s",
                          flush=True)
                page.close()
    print(f"\nmedians over {args.repeats} repeat(s), load average "
          f"{min(loads):.1f}–{max(loads):.1f}; seconds doubled / busy / settled")
    for step, _ in STEPS:
        cells = []
        for name in roots:
            got = results[name][step]
            cells.append(f"{name} " + " / ".join(
                f"{statistics.median(g[k] for g in got):.2f}"
                for k in ("doubled", "busy", "settled")))
        print(f"  {step:<22}" + "   ".join(cells))


if __name__ == "__main__":
    main()
