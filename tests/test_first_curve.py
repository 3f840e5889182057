"""The quick start's first curve on a cold server: what keeps it fast, checked without a
browser (the browser test measures the figure itself, see BENCHMARKS.md).

* the dashboard's Launch path (checking the quick start's configs, submitting them)
  imports neither torch nor scikit-learn, numba or scipy: on a cold server each costs
  seconds of CPU the engine's warm-up needs (checked in a fresh interpreter);
* nor do the Home and Compare pages' imports: the Compare page's first run comes between
  the click and the first curve (the report button's module imports torch only when a
  report is built);
* the live view polls fast until a run has recorded a line (two steps), then at its steady pace
  (:func:`normlab.views.compareview.poll_seconds`, on constructed run tables);
* :func:`normlab.views.compareview.stream_rows` yields each row of charts as soon as it is
  complete, in the rows :func:`normlab.views.compareview.chart_rows` lays out (the live
  view draws a tab as one linked spec, ``normlab.ui.live``, so it uses the layout only).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from normlab.views import compareview as views

ROOT = Path(__file__).resolve().parents[1]

LAUNCH = """
import json, sys
import normlab.runs.comparisons as comparisons
comparisons.ensure_engine = lambda *a, **k: None  # the engine is not under test
from normlab.runs.store import Store
from normlab.views import compareview as views, urlstate
quick = views.QUICK_START
cid, problems = views.launch(Store(sys.argv[1]), quick, urlstate.default_methods(quick.model),
                             views.QUICK_SEEDS)
print(json.dumps({"cid": cid, "problems": problems,
                  "heavy": sorted(m for m in ("torch", "sklearn", "numba", "scipy")
                                  if m in sys.modules)}))
"""


def test_launching_the_quick_start_imports_no_heavy_module(tmp_path):
    out = subprocess.run([sys.executable, "-c", LAUNCH, str(tmp_path / "runs.sqlite")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cid"] and result["problems"] == {}  # really launched (queued)
    assert result["heavy"] == []


PAGE_IMPORTS = """
import ast, json, sys
for page in sys.argv[1:]:
    tree = ast.parse(open(page).read())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), page, "exec"), {})
print(json.dumps(sorted(m for m in ("torch", "sklearn", "numba", "scipy") if m in sys.modules)))
"""


def test_the_home_and_compare_pages_import_no_heavy_module():
    pages = [str(ROOT / "pages" / name) for name in ("0_home.py", "1_compare.py")]
    out = subprocess.run([sys.executable, "-c", PAGE_IMPORTS, *pages], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _runs(steps, statuses=None, created=100.0) -> pd.DataFrame:
    statuses = statuses or ["running"] * len(steps)
    return pd.DataFrame({"step": steps, "status": statuses,
                         "created_at": [created] * len(steps)})


def test_the_live_view_polls_fast_until_the_first_step_then_steadily():
    steady, fast = 1.0, views.FIRST_POLL_SECONDS
    assert fast < steady
    assert views.poll_seconds(_runs([0, 0], ["running", "queued"]), steady, now=101) == fast
    assert views.poll_seconds(_runs([None, 0]), steady, now=101) == fast  # none reported
    # one step recorded is a point, not a line: still fast; two are a line
    assert views.poll_seconds(_runs([1, 0]), steady, now=101) == fast
    assert views.poll_seconds(_runs([2, 0]), steady, now=101) == steady
    every5 = _runs([5, 0]).assign(config=[{"record_interval": 5}, {}])
    assert views.poll_seconds(every5, steady, now=101) == fast  # steps 0 and 5 not both in
    assert views.poll_seconds(every5.assign(step=[6, 0]), steady, now=101) == steady
    # queued behind another comparison for longer than the window: the steady pace
    late = 100 + views.FIRST_POLL_WINDOW + 1
    assert views.poll_seconds(_runs([0, 0], ["queued"] * 2), steady, now=late) == steady
    assert views.poll_seconds(_runs([500, 3], ["done", "failed"]), steady, now=101) is None
    assert views.poll_seconds(_runs([0], ["running"]), 0.1, now=101) == 0.1  # never slower


class _Steps:
    """A store whose runs report ``steps`` after ``after`` s (a worker's first flushes)."""

    def __init__(self, runs: pd.DataFrame, steps: list, after: float):
        self.base, self.steps, self.calls = runs, steps, 0
        self.ready = time.monotonic() + after

    def runs(self, ids):
        self.calls += 1
        return self.base.assign(step=self.steps) if time.monotonic() >= self.ready else self.base


def test_the_first_draw_waits_briefly_for_a_training_runs_line():
    """wait_for_line: a run a worker trains is waited for until it has a line (it comes a
    fraction of a second after the launch), at most FIRST_LINE_WAIT; queued runs, runs
    with a line, ended runs and runs queued long ago are not waited for."""
    now = time.time()
    running = _runs([1, 0], ["running", "queued"], created=now)
    store = _Steps(running, [7, 0], after=0.2)
    start = time.monotonic()
    got = views.wait_for_line(store, ["a", "b"], running, poll=0.01)
    assert 0.2 <= time.monotonic() - start < 0.5 and list(got["step"]) == [7, 0]
    stuck = _Steps(running, [1, 0], after=0.0)  # never a line: gives up
    start = time.monotonic()
    assert list(views.wait_for_line(stuck, ["a", "b"], running, timeout=0.3, poll=0.01)["step"]) == [1, 0]
    assert 0.3 <= time.monotonic() - start < 0.6
    for runs in (_runs([0, 0], ["queued"] * 2, created=now),  # no worker has them yet
                 _runs([9, 0], ["running", "queued"], created=now),  # a line already
                 _runs([3, 1], ["failed", "done"], created=now),
                 _runs([1, 0], ["running", "queued"], created=now - 2 * views.FIRST_POLL_WINDOW)):
        idle = _Steps(runs, [9, 9], after=0.0)
        assert views.wait_for_line(idle, ["a", "b"], runs, poll=0.01) is runs and idle.calls == 0


def test_chart_rows_are_yielded_as_soon_as_they_are_complete():
    built = []

    def charts(halves):  # records which charts have been built when a row comes out
        for i, half in enumerate(halves):
            built.append(i)
            yield i, half

    rows = views.stream_rows(charts([True, True, True, False]), lambda item: item[1])
    assert [i for i, _ in next(rows)] == [0, 1] and built == [0, 1]  # not all four first
    assert [[i for i, _ in row] for row in rows] == [[2], [3]]
    for halves in ([True] * 5, [False, True, True], [True, False, True], []):
        streamed = [[i for i, _ in row] for row in
                    views.stream_rows(charts(halves), lambda item: item[1])]
        assert streamed == views.chart_rows(halves)
