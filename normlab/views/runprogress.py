"""A comparison's runs as the live view paces and reports them: whether they have started
or ended, how often to poll the store, when a chart is worth redrawing, and the progress
table, summary and per-method groups the Compare page shows above its charts.

Split from :mod:`normlab.views.compareview`, which re-exports every name here.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import pandas as pd

from normlab.runs.store import FINISHED, Store
from normlab.views.frames import run_methods, run_seeds


def finished(runs: pd.DataFrame) -> bool:
    """Whether every run of ``runs`` has ended (True for no runs)."""
    return bool(runs["status"].isin(FINISHED).all())


def signature(runs: pd.DataFrame) -> tuple:
    """(id, status, step) per run: changes whenever a run's stored results may have."""
    return tuple(zip(runs["id"], runs["status"], runs["step"].fillna(0).astype(int)))


FIRST_POLL_SECONDS = 0.25  # the live view's poll until the first records arrive
FIRST_POLL_WINDOW = 30.0  # ... for at most this long after the runs were queued


def started(runs: pd.DataFrame) -> bool:
    """Whether any run of ``runs`` has reported a step."""
    return bool(runs["step"].fillna(0).gt(0).any())


def drawable(runs: pd.DataFrame) -> bool:
    """Whether some run of ``runs`` has recorded two steps (0 and its record interval): a
    line, where one step is a lone point that draws no curve."""
    every = (runs["config"].map(lambda c: int((c or {}).get("record_interval", 1)))
             if "config" in runs.columns else 1)
    return bool((runs["step"].fillna(0) > every).any())


FIRST_LINE_WAIT = 0.75  # s: how long a live view's first draw waits for a training run's line


def wait_for_line(store: Store, ids: list[str], runs: pd.DataFrame,
                  timeout: float = FIRST_LINE_WAIT, poll: float = 0.05) -> pd.DataFrame:
    """``runs`` (the store's rows of ``ids``), or, when a worker is training one of them
    and none has a line yet (:func:`drawable`), their rows once one has — waiting at most
    ``timeout`` s. A comparison just launched is a fraction of a second from its first
    line (a run flushes after its first step, then 0.05 s later): the first draw waits for
    it rather than drawing empty charts and the whole page again a moment later. Runs
    only queued (no worker yet), or queued more than FIRST_POLL_WINDOW s ago (e.g. a
    notebook's slow loop), are not waited for."""
    deadline = time.monotonic() + timeout
    recent = time.time() - pd.to_numeric(runs["created_at"]).min() < FIRST_POLL_WINDOW
    while (recent and not drawable(runs) and not finished(runs)
           and runs["status"].isin(("running",)).any() and time.monotonic() < deadline):
        time.sleep(poll)
        runs = store.runs(ids=ids)
    return runs


def poll_seconds(runs: pd.DataFrame, steady: float, now: float | None = None) -> float | None:
    """How often a live view of ``runs`` polls the store: None once every run has ended;
    FIRST_POLL_SECONDS until a run has recorded a line (:func:`drawable`), so the first
    curve is drawn as soon as a worker flushes it (a quarter second, not up to
    ``steady``; a worker flushes after its first step, then at gaps doubling from 0.05 s),
    but only for FIRST_POLL_WINDOW s after the runs were queued (runs waiting behind
    another comparison are polled at ``steady``); ``steady`` otherwise."""
    if finished(runs):
        return None
    now = time.time() if now is None else now
    if not drawable(runs) and now - pd.to_numeric(runs["created_at"]).min() < FIRST_POLL_WINDOW:
        return min(FIRST_POLL_SECONDS, steady)
    return steady


LIVE_REDRAWS = 40  # a live chart is redrawn about this many times over a run's training


def chart_signature(runs: pd.DataFrame, redraws: int = LIVE_REDRAWS) -> tuple:
    """(id, status, step bucket) per run: like :func:`signature`, but the step floored to
    1/``redraws`` of the run's length, so live charts (cached by it) are rebuilt a few dozen
    times per run rather than at every poll; a view toggle between two rebuilds is a cache
    hit. A finished run's bucket is its last step."""
    total = pd.to_numeric(runs["total_steps"], errors="coerce").fillna(0).astype(int)
    step = runs["step"].fillna(0).astype(int)
    size = (total // max(1, redraws)).clip(lower=1)
    done = runs["status"].isin(FINISHED)
    bucket = step.where(done, step // size * size)
    return tuple(zip(runs["id"], runs["status"], bucket.astype(int)))


def _eta(row) -> str:
    if row.status in FINISHED:
        return "—"
    if row.status == "queued":
        return "waiting for a worker"
    if row.status == "paused" or not row.steps_per_sec:
        return "paused" if row.status == "paused" else "starting"
    left = max(0, row.total - row.step) / row.steps_per_sec
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.1f} min"


def progress_table(store: Store, runs: pd.DataFrame | Iterable[str]) -> pd.DataFrame:
    """Per run (``Store.runs(...)`` rows, or run ids): method, seed, status, done (0..1),
    step, total, steps/s, ETA, the last validation accuracy and the error message."""
    if not isinstance(runs, pd.DataFrame):
        runs = store.runs(ids=list(runs))
    total = runs["total_steps"].fillna(0).astype(int)
    step = runs["step"].fillna(0).astype(int)
    out = pd.DataFrame({
        "run": runs["id"], "method": run_methods(runs), "seed": runs["seed"],
        "status": runs["status"], "done": (step / total.where(total > 0, 1)).clip(0, 1),
        "step": step, "total": total,
        "steps_per_sec": runs["steps_per_sec"].where(runs["status"].isin(("running", "paused"))),
    }).reset_index(drop=True)
    out["eta"] = [_eta(r) for r in out.itertuples()]
    acc = store.metrics(list(out["run"]), metrics=["acc"], sites=["val"]) if len(out) else None
    last = (acc.sort_values("step").groupby("run", observed=True)["value"].last()
            if acc is not None and len(acc) else pd.Series(dtype=float))
    out["val_acc"] = [f"{v:.3f}" if pd.notna(v) else "" for v in out["run"].map(last)]
    out["steps_per_sec"] = [f"{v:.0f}" if pd.notna(v) else "" for v in out["steps_per_sec"]]
    out["message"] = runs["error"].fillna("").to_numpy()
    return out


def progress_summary(runs: pd.DataFrame) -> dict:
    """Overall progress of some runs: fraction of steps done, a one-line text, finished."""
    total = runs["total_steps"].fillna(0).astype(float)
    step = runs["step"].fillna(0).astype(float).clip(upper=total)
    status = runs["status"]
    done_runs = status.isin(FINISHED)
    step = step.where(~done_runs, total)  # a cancelled or diverged run counts as complete
    fraction = float(step.sum() / total.sum()) if total.sum() > 0 else 1.0
    n = len(runs)
    parts = [f"{int(done_runs.sum())} of {n} runs finished"]
    for s in ("running", "paused", "queued"):
        if (count := int((status == s).sum())):
            parts.append(f"{count} {s}")
    if (status == "queued").any() and not status.isin(("running", "paused")).any():
        parts.append("waiting for a worker")
    speed = runs["steps_per_sec"].where(status == "running").sum()
    if not done_runs.all() and speed > 0:
        left = float((total - step).sum()) / speed
        parts.append(f"about {left:.0f} s left" if left < 120
                     else f"about {left / 60:.0f} min left")
    for s in ("diverged", "failed", "cancelled", "interrupted"):
        if (count := int((status == s).sum())):
            parts.append(f"{count} {s}")
    return {"fraction": min(1.0, max(0.0, fraction)), "text": " · ".join(parts),
            "finished": bool(done_runs.all())}


MANY_RUNS = 24  # above this, the live view summarizes progress per method, not per run


def progress_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Progress per method for a large grid: runs, how many finished / running / queued /
    diverged or failed, and the share of steps done (one row per method, not per run)."""
    total = runs["total_steps"].fillna(0).astype(float)
    done_runs = runs["status"].isin(FINISHED)
    step = runs["step"].fillna(0).astype(float).clip(upper=total).where(~done_runs, total)
    df = pd.DataFrame({"method": runs["norm"].astype(str), "status": runs["status"],
                       "step": step, "total": total})
    rows = []
    for method, g in df.groupby("method", sort=False):
        rows.append({"method": method, "runs": len(g),
                     "finished": int(g["status"].isin(FINISHED).sum()),
                     "running": int(g["status"].isin(("running", "paused")).sum()),
                     "queued": int((g["status"] == "queued").sum()),
                     "diverged": int((g["status"] == "diverged").sum()),
                     "failed": int(g["status"].isin(("failed", "interrupted")).sum()),
                     "done": float(g["step"].sum() / g["total"].sum()) if g["total"].sum()
                     else 1.0})
    return pd.DataFrame(rows, columns=["method", "runs", "finished", "running", "queued",
                                       "diverged", "failed", "done"])


def run_label(runs: pd.DataFrame) -> dict[str, str]:
    """Run id → 'method · seed N' (the seed only when the comparison has several)."""
    several = runs["seed"].nunique() > 1
    return {i: f"{m} · seed {s}" if several else str(m)
            for i, m, s in zip(runs["id"], run_methods(runs), run_seeds(runs))}


def comparison_choices(store: Store) -> dict[str, str]:
    """Comparison id → 'name (N runs, age)' for a picker, newest first."""
    table = store.comparisons()
    now = time.time()

    def age(t: float) -> str:
        s = max(0.0, now - t)
        return (f"{s:.0f} s ago" if s < 90 else f"{s / 60:.0f} min ago" if s < 5400
                else f"{s / 3600:.0f} h ago" if s < 172800 else f"{s / 86400:.0f} days ago")

    return {r.id: f"{r.name} — {r.n_runs} runs, {age(r.created_at)} ({r.id})"
            for r in table.itertuples()}
