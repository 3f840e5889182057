"""The Runs (history) table and what can be done to its rows, without Streamlit.

The dashboard's Runs page is a thin layer over this module:

* :func:`run_table` — one row per stored run (:data:`TABLE_COLUMNS`): its comparison,
  method, seed, dataset, model, status, steps, final train/val loss and accuracy (the last
  recorded value of each, :func:`final_metrics`), creation time, tags and notes. Newest
  comparisons first, runs in comparison order. :func:`build_table` is the pure part, for
  callers that cache the final metrics themselves.
* :func:`filter_runs` / :func:`filter_options` — filters by dataset, method, status, tag
  (run or comparison tags), comparison and creation date.
* :class:`Target` / :func:`targets` — what an action applies to: one run, a whole
  comparison, or a hand-picked set of runs (possibly from several comparisons).
* Actions: :func:`apply_edits` (rename, tag, annotate), :func:`delete` with
  :func:`deletion_summary` (what will go), :func:`rerun` (the stored configs as a new
  comparison), :func:`link_params` (the ``?comparison=`` / ``?runs=`` query of the
  Compare and Layer pages).
* Bytes for downloads and uploads: :func:`export_bytes` (CSV / Parquet / JSON through
  :func:`normlab.runs.exchange.export`), :func:`chart_bytes` (PNG / SVG through
  :func:`normlab.views.charts.to_image`), :func:`import_bytes` (an uploaded export file).

Every error a user can cause comes back as a ``ValueError`` (or :class:`NotFound`) whose
message names the value and the fix, ready to be shown as is.
"""
from __future__ import annotations

import datetime as dt
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.views.frames import run_methods
from normlab.views.palette import method_order
from normlab.runs import exchange
from normlab.runs.store import STATUSES, NotFound, Store, empty_metrics

FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")  # "<site>_<metric>"
TABLE_COLUMNS = ("id", "comparison", "name", "method", "seed", "dataset", "model",
                 "activation", "status", "step", "total_steps", *FINAL_METRICS, "created",
                 "tags", "notes", "comparison_id", "comparison_tags", "comparison_notes",
                 "comparison_name")  # comparison: the label shown; comparison_name: its name
EXPORT_MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet",
               "json": "application/json"}
IMAGE_MIME = {"png": "image/png", "svg": "image/svg+xml"}
IMPORT_TYPES = ("json", "parquet")  # a CSV export needs its .runs.json sidecar beside it


# ------------------------------------------------------------------------------ the table
def final_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last recorded train/val loss and accuracy of each run in tidy ``metrics``.

    Returns one row per run that has any of them, indexed by run id, with the
    :data:`FINAL_METRICS` columns (NaN where a run never recorded that metric).
    """
    m = metrics[(metrics["layer"].astype(str) == "model")]
    col = m["site"].astype(str) + "_" + m["metric"].astype(str)
    m = m.assign(col=col.to_numpy(), run=m["run"].astype(str).to_numpy())
    m = m[m["col"].isin(FINAL_METRICS)]
    if m.empty:
        return pd.DataFrame(columns=list(FINAL_METRICS), index=pd.Index([], name="run"),
                            dtype=float)
    last = m.loc[m.groupby(["run", "col"], sort=False)["step"].idxmax()]
    wide = last.pivot(index="run", columns="col", values="value")
    wide.columns.name = None
    return wide.reindex(columns=list(FINAL_METRICS)).astype(float)


def load_final_metrics(store: Store, run_ids: Iterable[str]) -> pd.DataFrame:
    """:func:`final_metrics` of ``run_ids``, reading only their model-level loss and acc."""
    ids = list(run_ids)
    if not ids:
        return final_metrics(empty_metrics())
    return final_metrics(store.metrics(runs=ids, layers="model", sites=["train", "val"],
                                       metrics=["loss", "acc"]))


def _local_time(seconds: pd.Series) -> pd.Series:
    """Unix seconds as naive local datetimes (what the person at the screen reads)."""
    tz = dt.datetime.now().astimezone().tzinfo
    stamps = pd.to_datetime(seconds.astype(float), unit="s", utc=True)
    return stamps.dt.tz_convert(tz).dt.tz_localize(None)


def _grid_words(grid) -> str:
    """'9 methods × 2 seeds', 'batch × lr ×3 × 1 seed': what a comparison's grid varies."""
    if not isinstance(grid, dict) or not grid:
        return ""
    parts = []
    for key, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if key == "norm":
            parts.append(str(values[0]) if len(values) == 1 else f"{len(values)} methods")
        elif key == "seed":
            parts.append(f"{len(values)} seed{'s' * (len(values) != 1)}")
        else:
            parts.append(f"{key} ×{len(values)}" if len(values) > 1 else f"{key} {values[0]}")
    return " × ".join(parts)


def comparison_labels(comparisons: pd.DataFrame) -> dict[str, str]:
    """Comparison id → a label that leads with what tells it apart from the others: the
    setup fields that differ between the stored comparisons (e.g. 'lr 0.01 · steps 3000'),
    then its grid ('9 methods × 1 seed'), then its name."""
    if comparisons.empty:
        return {}
    from normlab.views.frames import setting_labels

    bases = [b if isinstance(b, dict) else {} for b in comparisons["base"]]
    known = [b for b in bases if b]
    common = set.intersection(*(set(b) for b in known)) if len(known) > 1 else set()
    differ = setting_labels([{k: b[k] for k in common} if b else {} for b in bases],
                            among=[i for i, b in enumerate(bases) if b])
    differ = [d if b else "" for d, b in zip(differ, bases)]
    out = {}
    for cid, name, grid, diff in zip(comparisons["id"], comparisons["name"], comparisons["grid"],
                                     differ):
        head = " · ".join(p for p in (diff, _grid_words(grid)) if p)
        out[cid] = f"{head} — {name}" if head and name else (head or str(name or cid))
    return out


def build_table(runs: pd.DataFrame, comparisons: pd.DataFrame,
                finals: pd.DataFrame) -> pd.DataFrame:
    """The Runs table from ``store.runs()``, ``store.comparisons()`` and final metrics."""
    comp = comparisons.set_index("id") if len(comparisons) else None
    out = pd.DataFrame({
        "id": runs["id"].astype(str),
        "comparison": (runs["comparison_id"].map(comparison_labels(comparisons))
                       if comp is not None else None),
        "name": runs["name"].where(runs["name"].notna(), None),
        "method": run_methods(runs) if len(runs) else runs["norm"],
        "seed": runs["seed"],
        "dataset": runs["dataset"],
        "model": runs["model"],
        "activation": [c.get("activation") if isinstance(c, dict) else None
                       for c in runs["config"]],
        "status": runs["status"],
        "step": runs["step"],
        "total_steps": runs["total_steps"],
    })
    fin = finals.reindex(out["id"])
    for col in FINAL_METRICS:
        out[col] = fin[col].to_numpy(dtype=float) if col in fin else np.nan
    out["created"] = _local_time(runs["created_at"]).to_numpy()
    out["tags"] = [list(t) if isinstance(t, list) else [] for t in runs["tags"]]
    out["notes"] = runs["notes"].fillna("").astype(str)
    out["comparison_id"] = runs["comparison_id"].astype(str)
    out["comparison_name"] = (runs["comparison_id"].map(comp["name"]).to_numpy()
                              if comp is not None else None)
    if comp is not None:
        out["comparison_tags"] = [list(comp.at[c, "tags"] or []) for c in out["comparison_id"]]
        out["comparison_notes"] = [str(comp.at[c, "notes"] or "") for c in out["comparison_id"]]
    else:
        out["comparison_tags"], out["comparison_notes"] = [[]] * len(out), [""] * len(out)
    # newest comparison first; within one, the submitted order (store.runs() order)
    order = np.lexsort((np.arange(len(out)), out["comparison_id"].to_numpy(),
                        -runs["created_at"].to_numpy(dtype=float)))
    return out.iloc[order].reset_index(drop=True)[list(TABLE_COLUMNS)]


def run_table(store: Store) -> pd.DataFrame:
    """One row per stored run (:data:`TABLE_COLUMNS`), newest comparison first."""
    runs = store.runs()
    return build_table(runs, store.comparisons(), load_final_metrics(store, runs["id"]))


# ---------------------------------------------------------------------------- filters
def all_tags(table: pd.DataFrame) -> list[str]:
    """Every run or comparison tag in ``table``, sorted."""
    return sorted({t for col in ("tags", "comparison_tags") for ts in table[col] for t in ts})


def filter_options(table: pd.DataFrame) -> dict[str, list]:
    """The distinct values each filter can take (for the widgets), in a sensible order."""
    created = table["created"]
    return {
        "datasets": sorted(table["dataset"].dropna().astype(str).unique()),
        "methods": method_order(table["method"].dropna().astype(str).unique()),
        "statuses": [s for s in STATUSES if s in set(table["status"])],
        "tags": all_tags(table),
        "comparisons": list(dict.fromkeys(table["comparison_id"])),
        "dates": ([created.min().date(), created.max().date()] if len(table) else []),
    }


def _is_set(values) -> bool:
    return values is not None and len(values) > 0


def filter_runs(table: pd.DataFrame, *, datasets: Iterable[str] | None = None,
                methods: Iterable[str] | None = None, statuses: Iterable[str] | None = None,
                tags: Iterable[str] | None = None, comparisons: Iterable[str] | None = None,
                since: dt.date | None = None, until: dt.date | None = None) -> pd.DataFrame:
    """The rows of ``table`` that pass every given filter (None or empty = no filter).

    ``tags``: rows with at least one of them, on the run or on its comparison.
    ``comparisons``: comparison ids. ``since`` / ``until``: creation dates, inclusive.
    """
    keep = np.ones(len(table), dtype=bool)
    for col, allowed in (("dataset", datasets), ("method", methods), ("status", statuses),
                         ("comparison_id", comparisons)):
        if _is_set(allowed):
            keep &= table[col].isin(list(allowed)).to_numpy()
    if _is_set(tags):
        wanted = set(tags)
        keep &= np.array([bool(wanted & set(a)) or bool(wanted & set(b)) for a, b in
                          zip(table["tags"], table["comparison_tags"])], dtype=bool)
    day = table["created"].dt.normalize()
    if since is not None:
        keep &= (day >= pd.Timestamp(since)).to_numpy()
    if until is not None:
        keep &= (day <= pd.Timestamp(until)).to_numpy()
    return table[keep].reset_index(drop=True)


# ------------------------------------------------------------------- targets of actions
@dataclass(frozen=True)
class Target:
    """What an action applies to: a ``run``, a ``comparison`` or a set of ``runs``."""

    kind: str  # "run" | "comparison" | "runs"
    id: str | None  # the run or comparison id (None for a set of runs)
    run_ids: tuple[str, ...]  # the runs concerned
    label: str  # for a picker
    name: str = ""  # current name (run name or comparison name)
    tags: tuple[str, ...] = ()  # current tags (common tags for a set)
    notes: str = ""  # current notes ('' for a set whose notes differ)
    comparison_ids: tuple[str, ...] = field(default=())


def run_label(row) -> str:
    """``'batch · seed 0 · <comparison name> (r1a2b3c4)'`` for a table or runs row."""
    name = f"“{row['name']}” · " if isinstance(row.get("name"), str) and row["name"] else ""
    comp = row.get("comparison") or row.get("comparison_id")
    return f"{name}{row['method']} · seed {row['seed']} · {comp} ({row['id']})"


def targets(table: pd.DataFrame, selected: Iterable[str]) -> list[Target]:
    """Targets for the ``selected`` run ids: the set (when several), each run, each of
    their comparisons (whole). Ids not in ``table`` are ignored."""
    by_id = table.set_index("id", drop=False)
    ids = [r for r in dict.fromkeys(selected) if r in by_id.index]
    rows = [by_id.loc[r] for r in ids]
    out: list[Target] = []
    if len(rows) > 1:
        common = set.intersection(*(set(r["tags"]) for r in rows))
        notes = {r["notes"] for r in rows}
        out.append(Target("runs", None, tuple(ids), f"all {len(ids)} selected runs",
                          tags=tuple(t for t in rows[0]["tags"] if t in common),
                          notes=notes.pop() if len(notes) == 1 else "",
                          comparison_ids=tuple(dict.fromkeys(r["comparison_id"] for r in rows))))
    for r in rows:
        out.append(Target("run", r["id"], (r["id"],), f"run {run_label(r)}",
                          name=r["name"] or "", tags=tuple(r["tags"]), notes=r["notes"],
                          comparison_ids=(r["comparison_id"],)))
    for cid in dict.fromkeys(r["comparison_id"] for r in rows):
        members = table[table["comparison_id"] == cid]
        first = members.iloc[0]
        out.append(Target("comparison", cid, tuple(members["id"]),
                          f"comparison “{first['comparison']}” ({cid}) · all "
                          f"{len(members)} runs", name=str(first["comparison_name"]),
                          tags=tuple(first["comparison_tags"]),
                          notes=first["comparison_notes"], comparison_ids=(cid,)))
    return out


def parse_tags(text: str) -> list[str]:
    """Tags from a comma-separated string: stripped, empty ones dropped, order kept."""
    return list(dict.fromkeys(t.strip() for t in str(text or "").split(",") if t.strip()))


def apply_edits(store: Store, target: Target, *, name: str | None = None,
                tags: Iterable[str] | None = None, notes: str | None = None) -> list[str]:
    """Set the name / tags / notes of ``target`` where they differ from its current ones.

    For a set of runs the tags and notes go to each run (a set has no name). An empty run
    name clears it; a comparison needs a name. Returns the fields changed.
    """
    changed = []
    ids = list(target.run_ids) if target.kind == "runs" else [target.id]
    if name is not None and target.kind != "runs" and name.strip() != target.name:
        if target.kind == "comparison" and not name.strip():
            raise ValueError(f"comparison {target.id} needs a name; type one, or leave "
                             f"“{target.name}”")
        store.rename(target.id, name.strip() or None)
        changed.append("name")
    if tags is not None and tuple(tags) != tuple(target.tags):
        for i in ids:
            store.tag(i, list(tags))
        changed.append("tags")
    if notes is not None and notes != target.notes:
        for i in ids:
            store.annotate(i, notes)
        changed.append("notes")
    return changed


def deletion_summary(table: pd.DataFrame, target: Target) -> str:
    """What deleting ``target`` removes, in one sentence (say it before asking to confirm)."""
    rows = table[table["id"].isin(target.run_ids)]
    runs = ", ".join(f"{r.id} ({r.method}, seed {r.seed})" for r in rows.itertuples())
    active = int(rows["status"].isin(["running", "paused"]).sum())
    what = (f"comparison “{target.name}” ({target.id}) with its {len(rows)} run(s): {runs}"
            if target.kind == "comparison" else f"{len(rows)} run(s): {runs}")
    tail = (f" {active} of them still training: their workers stop." if active else "")
    return f"This deletes {what}, with all their metrics. It cannot be undone.{tail}"


def delete(store: Store, target: Target) -> list[str]:
    """Delete ``target`` (a comparison whole, or its runs); returns the deleted run ids."""
    if not target.run_ids and target.kind != "comparison":
        raise ValueError("nothing to delete: select at least one run first")
    if target.kind == "comparison":
        return store.delete(target.id)
    deleted = []
    for rid in target.run_ids:
        try:
            deleted += store.delete(rid)
        except NotFound:  # already gone (deleted from another window): nothing to do
            pass
    return deleted


def rerun(store: Store, target: Target, *, start: bool = True) -> tuple[str, list[str]]:
    """Queue the stored configs of ``target`` again as a new comparison.

    A comparison keeps its base config and grid. Raises ConfigError (a ValueError) when a
    stored config is not valid for this NormLab (e.g. a dataset file that has moved).
    """
    from normlab.runs.comparisons import submit
    from normlab.training.config import RunConfig

    runs = store.runs(ids=list(target.run_ids))
    configs = [RunConfig.from_stored(c) for c in runs["config"]]
    base = grid = None
    if target.kind == "comparison":
        comp = store.comparison(target.id)
        base = RunConfig.from_stored(comp["base"]) if comp.get("base") else None
        grid = comp.get("grid")
        name = f"re-run of {comp['name']}"
    elif target.kind == "run":
        name = f"re-run of {target.id} ({runs['norm'].iloc[0]}, seed {runs['seed'].iloc[0]})"
    else:
        name = f"re-run of {len(configs)} runs"
    return submit(configs, name=name, base=base, grid=grid, store=store, start=start)


def link_params(table: pd.DataFrame, run_ids: Iterable[str]) -> dict[str, str]:
    """The query of the Compare and Layer pages for ``run_ids``: ``{"comparison": id}``
    when they are exactly the runs of one comparison, else ``{"runs": "r1,r2,..."}``."""
    ids = list(dict.fromkeys(run_ids))
    comps = table.loc[table["id"].isin(ids), "comparison_id"].unique()
    if len(comps) == 1:
        members = table.loc[table["comparison_id"] == comps[0], "id"]
        if set(members) == set(ids):
            return {"comparison": str(comps[0])}
    return {"runs": ",".join(ids)} if ids else {}


# ------------------------------------------------------------------ downloads and uploads
def export_name(id: str, fmt: str) -> str:
    return f"normlab-{id}.{fmt}"


def export_bytes(store: Store, id: str, fmt: str) -> bytes:
    """Run or comparison ``id`` as an export file's bytes (``fmt``: csv, parquet, json).

    CSV holds the tidy metric rows only (for spreadsheets); JSON and Parquet also hold the
    run and comparison records and can be imported again.
    """
    if fmt not in EXPORT_MIME:
        raise ValueError(f"unknown download format {fmt!r}; use one of "
                         f"{', '.join(EXPORT_MIME)}")
    with tempfile.TemporaryDirectory(prefix="normlab-export-") as tmp:
        path = exchange.export(store, id, Path(tmp) / export_name(id, fmt), fmt)
        return path.read_bytes()


def chart_bytes(chart, fmt: str) -> bytes:
    """An Altair chart as PNG or SVG bytes (rendered by vl-convert, no browser needed)."""
    from normlab.views.charts import to_image

    return to_image(chart, fmt)


@dataclass(frozen=True)
class Imported:
    added: list[str]  # ids of the runs added
    skipped: str = ""  # the store's note about runs already present ('' if none)


def import_bytes(store: Store, data: bytes, filename: str) -> Imported:
    """Add the runs of an uploaded export file; ValueError with a readable message if the
    file is not a NormLab JSON or Parquet export."""
    suffix = Path(filename).suffix.lower().lstrip(".")
    if suffix == "csv":
        raise ValueError(f"{filename} is a CSV export, which needs its {filename}.runs.json "
                         "file beside it; upload the JSON or Parquet export instead (or use "
                         "`python -m normlab import` with both files)")
    if suffix not in IMPORT_TYPES:
        raise ValueError(f"{filename} is not a NormLab export; upload a .json or .parquet "
                         "file written by NormLab's export")
    with tempfile.TemporaryDirectory(prefix="normlab-import-") as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                added = exchange.import_file(store, path)
            except ValueError as e:
                raise ValueError(str(e).replace(str(path), filename)) from None
            except Exception as e:  # anything else about an arbitrary upload: its problem
                raise ValueError(f"cannot import {filename}: it is not a readable NormLab "
                                 f"export ({type(e).__name__}: {e})") from None
        skipped = "; ".join(str(w.message).replace(str(path), filename) for w in caught)
    return Imported(added, skipped)
