"""Export and import of runs and comparisons: carry results to another machine, losslessly.

Every format holds the same content: the comparison record (name, base, grid, notes, tags,
origin), the run records (config, status, step, times, name, notes, tags, ...) and the tidy
metric rows of :mod:`normlab.measure.schema`.

* ``json`` — one file ``{"format": "normlab", "format_version": 1, "comparisons": [...],
  "runs": [{...run fields..., "series": [{"layer", "site", "metric", "steps": [...],
  "values": [...]}]}]}``. Readable by anything; floats are written so they read back
  bit-identical (an infinite value is written ``Infinity``, as Python and JavaScript's
  ``JSON5`` read it; NaN never occurs: it means "not measured" and is not stored).
* ``parquet`` — one file of tidy rows (``run, step, layer, site, metric, value`` and the
  :data:`DESCRIBED` columns ``label, method, seed, comparison_name``); the comparison and
  run records are JSON in the file's key-value metadata under ``normlab``. The smallest
  and fastest; pandas, R, DuckDB and Polars read the rows directly.
* ``csv`` — the same rows in ``PATH`` plus the records in ``PATH.runs.json`` beside it.
  ``pd.read_csv(PATH)`` needs only the CSV; importing it into a store needs both files
  (the configs are in the sidecar). For spreadsheets; about 20× the Parquet file.

Each row names its run in words (``label``: the run's name, else its method, the settings
that differ between the exported runs and the seed when there are several), so
``df.pivot_table(index="step", columns="label", values="value").plot()`` has a readable
legend. :func:`read_export` reads any of the three formats into those rows (for JSON,
whose series are nested, it is the one call that does; ``pd.read_json`` cannot).

Import (:func:`import_file`; the format is recognised from the content, not the name —
an HTML report of :mod:`normlab.views.report` imports the ``json`` export it embeds,
:mod:`normlab.runs.embedded`):

* Ids are kept when they are free. A run already in the store with the same id, creation
  time and config is the same run: it is skipped with a warning, so importing a file twice
  adds nothing (delete the run first to re-import a newer export of it). A *different*
  run or comparison that happens to have the same id gets a fresh id.
* A run exported while running or paused arrives ``interrupted``; a queued run stays
  queued, so a lecturer can prepare a comparison at home and run it in class.
* A malformed file raises ``ValueError`` naming the file and the problem; nothing is
  written then.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normlab.runs.embedded import extract, looks_like_html
from normlab.runs.chunks import (
    INSERT_CHUNK, MAX_STEP, STEP_DTYPE, VALUE_DTYPE, MetricQuery, metrics_frame,
)
from normlab.measure.schema import COLUMNS
from normlab.runs.records import RecordError, clean_comparison, clean_run
from normlab.runs.store import Store
from normlab.runs.storedb import COMPARISON_FIELDS, RUN_FIELDS, _new_id, _record

FORMATS = ("json", "parquet", "csv")
FORMAT_NAME = "normlab"
FORMAT_VERSION = 1
SUFFIXES = {".json": "json", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
IMPORT_CHUNK = 4096  # points per stored chunk when importing
DESCRIBED = ["label", "method", "seed", "comparison_name"]  # columns naming each row's run


@dataclass(frozen=True)
class Bundle:
    """What an export file holds."""

    comparisons: list[dict[str, Any]]  # COMPARISON_FIELDS, JSON fields parsed
    runs: list[dict[str, Any]]  # RUN_FIELDS, config a dict
    metrics: pd.DataFrame  # tidy rows, COLUMNS

    def header(self) -> dict[str, Any]:
        """The records without metrics, as written to JSON."""
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "comparisons": self.comparisons, "runs": self.runs}


def run_labels(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Run id → its label: the run's name if it has one, else its method, then the config
    fields that differ between ``runs`` (``lr 0.1``), then ``seed N`` when seeds differ."""
    configs = {r["id"]: r.get("config") or {} for r in runs}
    keys = sorted({k for c in configs.values() for k in c} - {"norm", "seed"})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True)
                                       for c in configs.values()}) > 1]
    seeds = len({r.get("seed") for r in runs}) > 1
    out = {}
    for r in runs:
        if r.get("name"):
            out[r["id"]] = str(r["name"])
            continue
        parts = [str(r.get("norm") or configs[r["id"]].get("norm") or r["id"])]
        parts += [f"{k} {_short(configs[r['id']].get(k))}" for k in varying]
        if seeds:
            parts.append(f"seed {r.get('seed')}")
        out[r["id"]] = " · ".join(parts)
    return out


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def described(bundle: Bundle) -> pd.DataFrame:
    """The bundle's metric rows with the :data:`DESCRIBED` columns appended."""
    frame = bundle.metrics.copy()
    names = {c["id"]: c.get("name") or c["id"] for c in bundle.comparisons}
    labels = run_labels(bundle.runs)
    run = frame["run"].astype(str)
    by_id = {r["id"]: r for r in bundle.runs}
    frame["label"] = run.map(labels)
    frame["method"] = run.map({i: r.get("norm") for i, r in by_id.items()})
    frame["seed"] = run.map({i: r.get("seed") for i, r in by_id.items()}).astype("Int64")
    frame["comparison_name"] = run.map({i: names.get(r.get("comparison_id"))
                                        for i, r in by_id.items()})
    return frame


def read_export(path: str | os.PathLike) -> pd.DataFrame:
    """The tidy metric rows of any export file (JSON, Parquet or CSV), with the
    :data:`DESCRIBED` columns: ``normlab.read_export("demo.json")``."""
    return described(read_bundle(path))


def csv_sidecar(path: str | os.PathLike) -> Path:
    """Where a CSV export keeps its run and comparison records: ``PATH.runs.json``."""
    path = Path(path)
    return path.with_name(path.name + ".runs.json")


# ---------------------------------------------------------------- export

def collect(store: Store, id: str) -> Bundle:
    """A run (with its comparison's record) or a comparison with all its runs."""
    kind, _ = store.resolve(id)
    with store._read() as conn:
        if kind == "run":
            runs = conn.execute("SELECT * FROM runs WHERE id = ?", (id,)).fetchall()
            cid = runs[0]["comparison_id"]
        else:
            cid = id
            runs = conn.execute("SELECT * FROM runs WHERE comparison_id = ? ORDER BY position",
                                (id,)).fetchall()
        comparison = conn.execute("SELECT * FROM comparisons WHERE id = ?", (cid,)).fetchone()
        ids = [r["id"] for r in runs]
        query = MetricQuery()
        rows = store._chunks(conn, ids, query) if ids else []
    records = [{k: rec[k] for k in RUN_FIELDS} for rec in map(_record, runs)]
    comp = _record(comparison)
    return Bundle([{k: comp[k] for k in COMPARISON_FIELDS}], records,
                  metrics_frame(rows, ids, query))


def export(store: Store, id: str, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write run or comparison ``id`` to ``path``; returns the path.

    ``format`` is json, parquet or csv; None takes it from the suffix.
    """
    path = Path(path).expanduser()
    if format is None:
        format = SUFFIXES.get(path.suffix.lower())
        if format is None:
            raise ValueError(f"cannot tell the export format from {path.name!r}; name the file "
                             "*.json, *.parquet or *.csv, or pass format=")
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    bundle = collect(store, id)
    path.parent.mkdir(parents=True, exist_ok=True)
    {"json": _write_json, "parquet": _write_parquet, "csv": _write_csv}[format](bundle, path)
    return path


def _series(metrics: pd.DataFrame) -> dict[str, list[dict]]:
    """run -> its series as {layer, site, metric, steps, values}, in frame order."""
    out: dict[str, list[dict]] = {}
    steps, values = metrics["step"].to_numpy(), metrics["value"].to_numpy()
    groups = metrics.groupby(["run", "layer", "site", "metric"], observed=True, sort=False)
    for (run, layer, site, metric), idx in groups.indices.items():
        out.setdefault(run, []).append({"layer": layer, "site": site, "metric": metric,
                                        "steps": steps[idx].tolist(),
                                        "values": values[idx].tolist()})
    return out


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)


def json_doc(bundle: Bundle) -> dict[str, Any]:
    """The ``json`` format's document of ``bundle`` (also what a report embeds)."""
    series = _series(bundle.metrics)
    doc = bundle.header()
    labels = run_labels(bundle.runs)
    doc["runs"] = [{**r, "label": labels[r["id"]], "series": series.get(r["id"], [])}
                   for r in bundle.runs]
    return doc


def _write_json(bundle: Bundle, path: Path) -> None:
    doc = json_doc(bundle)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
    _replace_atomically(path, write)


def _write_parquet(bundle: Bundle, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(described(bundle), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"normlab"] = json.dumps(bundle.header()).encode()
    _replace_atomically(path, lambda tmp: pq.write_table(table.replace_schema_metadata(meta),
                                                         tmp))


def _write_csv(bundle: Bundle, path: Path) -> None:
    def write_header(tmp: Path) -> None:
        tmp.write_text(json.dumps(bundle.header(), indent=1), encoding="utf-8")
    _replace_atomically(csv_sidecar(path), write_header)
    _replace_atomically(path, lambda tmp: described(bundle).to_csv(tmp, index=False))


# ---------------------------------------------------------------- reading files

def sniff(path: Path) -> str:
    """The format of an export file, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if looks_like_html(head):  # a report with its export embedded (normlab.runs.embedded)
        return "html"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "csv"


def read_bundle(path: str | os.PathLike) -> Bundle:
    """The content of an export file, checked; ValueError naming the file if malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no export file at {path}")
    try:
        format = sniff(path)
        bundle = {"json": _read_json, "parquet": _read_parquet, "csv": _read_csv,
                  "html": _read_html}[format](path)
        bundle = _check(bundle)
    except _Malformed as e:
        raise ValueError(f"cannot import {path}: {e}") from None
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as e:
        # a shape no check above foresaw: still one line, still nothing written
        raise ValueError(f"cannot import {path}: unexpected content "
                         f"({type(e).__name__}); only files written by NormLab's export "
                         "can be imported") from None
    return bundle


class _Malformed(Exception):
    """A problem with an import file (turned into a ValueError naming the file)."""


def _parse_header(doc: Any) -> tuple[list[dict], list[dict]]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _Malformed("it is not a NormLab export (no \"format\": \"normlab\" field)")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _Malformed(f"format_version {version!r} is not one this NormLab reads "
                         f"(up to {FORMAT_VERSION}); upgrade NormLab")
    comparisons, runs = doc.get("comparisons"), doc.get("runs")
    if not isinstance(comparisons, list) or not isinstance(runs, list):
        raise _Malformed("'comparisons' and 'runs' must be lists")
    return comparisons, runs


def _read_json(path: Path) -> Bundle:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _Malformed(f"it is not valid JSON ({e})") from None
    return _doc_bundle(doc)


def _read_html(path: Path) -> Bundle:
    try:
        doc = extract(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise _Malformed(f"it is not UTF-8 text ({e})") from None
    except ValueError as e:
        raise _Malformed(str(e)) from None
    return _doc_bundle(doc)


def _doc_bundle(doc: Any) -> Bundle:
    """The bundle of a parsed ``json`` document."""
    comparisons, runs = _parse_header(doc)
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    records = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("series", []), list):
            raise _Malformed(f"run {i} must be an object with a 'series' list")
        for s in run.get("series", []):
            try:
                n = len(s["steps"])
                if len(s["values"]) != n:
                    raise _Malformed(f"run {run.get('id')!r} series {s['metric']!r} has "
                                     f"{n} steps but {len(s['values'])} values")
                for key in ("layer", "site", "metric"):
                    cols[key] += [s[key]] * n
            except (KeyError, TypeError):
                raise _Malformed(f"run {run.get('id')!r} has a series without layer, site, "
                                 "metric, steps and values") from None
            cols["run"] += [run.get("id")] * n
            cols["step"] += s["steps"]
            cols["value"] += s["values"]
        records.append({k: v for k, v in run.items() if k not in ("series", "label")})
    steps = np.array(cols["step"])
    if steps.size and steps.dtype.kind not in "iu":
        raise _Malformed("series steps must be whole numbers")
    try:
        frame = pd.DataFrame({"run": cols["run"], "step": steps.astype(np.int64),
                              "layer": cols["layer"], "site": cols["site"],
                              "metric": cols["metric"],
                              "value": np.array(cols["value"], dtype=np.float64)})
    except (TypeError, ValueError, OverflowError) as e:
        raise _Malformed(f"steps must be whole numbers and values numbers ({e})") from None
    return Bundle(comparisons, records, frame)


def _read_parquet(path: Path) -> Bundle:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise _Malformed(f"it is not a readable Parquet file ({e})") from None
    raw = (table.schema.metadata or {}).get(b"normlab")
    if raw is None:
        raise _Malformed("its Parquet metadata has no 'normlab' entry (runs and configs); "
                         "only files written by NormLab's export can be imported")
    try:
        comparisons, runs = _parse_header(json.loads(raw))
    except json.JSONDecodeError as e:
        raise _Malformed(f"its 'normlab' metadata is not valid JSON ({e})") from None
    return Bundle(comparisons, runs, _tidy(table.to_pandas()))


def _read_csv(path: Path) -> Bundle:
    sidecar = csv_sidecar(path)
    if not sidecar.is_file():
        raise _Malformed(f"its run records {sidecar.name} are missing; a CSV export writes "
                         "them beside the CSV: copy both files")
    try:
        comparisons, runs = _parse_header(json.loads(sidecar.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _Malformed(f"{sidecar.name} is not valid JSON ({e})") from None
    try:
        frame = pd.read_csv(path, dtype={c: str for c in ("run", "layer", "site", "metric",
                                                          "label", "method",
                                                          "comparison_name")},
                            keep_default_na=False, na_values={"value": ["nan", "NaN"]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise _Malformed(f"it is not a readable CSV file ({e})") from None
    return Bundle(comparisons, runs, _tidy(frame))


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """The stored columns of read rows: the :data:`DESCRIBED` ones are derived from the
    records, so they are dropped (a file from before they existed has none)."""
    if list(frame.columns) == COLUMNS + DESCRIBED:
        return frame[COLUMNS]
    return frame


# ---------------------------------------------------------------- checking

def _check(bundle: Bundle) -> Bundle:
    """The bundle with every record checked field by field and cleaned
    (:mod:`normlab.runs.records`); raise _Malformed at the first problem."""
    comparisons, runs = [], []
    try:
        for i, c in enumerate(bundle.comparisons):
            comparisons.append(clean_comparison(c, i))
        comp_ids = {c["id"] for c in comparisons}
        if len(comp_ids) < len(comparisons):
            raise _Malformed("a comparison id appears twice")
        run_ids: set[str] = set()
        for i, r in enumerate(bundle.runs):
            run = clean_run(r, i, comp_ids)
            if run["id"] in run_ids:
                raise _Malformed(f"run {run['id']!r} appears twice")
            run_ids.add(run["id"])
            runs.append(run)
    except RecordError as exc:
        raise _Malformed(str(exc)) from None
    _check_rows(bundle.metrics, run_ids)
    return Bundle(comparisons, runs, bundle.metrics)


def _check_rows(frame: pd.DataFrame, run_ids: set[str]) -> None:
    if list(frame.columns) != COLUMNS:
        raise _Malformed(f"the metric rows have columns {list(frame.columns)}; expected "
                         f"{COLUMNS}")
    if not pd.api.types.is_integer_dtype(frame["step"]):
        raise _Malformed("the 'step' column must hold whole numbers")
    if len(frame) and (frame["step"].min() < 0 or frame["step"].max() > MAX_STEP):
        raise _Malformed(f"steps must be in 0..{MAX_STEP}")
    if not pd.api.types.is_float_dtype(frame["value"]) and len(frame):
        raise _Malformed("the 'value' column must hold numbers")
    if frame["value"].isna().any():
        raise _Malformed("the 'value' column has empty or NaN entries")
    for col in ("run", "layer", "site", "metric"):
        if frame[col].isna().any():
            raise _Malformed(f"the {col!r} column has empty entries")
    unknown = set(frame["run"].astype(str).unique()) - run_ids
    if unknown:
        raise _Malformed(f"metric rows name runs the file has no record of: "
                         f"{', '.join(sorted(unknown)[:5])}")


# ---------------------------------------------------------------- importing

def import_path(store: Store, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Add an export file's runs to ``store``: (ids added, ids skipped as already there)."""
    return ingest(store, read_bundle(path))


def import_file(store: Store, path: str | os.PathLike) -> list[str]:
    """Add an export file's runs to ``store``; returns the ids of the runs added (runs
    already in the store are skipped with a warning; :func:`import_path` returns them)."""
    added, skipped = import_path(store, path)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} run(s) already in the store "
                      f"({', '.join(skipped[:5])}); delete them first to import them again",
                      stacklevel=3)
    return added


def ingest(store: Store, bundle: Bundle) -> tuple[list[str], list[str]]:
    """Write a checked bundle in one transaction; returns (added run ids, skipped ids)."""
    groups = _row_groups(bundle.metrics)
    added, skipped = [], []
    with store._write() as conn:
        comp_ids = {c["id"]: _insert_comparison(conn, c) for c in bundle.comparisons}
        for run in bundle.runs:
            row = conn.execute("SELECT created_at, config FROM runs WHERE id = ?",
                               (run["id"],)).fetchone()
            if row is not None and row[0] == run["created_at"] \
                    and json.loads(row[1]) == run["config"]:
                skipped.append(run["id"])
                continue
            new_id = run["id"] if row is None else _new_id(conn, "runs", "r")
            _insert_run(conn, run, new_id, comp_ids[run["comparison_id"]])
            for (layer, site, metric), steps, values in groups.get(run["id"], []):
                conn.executemany(INSERT_CHUNK, _pieces(new_id, layer, site, metric,
                                                       steps, values))
            added.append(new_id)
    return added, skipped


def _insert_comparison(conn, c: dict) -> str:
    """The id ``c`` has in the store: the same comparison, or a new row."""
    row = conn.execute("SELECT created_at FROM comparisons WHERE id = ?", (c["id"],)).fetchone()
    if row is not None and row[0] == c["created_at"]:
        return c["id"]
    new_id = c["id"] if row is None else _new_id(conn, "comparisons", "c")
    conn.execute("INSERT INTO comparisons (id, name, created_at, base, grid, notes, tags, "
                 "origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (new_id, c["name"] or new_id, c["created_at"], _json_or_none(c["base"]),
                  _json_or_none(c["grid"]), c["notes"], json.dumps(c["tags"]),
                  _json_or_none(c.get("origin"))))
    return new_id


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _insert_run(conn, run: dict, new_id: str, comparison_id: str) -> None:
    """Insert a cleaned run record (:func:`normlab.runs.records.clean_run`)."""
    record = {k: run[k] for k in RUN_FIELDS}
    record.update(id=new_id, comparison_id=comparison_id, config=json.dumps(run["config"]),
                  tags=json.dumps(run["tags"]))
    if run["was_active"]:
        record.update(status="interrupted", control=None,
                      error=f"imported while {run['status']} at step {record['step']}")
    elif record["status"] != "queued":
        record["control"] = None
    cols = ", ".join(RUN_FIELDS)
    conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(RUN_FIELDS))})",
                 [record[k] for k in RUN_FIELDS])


def _row_groups(metrics: pd.DataFrame) -> dict[str, list[tuple]]:
    """run -> [((layer, site, metric), steps, values)] in file order."""
    out: dict[str, list[tuple]] = {}
    if not len(metrics):
        return out
    steps = metrics["step"].to_numpy(dtype=np.int64)
    values = metrics["value"].to_numpy(dtype=np.float64)
    keys = metrics[["run", "layer", "site", "metric"]].astype(str)
    for (run, layer, site, metric), idx in keys.groupby(list(keys.columns), sort=False
                                                        ).indices.items():
        out.setdefault(run, []).append(((layer, site, metric), steps[idx], values[idx]))
    return out


def _pieces(run_id, layer, site, metric, steps, values):
    """Chunk rows for one imported series, IMPORT_CHUNK points each."""
    for lo in range(0, len(steps), IMPORT_CHUNK):
        s = steps[lo:lo + IMPORT_CHUNK].astype(STEP_DTYPE)
        v = values[lo:lo + IMPORT_CHUNK].astype(VALUE_DTYPE)
        yield (run_id, layer, site, metric, int(s.min()), int(s.max()), len(s),
               s.tobytes(), v.tobytes())
