"""Compare's view toggles in a real browser: from the click (or key press) to the updated
charts drawn, for 9 runs of the quick start — finished, and while a longer copy of it trains.

    python benchmarks/bench_toggles.py [--repeats 5] [--phases finished,training]
                                       [--baseline GIT_REF] [--split]

A fresh ``streamlit run dashboard.py`` on a temp store (as ``tests/test_browser.py``'s
``_serve``), with ``--baseline`` a second one of that commit's tree on the same store,
the two measured in alternation (a before/after pair under the same load); Debian's
chromium through Playwright (never ``playwright install``), a 1600×1000 window. The finished phase trains the quick start (9 methods × 500 steps,
record every 5) in this process first; the training phase submits the same setup with
``--train-steps`` steps to the engine and measures while its runs train (the engine's
two workers busy), then cancels them.

Each toggle is timed in the page: ``performance.now()`` at the input event (a capturing
``pointerdown``/``keydown`` listener armed just before it) to the first check (every 50 ms)
at which the open tab (one spec, one embed: ``normlab.views.linked``) shows the new state
in its SVG (the y axes ticked at 1-2-5 per decade or evenly, facet cells exist, a faint raw curve
behind each smoothed one, the tab's first chart title, the curves of the site changed —
drawn anew, or their rows swapped into the drawn charts). Each repeat is printed, then
the median per toggle, with the load average beside them: the machine is shared and noisy.
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
os.environ.setdefault("NORMLAB_KERNELS", "compiled")

from browserserver import ARGS, CHROMIUM, serve  # noqa: E402

POLL_MS = 50  # the check's period: each check lays out the page, so not every frame
# in the page: arm, then the next input event stamps t0
ARM_JS = """() => {
  if (!window.__benchListening) {
    const stamp = () => { if (window.__armed) { window.__t0 = performance.now();
                                                  window.__armed = false; } };
    document.addEventListener('pointerdown', stamp, true);
    document.addEventListener('keydown', stamp, true);
    window.__benchListening = true;
  }
  document.querySelectorAll('.vega-embed svg, .vega-embed canvas')
    .forEach(g => { g.__old = true; });
  document.querySelectorAll('.vega-embed').forEach(e => { e.__sig = window.__sigOf(e);
                                                           e.__seen = e.offsetParent !== null; });
  window.__t0 = null; window.__armed = true;
}"""
# what a chart's curves look like (their SVG paths; on a canvas, a hash of nine pixel rows
# across it): changes when its rows are swapped
SIG_JS = """() => { window.__sigOf = e => {
  const c = e.querySelector('canvas');
  if (!c) return [...e.querySelectorAll('g.mark-line path')]
    .map(p => p.getAttribute('d')).join('|');
  const g = c.getContext('2d'); let h = 0;
  for (let k = 1; k < 10; k++) {
    const d = g.getImageData(0, Math.floor(c.height * k / 10), c.width, 4).data;
    for (let i = 0; i < d.length; i += 8) h = (h * 31 + d[i] + d[i + 1]) | 0;
  }
  return 'canvas ' + h; }; }"""
# the visible tab's charts: one Vega-Lite spec per tab (normlab.views.linked), so one
# embed; SVG (canvas when Streamlit picks it: no text to check). ``all(sel)``: elements of
# the visible embeds; ``redrawn(c)``: the embed drawn anew or its curves changed (a data
# swap keeps the drawing and changes its paths)
VISIBLE = """const charts = [...document.querySelectorAll('.vega-embed')]
  .filter(e => e.offsetParent !== null && e.querySelector('svg, canvas'));
const all = sel => charts.flatMap(c => [...c.querySelectorAll(sel)]);
const drawnPaths = w => all(`g.mark-line path[stroke-width="${w}"]`)
  .filter(p => (p.getAttribute('d') || '').length > 4).length;
const redrawn = c => !c.querySelector('svg, canvas').__old || window.__sigOf(c) !== c.__sig;
// shown by the toggle: hidden before it (a kept tab or layout: normlab.views.keptslots), or
//   drawn anew
const shown = c => !c.__seen || redrawn(c);
const yAxes = all('[aria-label^="Y-axis"]').length;
// y axes ticked at 1-2-5 per decade (a log scale: the live charts' y scale is a symlog
//   one made logarithmic or linear in the browser, so its ARIA text says "symlog"
//   either way): tick values not evenly spaced
const logAxes = () => all('[aria-label^="Y-axis"]').filter(a => {
  const v = [...a.querySelectorAll('text')].map(t => t.textContent.trim())
    .filter(t => t !== '').map(Number)
    .filter(Number.isFinite).sort((x, y) => x - y).filter((x, i, s) => i === 0 || x !== s[i - 1]);
  if (v.length < 3) return false;
  const d = v.slice(1).map((x, i) => x - v[i]);
  return Math.max(...d) > 1.5 * Math.min(...d);
}).length;
const canvas = charts.length >= 1 && charts[0].querySelector('canvas') !== null;"""
def _done(toggle: str) -> str:
    """The predicate of ``toggle``; on a canvas (Streamlit's choice for a tab of many rows,
    e.g. side by side while 9 long runs train) there is no SVG to read: the tab drawn anew
    or its pixels changed."""
    return f"(canvas ? shown(charts[0]) : ({DONE[toggle]}))"


# per toggle: a JS predicate over the visible tab saying the new state is drawn (the Loss
# tab: 4 charts; side by side: each chart's facet cells, a mark group named ``cell`` or
# ``concat_<i>_cell``)
LOSS_CHARTS = 4
CELLS = "'g.mark-group[class*=\"cell\"]'"
DONE = {
    "log off": f"yAxes >= {LOSS_CHARTS} && logAxes() === 0",
    "log on": "logAxes() >= 2",
    "side by side": f"all({CELLS}).length >= {LOSS_CHARTS}",
    "overlay": f"yAxes >= {LOSS_CHARTS} && all({CELLS}).length === 0",
    # smoothed: the faint raw curve (a 1 px line) behind each smoothed one (2 px)
    #   (while training, only the runs started so far have curves)
    "smoothing on": f"drawnPaths(2) >= {LOSS_CHARTS} && drawnPaths(1) >= drawnPaths(2)",
    "smoothing off": f"drawnPaths(2) >= {LOSS_CHARTS} && drawnPaths(1) === 0",
    # the tab's spec drawn anew: its first title, or a canvas (Streamlit draws a spec with
    # many point marks on one, e.g. the old Gradients tab's hover points)
    "tab Gradients": "charts.length >= 1 && shown(charts[0]) && (charts[0].querySelector("
                     "'canvas') !== null || charts[0].textContent.includes('Global gradient "
                     "norm'))",
    "tab Loss": "charts.length >= 1 && shown(charts[0]) && "
                "charts[0].textContent.includes('Training loss')",
    # Activations: mean and variance follow the site (drawn anew or their rows swapped)
    "site post_norm": "charts.length >= 1 && redrawn(charts[0])",
    "site post_act": "charts.length >= 1 && redrawn(charts[0])",
}


# ``--split``: every websocket message the page receives, stamped (performance.now(), size)
WS_JS = """() => { const Real = window.WebSocket; window.__ws = [];
  window.WebSocket = class extends Real { constructor(...a) { super(...a);
    this.addEventListener('message', m => window.__ws.push(
      [performance.now(), m.data.byteLength || m.data.size || m.data.length || 0])); } }; }"""
SPLITS: dict[str, list[tuple[float, float, float]]] = {}  # toggle -> (first, biggest, done)
# while runs train, a tab or layout shown from the page's kept slots has the rows of when
# it was last shown (normlab.views.keptslots): also timed, to the newest rows swapped in
FRESH_TOGGLES = ("side by side", "overlay", "tab Gradients", "tab Loss")
FRESH: dict[str, list[float]] = {}
FRESH_JS = f"""() => {{ {VISIBLE} const c = charts[0]; if (!c) return false;
  if (c.__freshFrom === undefined) {{ c.__freshFrom = window.__sigOf(c);
    c.__freshSvg = c.querySelector('svg, canvas'); return false; }}
  return (c.querySelector('svg, canvas') !== c.__freshSvg || window.__sigOf(c) !== c.__freshFrom)
    && performance.now() - window.__t0; }}"""


def _timed(page, action, toggle: str, timeout: float = 60_000, arm: bool = True,
           fresh: bool = False) -> float:
    """Seconds from the input event ``action`` fires to ``DONE[toggle]`` holding (``arm``:
    the next input event is the toggle; else ``action`` arms the listener itself). With
    ``--split`` (the websocket stamped), also when the server's first and largest
    messages arrived after it (:data:`SPLITS`); ``fresh`` (runs training): also when the
    shown chart's rows next changed (:data:`FRESH`)."""
    page.evaluate(SIG_JS)
    page.evaluate(ARM_JS if arm else "() => { window.__t0 = null; }")
    action()
    handle = page.wait_for_function(
        f"() => {{ {VISIBLE} return window.__t0 !== null && {_done(toggle)} "
        "&& performance.now() - window.__t0; }", polling=POLL_MS, timeout=timeout)
    took = handle.json_value() / 1000
    if fresh and toggle in FRESH_TOGGLES:
        page.evaluate("() => document.querySelectorAll('.vega-embed').forEach(e => {"
                      " delete e.__freshFrom; })")
        try:
            newest = page.wait_for_function(FRESH_JS, polling=POLL_MS, timeout=10_000)
            FRESH.setdefault(toggle, []).append(newest.json_value() / 1000)
        except Exception:
            FRESH.setdefault(toggle, []).append(float("nan"))
    got = page.evaluate("() => window.__ws ? window.__ws.filter(m => m[0] >= window.__t0)"
                        ".map(m => [m[0] - window.__t0, m[1]]) : null")
    if got is not None:
        first = got[0][0] / 1000 if got else float("nan")
        big = max(got, key=lambda m: m[1])[0] / 1000 if got else float("nan")
        SPLITS.setdefault(toggle, []).append((first, big, took))
    return took


def _settled(page, toggle: str, timeout: float = 60_000) -> None:
    page.evaluate(SIG_JS)
    page.wait_for_function(f"() => {{ {VISIBLE} return {_done(toggle)}; }}", timeout=timeout)


def _slider_to(page, key: str) -> None:
    thumb = page.get_by_test_id("stSlider").filter(has_text="Smoothing").get_by_role("slider")
    thumb.focus()
    page.keyboard.press(key)


def _select_site(page, label: str) -> None:
    box = page.get_by_test_id("stSelectbox").filter(has_text="Activation site")
    box.click()
    option = page.get_by_role("option", name=label, exact=True)
    option.wait_for()
    page.evaluate(SIG_JS)
    page.evaluate(ARM_JS)  # the option's click is the toggle, not the opening click
    option.click()


def _run_toggles(page, repeats: int, phase: str, fresh: bool = False
                 ) -> dict[str, list[float]]:
    """Every toggle ``repeats`` times, from the defaults (overlay, log, unsmoothed, the
    Loss tab) and back to them."""
    times: dict[str, list[float]] = {k: [] for k in DONE}
    main = page.get_by_test_id("stMainBlockContainer")
    log = main.get_by_text("Log scale", exact=True)
    steps = [
        ("log off", lambda: log.click()), ("log on", lambda: log.click()),
        ("side by side", lambda: main.get_by_text("Side by side", exact=True).click()),
        ("overlay", lambda: main.get_by_text("Overlay", exact=True).click()),
        ("smoothing on", lambda: _slider_to(page, "End")),
        ("smoothing off", lambda: _slider_to(page, "Home")),
        ("tab Gradients", lambda: page.get_by_role("tab", name="Gradients").click()),
        ("tab Loss", lambda: page.get_by_role("tab", name="Loss & accuracy").click()),
    ]
    for r in range(repeats):
        load = os.getloadavg()[0]
        row = []
        for toggle, action in steps:
            try:
                t = _timed(page, action, toggle, fresh=fresh)
            except Exception:
                page.screenshot(path=str(ROOT / "artifacts" / "bench_toggles_failure.png"))
                seen = page.evaluate("() => { " + VISIBLE + " return [charts.map(c => "
                                     "c.textContent.slice(0, 40)), yAxes, "
                                     "all(" + CELLS + ").length, drawnPaths(1), drawnPaths(2)]; }")
                print(f"[{phase}] {toggle}: not drawn within 60 s; charts: {seen}", flush=True)
                raise
            times[toggle].append(t)
            row.append(f"{toggle} {t:.2f}")
            time.sleep(0.5)
        page.get_by_role("tab", name="Activations").click()
        page.wait_for_function("() => { " + VISIBLE + " return charts.length >= 1 && ("
                               "charts[0].querySelector('canvas') !== null || "
                               "charts[0].textContent.includes('Activation mean')); }")
        time.sleep(0.5)
        for toggle, label in (("site post_norm", "post-norm"), ("site post_act",
                                                                 "post-activation")):
            try:
                t = _timed(page, lambda: _select_site(page, label), toggle, arm=False)
            except Exception:
                page.screenshot(path=str(ROOT / "artifacts" / "bench_toggles_failure.png"))
                print(f"[{phase}] {toggle}: not drawn within 60 s", flush=True)
                raise
            times[toggle].append(t)
            row.append(f"{toggle} {t:.2f}")
            time.sleep(0.5)
        page.get_by_role("tab", name="Loss & accuracy").click()
        _settled(page, "tab Loss")
        time.sleep(0.5)
        heap = page.evaluate("() => performance.memory ? Math.round(performance.memory"
                             ".usedJSHeapSize / 2 ** 20) : -1")
        print(f"[{phase}] (load {load:.2f}, JS heap {heap} MiB): " + ", ".join(row),
              flush=True)
    return times


def _finished_store(path: Path) -> str:
    """The quick start, trained here (9 methods × 500 steps, record every 5)."""
    from normlab.runs.store import Store
    from normlab.training.trainer import train
    from normlab.views import compareview as views

    from normlab.views.urlstate import default_methods

    methods = list(default_methods("mlp"))
    configs = views.configs_for(views.QUICK_START, methods, views.QUICK_SEEDS)
    with Store(path) as store:
        cid, ids = store.create_comparison(
            [c.to_dict() for c in configs], base=views.QUICK_START.to_dict(),
            name="quick start (finished)", grid={"norm": methods, "seed": [0]})
        for rid, cfg in zip(ids, configs):
            batch, outcome = train(cfg)
            store.append(rid, batch)
            store.finish(rid, outcome.status, outcome.step)
    return cid


def _open(page, url: str, cid: str, n: int = 9) -> None:
    page.goto(f"{url}/compare?comparison={cid}")
    page.get_by_role("tab", name="Loss & accuracy").wait_for(timeout=120_000)
    _settled(page, "overlay", timeout=120_000)
    time.sleep(2)


def quick_start_store() -> Path:
    """The finished quick start's store, trained once and kept in ``artifacts/`` (ignored
    by git): copy it before serving it."""
    cached = ROOT / "artifacts" / "bench_toggles_quickstart.sqlite"
    if not cached.exists():
        cached.parent.mkdir(exist_ok=True)
        _finished_store(cached)
    return cached


def _serve_root(root: Path, store: Path, log: Path):
    """``streamlit run dashboard.py`` of the checkout at ``root`` on ``store`` (a baseline
    older than ``python dashboard.py`` serves the same way; toggles do not wait for the
    engine's start)."""
    return serve(root, {**os.environ, "NORMLAB_STORE": str(store)}, log, entry="streamlit")


def _checkout(ref: str, folder: Path) -> Path:
    """The tree of git ``ref`` extracted to ``folder`` (no worktree, the repo untouched)."""
    import subprocess

    folder.mkdir()
    tar = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=tar, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--phases", default="finished,training")
    parser.add_argument("--train-steps", type=int, default=20_000)
    parser.add_argument("--split", action="store_true",
                        help="also print, per toggle, when the server's first and largest "
                             "messages arrived (medians): server time against drawing")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also serve this commit's dashboard (or a folder's tree) on "
                             "the same store and alternate the repeats between the two "
                             "(paired, same load)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from normlab.runs.comparisons import submit
    from normlab.runs.engine import stop_engine
    from normlab.runs.store import Store
    from normlab.views import compareview as views
    from normlab.views.urlstate import default_methods

    phases = args.phases.split(",")
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    loads: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        store_path = folder / "runs.sqlite"
        roots = {"this": ROOT}
        if args.baseline:
            given = Path(args.baseline)  # a folder holding a tree, or a git ref
            roots[args.baseline] = (given.resolve() if given.is_dir()
                                    else _checkout(args.baseline, folder / "baseline"))
        done_cid = None
        if "finished" in phases:
            shutil.copy(quick_start_store(), store_path)
            with Store(store_path) as store:
                done_cid = store.comparisons()["id"].iloc[0]
        stack.callback(stop_engine, store_path)
        urls = {name: stack.enter_context(_serve_root(root, store_path,
                                                      folder / f"{name}.log"))
                for name, root in roots.items()}
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        stack.callback(browser.close)
        pages = {name: browser.new_page(viewport={"width": 1600, "height": 1000})
                 for name in roots}
        if args.split:
            for page in pages.values():
                page.add_init_script(f"({WS_JS})()")
        for phase in phases:
            ids = []
            if phase == "finished":
                cid = done_cid
            else:
                methods = list(default_methods("mlp"))
                config = views.QUICK_START.replace(steps=args.train_steps)
                with Store(store_path) as store:
                    cid, ids = submit(views.configs_for(config, methods, (0,)),
                                      base=config, grid={"norm": methods, "seed": [0]},
                                      name="quick start (training)", store=store)
            for name, page in pages.items():
                _open(page, urls[name], cid)
            for r in range(args.repeats):  # the dashboards alternate, first one then other
                for name in (list(roots) if r % 2 == 0 else list(roots)[::-1]):
                    loads.setdefault((phase, name), []).append(os.getloadavg()[0])
                    got = _run_toggles(pages[name], 1, f"{phase} · {name} · {r + 1}",
                                       fresh=phase == "training")
                    for toggle, ts in got.items():
                        results.setdefault((phase, name), {}).setdefault(toggle, []).extend(ts)
            if ids:
                with Store(store_path) as store:
                    counts = store.runs(ids=ids)["status"].value_counts().to_dict()
                    print(f"[training] run statuses at the end: {counts}")
                    for rid in ids:
                        store.request(rid, "cancel")
    for (phase, name), times in results.items():
        load = loads[(phase, name)]
        print(f"\n{phase} · {name}: median of {args.repeats} (load average "
              f"{min(load):.2f}–{max(load):.2f})")
        for toggle, ts in times.items():
            print(f"  {toggle:15s} {statistics.median(ts):.2f} s   "
                  f"(min {min(ts):.2f}, max {max(ts):.2f})")
    if FRESH:
        print("\nwhile training, medians over every page, s after the input: the shown "
              "chart's rows next swapped in (a kept tab or layout has the rows "
              "of when it was last shown: normlab.views.keptslots)")
        for toggle, ts in FRESH.items():
            ok = [t for t in ts if t == t]
            print(f"  {toggle:15s} {statistics.median(ok) if ok else float('nan'):.2f} s "
                  f"({len(ok)} of {len(ts)} within 10 s)")
    if SPLITS:
        print("\nmedians over every phase, s after the input: the server's first message, "
              "its largest (the charts), drawn")
        for toggle, rows in SPLITS.items():
            first, big, done = (statistics.median(c) for c in zip(*rows))
            print(f"  {toggle:15s} {first:.2f}  {big:.2f}  {done:.2f}")


if __name__ == "__main__":
    main()
