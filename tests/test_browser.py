"""The main flow in a real browser: streamlit serves dashboard.py with its engine, Debian's
chromium (driven by playwright, never ``playwright install``) clicks the quick start on
Home, watches the live charts fill with every method, switches layout and chart tab,
reopens the finished comparison from its link, and opens Layer dynamics.

Screenshots go to ``artifacts/`` (ignored by git); the final Compare screenshot is also
copied to ``docs/compare.png`` for the README. Timings go to ``artifacts/timings.json``.
Without /usr/bin/chromium the test is skipped, unless NORMLAB_REQUIRE_BROWSER=1 (CI).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from normlab.runs.engine import stop_engine
from normlab.methods.registry import norms_for
from normlab.views import home

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
EXCEPTION = '[data-testid="stException"]'
# a chart's line, but not Home's formula chart: Home's elements stay in the page for a
# moment after the quick-start click, so its lines must not count as the first curve
CURVE = f".vega-embed svg .mark-line:not([class*='{home.MARK_PREFIX}']) path"
DRAWN = f"{CURVE}, .vega-embed canvas"  # drawn (a canvas when a spec has many points)
# what the visible charts draw: SVG line paths of two points or more, and the coloured
# pixels of canvases (greys — axes, grid, text, the gray of `none` — not counted): an
# embed with axes and empty panels passes DRAWN, not this (side by side once drew no curve)
CURVES_JS = """() => {
  let coloured = 0, paths = 0;
  for (const e of document.querySelectorAll('.vega-embed')) {
    if (e.offsetParent === null) continue;
    for (const c of e.querySelectorAll('canvas')) {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < d.length; i += 4) {
        const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
        if (d[i + 3] > 0 && hi - lo > 60) coloured++;
      }
    }
    paths += [...e.querySelectorAll('g.mark-line path')]
      .filter(p => /^M[^M]*L/.test(p.getAttribute('d') || '')).length;
  }
  return {coloured, paths};
}"""
LEGEND_PIXELS = 5000  # a tab's legend alone colours ~hundreds; 9 runs' curves ~50,000


def _curves_drawn(page, runs: int) -> bool:
    """Whether the visible charts draw curves: ``runs`` SVG paths, or on a canvas more
    coloured pixels than a legend alone has."""
    got = page.evaluate(CURVES_JS)
    return got["paths"] >= runs or got["coloured"] > LEGEND_PIXELS
METHODS = norms_for("mlp")

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("browser")]  # one worker: one
#   cold server for the module, and the other worker's tests beside it, not two browsers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("NORMLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and NORMLAB_REQUIRE_BROWSER=1: "
                        "apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")


# the README's command: the engine starts before the server (normlab.ui.launch)
DASHBOARD = (sys.executable, "dashboard.py")
STREAMLIT_RUN = (sys.executable, "-m", "streamlit", "run", "dashboard.py")  # also served


@contextlib.contextmanager
def _serve(folder: Path, cold: bool = False):
    """A fresh ``python dashboard.py`` (the README's command) on a free port, with its own store; yields
    its URL once healthy (no page has been requested yet), stops it and its engine. With
    ``cold``, its numba kernel cache is a new, empty folder, so the timings are the cold
    ones (the kernels compile as on a freshly installed machine)."""
    store, port = folder / "runs.sqlite", _free_port()
    env = {**os.environ, "NORMLAB_STORE": str(store)}
    if cold:
        cache = folder / "numba-cache"
        cache.mkdir()
        env["NUMBA_CACHE_DIR"] = str(cache)
        env["NORMLAB_KERNELS"] = "auto"  # a fresh machine's default: numpy until compiled
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [*DASHBOARD, "--server.headless", "true", "--server.port", str(port),
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("streamlit did not start:\n"
                            + (folder / "streamlit.log").read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        stop_engine(store)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    with _serve(tmp_path_factory.mktemp("browser"), cold=True) as url:
        yield url


def _no_exception(page) -> None:
    boxes = page.locator(EXCEPTION)
    assert boxes.count() == 0, boxes.all_inner_texts()


def _legend_has_every_method(page) -> bool:
    text = page.locator(".vega-embed >> visible=true").first.inner_text()
    return all(m in text.split("\n") for m in METHODS)


def _wait(predicate, timeout: float, what: str, page=None) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            if page is not None:
                page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def _sampled(page, expression: str, done, timeout: float = 30, settle: float = 1.5) -> list:
    """``expression`` evaluated in the page every 0.1 s until ``done()`` has held for
    ``settle`` seconds (the rerun that made it so has ended) or ``timeout``."""
    start, held, seen = time.monotonic(), None, []
    while time.monotonic() - start < timeout:
        seen.append(page.evaluate(f"() => {expression}"))
        if not done():
            held = None
        elif held is None:
            held = time.monotonic()
        elif time.monotonic() - held > settle:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"not done within {timeout}s; sampled {seen}")


@pytest.mark.timeout(420)  # 9 runs train on the cores the other test worker shares
def test_quick_start_live_charts_layout_link_and_layers(server, capsys):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failure.png").unlink(missing_ok=True)
    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(server + "/")
            quick = page.get_by_role("button", name="Compare all methods on digits")
            quick.wait_for(timeout=30_000)
            page.get_by_text("Ioffe & Szegedy 2015").wait_for(timeout=20_000)  # the table
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

            # Home loaded the Compare page's element code (normlab.ui.preload): the click
            #   fetches none of it (it used to fetch ~60 modules while the server drew)
            from normlab.ui.preload import modules_of
            preloaded = set(modules_of())
            assert preloaded, "no Compare element module found in the installed Streamlit"
            _wait(lambda: page.evaluate(
                "(names) => names.every(n => performance.getEntriesByType('resource')"
                ".some(e => e.name.endsWith('/static/js/' + n)))", sorted(preloaded)),
                10, "Home to load the Compare page's element modules", page)
            fetched: list[str] = []
            page.on("request", lambda r: fetched.append(r.url.rsplit("/", 1)[-1]))

            # the machine is shared: the figure is printed with the load average at the click
            timings["load_average_at_click"] = float(open("/proc/loadavg").read().split()[0])
            start = time.monotonic()
            quick.click()
            page.wait_for_url("**/compare?**", timeout=20_000)
            assert "comparison=c" in page.url
            # the form shows the comparison's own setup, so the link needs only its id
            page.wait_for_url(lambda url: "comparison=c" in url and "methods=" not in url,
                              timeout=20_000)
            # a cold compile: ~30-60 s (visible: a run without rows yet has an empty path)
            page.locator(f"{CURVE} >> visible=true").first.wait_for(timeout=150_000)
            timings["quick_start_to_first_curve_s"] = round(time.monotonic() - start, 2)
            assert not preloaded & set(fetched), preloaded & set(fetched)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "compare_live.png"))

            # every method gets its curve while the runs train; no exception meanwhile
            _wait(lambda: _legend_has_every_method(page), 180, "every method in the legend",
                  page)
            page.get_by_text(f"{len(METHODS)} of {len(METHODS)} runs finished").wait_for(
                timeout=150_000)
            timings["quick_start_to_all_done_s"] = round(time.monotonic() - start, 2)
            _no_exception(page)
            time.sleep(1.0)
            page.screenshot(path=str(ARTIFACTS / "compare.png"))
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copy(ARTIFACTS / "compare.png", ROOT / "docs" / "compare.png")

            # side by side: one panel per method, each titled by its method
            page.get_by_text("Side by side", exact=True).click()
            page.wait_for_url("**layout=side**", timeout=20_000)
            first = page.locator(".vega-embed >> visible=true").first  # the shown slot
            _wait(lambda: first.locator('g[class*="cell"]').count() > 0  # a faceted chart
                  #   (class concat_0_cell: the tab's charts are one spec)
                  and first.locator("g.view_1_pathgroup").count() >= len(METHODS)
                  and _curves_drawn(page, len(METHODS)),
                  20, "one panel per method, each with its curve", page)
            page.get_by_role("tab", name="Gradients").click()
            page.wait_for_url("**tab=gradients**", timeout=20_000)  # the tab is in the link
            # its charts: one spec, on a canvas when its grids hold many points (no text);
            #   9 methods × 3 layers × 4 charts of panels: ~6 s on a quiet machine, ~20 s
            #   while the other test worker runs a browser too
            page.locator(f"{DRAWN} >> visible=true").first.wait_for(timeout=60_000)
            _wait(lambda: _curves_drawn(page, len(METHODS)), 20,
                  "the side-by-side Gradients panels' curves", page)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "compare_side_gradients.png"))
            # presenter mode on and off: the page is never shown twice (old beside new, as
            #   when the elements above the charts moved), sampled while each rerun runs
            main = page.get_by_test_id("stMainBlockContainer")
            main.get_by_text("Presenter", exact=True).click()
            tab_bars = _sampled(page, "document.querySelectorAll('[data-testid=stTabs]')"
                                ".length", lambda: "present=1" in page.url and page
                                .get_by_test_id("stSidebarUserContent")
                                .get_by_text("Presenter mode").count() == 1)
            assert max(tab_bars) == 1, f"the page was doubled: {tab_bars}"
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "compare_presenter.png"))
            main.get_by_text("Presenter", exact=True).click()
            tab_bars = _sampled(page, "document.querySelectorAll('[data-testid=stTabs]')"
                                ".length", lambda: "present=1" not in page.url and page
                                .get_by_test_id("stSidebarUserContent")
                                .get_by_text("Setup", exact=True).count() == 1)
            assert max(tab_bars) == 1, f"the page was doubled: {tab_bars}"

            # the link alone brings the stored results back, without training
            link = page.url
            again = browser.new_page(viewport={"width": 1600, "height": 1000})
            start = time.monotonic()
            again.goto(link)
            again.locator(f"{DRAWN} >> visible=true").first.wait_for(timeout=60_000)
            timings["stored_link_to_first_curve_s"] = round(time.monotonic() - start, 2)
            again.get_by_text(f"{len(METHODS)} of {len(METHODS)} runs finished").wait_for()
            assert again.get_by_role("tab", selected=True).inner_text() == "Gradients"
            assert "layout=side" in again.url and "tab=gradients" in again.url
            _no_exception(again)
            again.close()

            # Layer dynamics, through the navigation
            page.get_by_test_id("stSidebar").get_by_role("link", name="Layer dynamics").click()
            page.wait_for_url("**/layers**", timeout=20_000)
            page.get_by_role("heading", name="Layer dynamics").wait_for(timeout=20_000)
            time.sleep(3)
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / "layers.png"))
        finally:
            (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=1))
            browser.close()
            with capsys.disabled():
                print("\nbrowser timings (empty numba cache): "
                      + ", ".join(f"{k} = {v}" for k, v in timings.items()))
    # the timings are figures for BENCHMARKS.md, not assertions (the host is shared)


# Each page's URL (its file name in pages/ without the number), a query a copied link may
# carry, and the page's title.
DEEP_LINKS = [("/home", "Home"), ("/compare?dataset=mnist1d&steps=300", "Compare"),
              ("/layers?comparison=cdoesnotexist", "Layer dynamics"), ("/runs", "Runs"),
              ("/one_formula?comparison=cdoesnotexist", "One formula"),
              ("/whitening?comparison=cdoesnotexist", "How far from whitening?"),
              ("/ics?comparison=cdoesnotexist", "Internal covariate shift"),
              ("/invariance", "Re-scaling invariance"),
              ("/lr_init?comparison=cdoesnotexist", "Learning rate and initialization"),
              ("/batch_size", "Batch size")]  # /tour: test_tour_walks_with_the_keyboard
MENU = ["Home", "Compare", "Layer dynamics", "Runs",  # then the labs, in menu order
        "One formula", "How far from whitening?", "Internal covariate shift",
        "Re-scaling invariance", "Learning rate and initialization", "Batch size",
        "Guided tour"]


@pytest.mark.parametrize("link,title", DEEP_LINKS, ids=[t for _, t in DEEP_LINKS])
def test_deep_link_as_a_fresh_servers_first_request(tmp_path, link, title):
    """A shared link opened before anything else reaches its page, with the one menu."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with _serve(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + link)
            page.get_by_role("heading", name=title if title != "Home" else "NormLab").first \
                .wait_for(timeout=30_000)
            assert page.title() == f"{title} · NormLab"
            assert page.get_by_text("Page not found").count() == 0  # no dialog
            assert link.split("?")[0] in page.url
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_role("link").last.wait_for(timeout=10_000)
            links = [t.strip().split("\n")[-1]  # after the icon's ligature name
                     for t in sidebar.get_by_role("link").all_inner_texts()]
            assert [t for t in links if t] == MENU
            _no_exception(page)
            page.screenshot(path=str(ARTIFACTS / f"deeplink_{title.split()[0].lower()}.png"))
            if title == "Compare":
                steps = sidebar.get_by_role("spinbutton", name="Steps")
                _wait(lambda: steps.count() == 1 and steps.input_value() == "300", 30,
                      "the link's setup in the form", page)
        finally:
            browser.close()


# Every chart's drawing (the Vega embed's svg or canvas) ends inside its column: the main
# block's content box, or the st.columns cell holding it.
OVERFLOW_JS = """() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const right = main.getBoundingClientRect().right - parseFloat(getComputedStyle(main).paddingRight);
  return [...document.querySelectorAll('.vega-embed')].map(e => {
    const g = e.querySelector('svg, canvas');
    if (!g || e.offsetParent === null) return null;  // drawn and shown (not a hidden tab's)
    const col = e.closest('[data-testid="stColumn"]');
    const limit = col ? col.getBoundingClientRect().right : right;
    return {title: (e.closest('[data-testid="stElementContainer"]') || e).innerText.slice(0, 40),
            over: Math.round(g.getBoundingClientRect().right - limit),
            width: Math.round(g.getBoundingClientRect().width)};
  }).filter(x => x);
}"""
FIT_SIZES = [(1280, 800), (1920, 1080)]


def _fit_store(folder: Path, **setup) -> str:
    """A store with every MLP method (one seed, a tiny 3-layer net, or ``setup``) trained
    in-process."""
    from normlab.runs.store import Store
    from normlab.training.config import RunConfig
    from normlab.training.trainer import train
    from normlab.views import compareview as views

    base = RunConfig(**{**dict(steps=30, width=8, depth=3, eval_interval=10, batch_size=32),
                        **setup})
    configs = views.configs_for(base, METHODS, (0,))
    with Store(folder / "runs.sqlite") as store:
        cid, ids = store.create_comparison([c.to_dict() for c in configs], base=base.to_dict(),
                                           grid={"norm": list(METHODS), "seed": [0]})
        for rid, cfg in zip(ids, configs):
            batch, outcome = train(cfg)
            store.append(rid, batch)
            store.finish(rid, outcome.status, outcome.step)
    return cid


def _charts_fit(page, where: str, at_least: int) -> None:
    _wait(lambda: len(page.evaluate(OVERFLOW_JS)) >= at_least, 60, f"{where}: charts", page)
    time.sleep(0.5)  # the last embeds finish their layout
    _no_exception(page)
    boxes = page.evaluate(OVERFLOW_JS)
    wide = [b for b in boxes if b["over"] > 1]
    assert not wide, f"{where}: charts wider than their column: {wide}"


def _steps_zoom_together(page) -> None:
    """Scrolling over the tab's first chart (global gradient norm) redraws the charts below
    it (zoomed steps: one spec, one zoom); a double-click draws them as before. Compared as
    pixels: with many points Streamlit draws the charts on a canvas."""
    time.sleep(1.5)  # the tab's spec has replaced the previous tab's
    embed = page.locator(".vega-embed >> visible=true").first
    spot = {"x": embed.bounding_box()["width"] * 0.4, "y": 160}  # in the first chart's plot
    embed.hover(position=spot)  # scrolls the chart into view
    box, height = embed.bounding_box(), page.viewport_size["height"]
    top = box["y"] + 440  # below the first chart: the first per-layer grid
    assert top < height - 100, (box, height)
    below = {"x": box["x"], "y": top, "width": box["width"], "height": height - top}

    def grids() -> bytes:
        return page.screenshot(clip=below)

    page.mouse.move(5, 5)  # no hover rule (it spans the first chart's plot height)
    time.sleep(0.5)
    before = grids()
    page.mouse.move(box["x"] + spot["x"], box["y"] + spot["y"])
    page.mouse.wheel(0, -300)
    _wait(lambda: grids() != before, 10, "the other charts zoomed", page)
    embed.dblclick(position=spot)
    page.mouse.move(5, 5)  # off the charts: no hover marker
    _wait(lambda: grids() == before, 10, "the other charts reset", page)


@pytest.mark.timeout(300)
def test_charts_fit_their_column_on_laptop_and_full_hd(tmp_path):
    """Compare (every tab, both layouts) and Layer dynamics with all 9 MLP methods, the
    sidebar open: no chart runs past its column at 1280×800 or 1920×1080."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    cid = _fit_store(tmp_path)
    with _serve(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for w, h in FIT_SIZES:
                page = browser.new_page(viewport={"width": w, "height": h})
                # Gradients: a model-level chart and three per-layer grids; side by side
                # Activations: the widest grids (a row per method, a column per layer)
                for layout, tabs in (("", ("Gradients",)), ("&layout=side", ("Activations",))):
                    page.goto(f"{url}/compare?comparison={cid}{layout}")
                    page.get_by_text(f"{len(METHODS)} of {len(METHODS)} runs finished") \
                        .wait_for(timeout=60_000)
                    assert page.get_by_test_id("stSidebarUserContent").is_visible()
                    for tab in tabs:  # a tab's charts are one spec (they zoom together)
                        page.get_by_role("tab", name=tab).click(no_wait_after=True)
                        page.wait_for_url(f"**tab={tab.lower()}**", timeout=30_000)
                        _charts_fit(page, f"{w}×{h} compare {tab} {layout}", 1)
                        if w == 1280 and not layout:
                            _steps_zoom_together(page)
                    page.screenshot(path=str(ARTIFACTS / f"fit_compare{layout[8:]}_{w}.png"),
                                    full_page=True)
                page.goto(f"{url}/layers?comparison={cid}")
                _charts_fit(page, f"{w}×{h} layers", 2)  # the grids over steps are one
                page.screenshot(path=str(ARTIFACTS / f"fit_layers_{w}.png"), full_page=True)
                page.close()
        finally:
            browser.close()


def _tiny_tour_store(path: Path) -> None:
    """Every preset of the tour, trained in-process as a SHORT run of the same preset (fewer
    steps, a narrower net and a smaller grid, same name prefix, so the tour finds it), so
    the browser walks finished steps without waiting for the full 1,000-step runs. The
    batch preset's last two runs stay queued and held (paused), so its step shows the
    progress of unfinished runs beside what is there so far, and the engine trains none."""
    from dataclasses import replace
    from functools import partial

    from normlab.runs.store import Store
    from normlab.training.trainer import train
    from normlab.views import tour
    from normlab.views.labs import sensitivity
    from normlab.views.labs.scaffold import preset_configs, with_changes

    short = {"steps": 12, "eval_interval": 6, "record_interval": 3, "width": 32}
    grids = {"whitening": {"norm": ["none", "batch", "layer", "whiten"]},
             "shift": {"norm": ["none", "batch"], "lr": [0.1, 0.5]},
             "sigmoid": {"norm": ["none", "batch", "layer"]},
             "weights": {"norm": ["batch", "none"], "weight_decay": [0.0, 0.005]},
             "lr": {"norm": ["none", "batch"], "lr": [0.01, 0.1, 1.0], "seed": [0]},
             "init": {"norm": ["none", "batch"], "init_scale": [0.1, 1.0, 10.0], "seed": [0]},
             "batch": {"norm": ["batch", "layer"], "batch_size": [8, 32, 128], "seed": [0]}}
    store = Store(path)
    for step in tour.missing(store):
        preset = step.needs
        base = {k: v for k, v in short.items() if k not in ("steps", "eval_interval",
                                                              "record_interval")
                or preset.tied is None}
        if "corr_snapshots" in preset.base.to_dict() and preset.base.corr_snapshots:
            base["corr_snapshots"] = 2
        if preset.base.ics_interval:
            base["ics_interval"] = 5
        preset = with_changes(preset, base, grids[preset.key])
        if preset.tied is not None:  # the batch sweep: 256 examples seen instead of 3,200
            preset = replace(preset, tied=partial(sensitivity.scaled_for_batch, examples=256))
        configs = preset_configs(preset)
        cid, ids = store.create_comparison([c.to_dict() for c in configs],
                                           name=preset.name(step.lab.title))
        held = ids[-2:] if preset.key == "batch" else []
        for rid in held:
            store.request(rid, "pause")
        for rid, cfg in zip(ids, configs):
            if rid not in held:
                batch, outcome = train(cfg)
                store.append(rid, batch)
                store.finish(rid, outcome.status, outcome.step)
    store.close()


def test_tour_walks_with_the_keyboard(tmp_path):
    """/tour from its first step to its last with the → key, a screenshot per step; ← goes
    back; every step of short stored runs draws its chart or table and its readout."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    from normlab.views.tour import STEPS

    ARTIFACTS.mkdir(exist_ok=True)
    _tiny_tour_store(tmp_path / "runs.sqlite")
    with _serve(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url + "/tour")
            for i, step in enumerate(STEPS):
                page.get_by_role("heading", name=step.title).wait_for(timeout=60_000)
                assert page.url.endswith(f"step={step.key}") or (i == 0 and "step" not in
                                                                 page.url)
                figure = ".vega-embed svg" if step.needs else '[data-testid="stTable"]'
                page.locator(figure).first.wait_for(timeout=60_000)
                page.locator('[data-testid="stAlertContentSuccess"]').first.wait_for(
                    timeout=30_000)
                if step.key == "batch":  # two runs held in the queue
                    page.get_by_text("4 of 6 runs finished · the others are paused",
                                     exact=False).wait_for(
                        timeout=10_000)
                time.sleep(1.0)  # let the chart finish drawing
                _no_exception(page)
                page.screenshot(path=str(ARTIFACTS / f"tour_{i + 1}_{step.key}.png"))
                if i + 1 < len(STEPS):
                    page.keyboard.press("ArrowRight")
                    page.wait_for_url(f"**step={STEPS[i + 1].key}", timeout=20_000)
            page.keyboard.press("ArrowLeft")
            page.wait_for_url(f"**step={STEPS[-2].key}", timeout=20_000)
            page.get_by_role("heading", name=STEPS[-2].title).wait_for(timeout=30_000)
            _no_exception(page)
        finally:
            browser.close()


# the y axes of the visible charts whose numeric tick labels are not evenly spaced (a log
# axis ticked at 1-2-5; the live charts' y scale is a symlog one made logarithmic or linear
# in the browser, so the ARIA text says "symlog" either way), and the faint raw curves
# (1 px) drawn behind smoothed ones
VIEW_JS = """() => {
  const charts = [...document.querySelectorAll('.vega-embed')].filter(e => e.offsetParent);
  const axes = charts.flatMap(c => [...c.querySelectorAll('[aria-label^="Y-axis"]')]);
  const log = axes.filter(a => {
    const v = [...new Set([...a.querySelectorAll('text')].map(t => t.textContent.trim())
      .filter(t => t !== '').map(t => Number(t.replace('\\u2212', '-')))
      .filter(Number.isFinite))].sort((x, y) => x - y);
    if (v.length < 3) return false;
    const d = v.slice(1).map((x, i) => x - v[i]);
    return Math.max(...d) > 1.5 * Math.min(...d);
  }).length;
  const raw = charts.flatMap(c => [...c.querySelectorAll('g.mark-line path[stroke-width="1"]')])
    .filter(p => (p.getAttribute('d') || '').length > 4).length;
  const svg = charts.length ? charts[0].querySelector('svg') : null;
  return {axes: axes.length, log, raw, same: !!(svg && svg.__marked)};
}"""


# the visible tab's first chart: marked, with what it draws (its SVG paths, or a hash of
# its canvas's pixels); then whether that same element draws something else
MARK_JS = """() => { window.__drawn = e => { const c = e.querySelector('canvas');
    if (!c) return [...e.querySelectorAll('g.mark-line path')].map(p => p.getAttribute('d'))
      .join('|');
    const g = c.getContext('2d'), d = g.getImageData(0, 0, c.width, c.height).data;
    let h = 0; for (let i = 0; i < d.length; i += 16) h = (h * 31 + d[i] + d[i + 1]) | 0;
    return 'canvas ' + h; };
  const e = [...document.querySelectorAll('.vega-embed')].find(e => e.offsetParent);
  window.__chart = e.querySelector('svg, canvas'); window.__was = window.__drawn(e); }"""
CHANGED_JS = """() => { const e = window.__chart.closest('.vega-embed');
  return !!e && e.isConnected && e.querySelector('svg, canvas') === window.__chart
    && window.__drawn(e) !== window.__was; }"""


# the page's kept slots with a chart drawn; the visible charts' text; their facet cells
SLOTS_JS = """() => [...document.querySelectorAll('[class*="st-key-nl-slot-"]')]
  .filter(b => b.querySelector('.vega-embed svg, .vega-embed canvas')).length"""
SHOWN_JS = """() => [...document.querySelectorAll('.vega-embed')].filter(e => e.offsetParent)
  .map(e => e.textContent).join(' ')"""
CELLS_JS = """() => [...document.querySelectorAll('.vega-embed')].filter(e => e.offsetParent)
  .flatMap(e => [...e.querySelectorAll('g.mark-group[class*="cell"]')]).length"""


@pytest.mark.timeout(240)
def test_log_scale_and_smoothing_redraw_without_the_server(tmp_path):
    """The log-scale toggle, the smoothing slider and the activation site redraw the
    drawn charts in the browser (normlab.ui.viewbridge → Vega-Lite params): with every
    message from the server held back, the same SVG turns linear and back and draws the
    raw curves behind smoothed ones, and the Activations tab's chart draws another site;
    a tab switch and a layout toggle show the charts the page keeps, with the options
    changed while they were hidden. Released, the server's reruns agree (the link says
    so too)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    # a loss falling from ~2.4 to ~0.05: its log axis is ticked at 1-2-5, its linear one
    #   evenly (a narrower span is ticked evenly on both: viewparams.y_axis)
    cid = _fit_store(tmp_path, steps=60, width=32, depth=2, eval_interval=20,
                     batch_size=64, lr=0.5, activation="relu")
    held, holding, pages = [], [False], []

    def route(ws):  # Streamlit's websocket, its server's messages held while ``holding``
        server = ws.connect_to_server()
        server.on_message(lambda m: held.append(m) if holding[0] else ws.send(m))
        pages.append(ws)

    def release():
        holding[0] = False
        while held:
            pages[-1].send(held.pop(0))

    with _serve(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.route_web_socket("**/_stcore/stream", route)
            page.goto(f"{url}/compare?comparison={cid}")
            page.get_by_text(f"{len(METHODS)} of {len(METHODS)} runs finished").wait_for(
                timeout=60_000)
            _wait(lambda: page.evaluate(VIEW_JS)["log"] >= 2, 30, "the log axes", page)
            time.sleep(1.0)  # the page's last rerun is drawn
            state = page.evaluate(VIEW_JS)
            assert state["raw"] == 0 and state["axes"] >= 4, state
            page.evaluate("() => { document.querySelector('.vega-embed svg').__marked = 1; }")
            main = page.get_by_test_id("stMainBlockContainer")

            holding[0] = True
            main.get_by_text("Log scale", exact=True).click()
            _wait(lambda: page.evaluate(VIEW_JS)["log"] == 0, 5, "linear axes, no server",
                  page)
            assert page.evaluate(VIEW_JS)["same"], "the chart was drawn anew"
            thumb = main.get_by_test_id("stSlider").filter(has_text="Smoothing") \
                .get_by_role("slider")
            thumb.focus()
            page.keyboard.press("End")  # smoothing 0.99
            _wait(lambda: page.evaluate(VIEW_JS)["raw"] >= len(METHODS), 5,
                  "raw curves behind the smoothed ones, no server", page)
            main.get_by_text("Log scale", exact=True).click()
            _wait(lambda: page.evaluate(VIEW_JS)["log"] >= 2, 5, "log axes again", page)
            state = page.evaluate(VIEW_JS)
            assert state["same"] and state["raw"] >= len(METHODS), state
            # the clicks' rerun answers once the page's first run stops (at its next
            #   element: it may be building a hidden tab, seconds under a loaded CI)
            _wait(lambda: page.evaluate("() => 1") and held, 20,
                  "the server's answer (held): the test held nothing back")
            page.screenshot(path=str(ARTIFACTS / "compare_client_view.png"))

            release()  # the server's reruns arrive: same view, now in the link too
            page.wait_for_url("**smooth=0.99**", timeout=20_000)
            time.sleep(1.5)
            state = page.evaluate(VIEW_JS)
            assert state["log"] >= 2 and state["raw"] >= len(METHODS), state
            _no_exception(page)

            # the activation site: the Activations tab's mean and variance hold every
            #   site's rows, and the browser draws the picked one
            page.get_by_role("tab", name="Activations").click()
            page.wait_for_url("**tab=activations**", timeout=20_000)
            page.locator(f"{DRAWN} >> visible=true").first.wait_for(timeout=30_000)
            time.sleep(1.5)
            page.evaluate(MARK_JS)
            holding[0] = True
            box = main.get_by_test_id("stSelectbox").filter(has_text="Activation site")
            box.click()
            page.get_by_role("option", name="post-norm", exact=True).click()
            _wait(lambda: page.evaluate(CHANGED_JS), 5, "the post-norm curves, no server", page)
            _wait(lambda: page.evaluate("() => 1") and held, 10, "the server's answer (held)")
            assert page.evaluate(CHANGED_JS)
            release()
            page.wait_for_url("**site=post_norm**", timeout=20_000)
            _no_exception(page)

            # a tab switch and a layout toggle show charts the page keeps (every chart tab
            #   in both layouts: normlab.views.keptslots), again with the server held back;
            #   the log scale turned off while the Loss tab was hidden reaches it when shown
            _wait(lambda: page.evaluate(SLOTS_JS) >= 6, 30, "every slot drawn", page)
            time.sleep(1.0)
            holding[0] = True
            main.get_by_text("Log scale", exact=True).click()
            _wait(lambda: page.evaluate(VIEW_JS)["log"] == 0, 5, "linear, no server", page)
            page.get_by_role("tab", name="Loss & accuracy").click()
            _wait(lambda: "Training loss" in page.evaluate(SHOWN_JS), 5,
                  "the Loss tab, no server", page)
            _wait(lambda: page.evaluate(VIEW_JS)["log"] == 0, 5,
                  "the hidden tab's log scale followed", page)
            main.get_by_text("Side by side", exact=True).click()
            _wait(lambda: page.evaluate(CELLS_JS) >= 4, 5, "side by side, no server", page)
            state = page.evaluate(VIEW_JS)
            assert state["log"] == 0 and state["raw"] >= len(METHODS), state
            release()
            page.wait_for_url("**layout=side**", timeout=20_000)
            time.sleep(1.5)
            state = page.evaluate(VIEW_JS)
            assert page.evaluate(CELLS_JS) >= 4 and state["log"] == 0, state
            assert "Training loss" in page.evaluate(SHOWN_JS)
            _no_exception(page)
        finally:
            browser.close()
