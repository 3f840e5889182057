"""``python -m normlab``: run comparisons and manage the run store from a terminal.

Commands: ``run``, ``list``, ``show``, ``export``, ``import``, ``delete``, ``cancel``,
``pause``, ``resume``, ``tag``, ``annotate``, ``report``, ``engine``. ``run`` takes every
:class:`~normlab.training.config.RunConfig` field as a flag of the same name and default; a
comma-separated value (``--norms batch,layer --seeds 0,1 --lr 0.1,0.01``) makes a
comparison over every combination; a numeric field also takes a range,
``--lr logspace:0.001:10:9`` or ``--init_scale linspace:0.5:2:4`` (ends included; integer
fields round, ``--batch_size logspace:2:128:7`` gives 2, 4, ..., 128). ``show`` of a
comparison that varies a numeric field also prints its sweep table (final validation
accuracy per value and method, mean ± std over seeds).
``run --backend ray`` trains on Ray
(:mod:`normlab.runs.raydriver`); ``engine --backend ray`` is that backend's driver.

Bad input (an unknown norm, a negative lr, a bad id, a missing file) prints one line on
stderr naming the value and what is allowed, exits with code 2, and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from normlab.cliparts import ProgressBars, _int, _missing, field_help
from normlab.training.config import FIELD_TYPES, ConfigError, RunConfig

EXIT_USAGE = 2
# `export --help`: measured on 6 runs x 500 steps (batch, layer, none x 2 seeds, digits MLP
# 3x100, record every step: 1.6 M metric rows), `normlab export` of each format.
EXPORT_SIZES = ("6 runs x 500 steps recorded every step (1.6 M rows, more than a\n"
                "spreadsheet's 1,048,576) are 184 MB as CSV, 25 MB as JSON and 5.4 MB as Parquet")
PLURALS = {"norm": "norms", "seed": "seeds"}  # the flags users type for the common lists


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", default=None,
                   help="the SQLite run store (default: $NORMLAB_STORE or ~/.normlab/normlab.sqlite)")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="who trains the runs: the local engine or Ray tasks (default: ray if "
                   "$NORMLAB_RAY_ADDRESS is set, else local)")
    p.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="the Ray cluster (auto, HEAD:6379; default: "
                   "$NORMLAB_RAY_ADDRESS, else a local Ray instance)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normlab", description="Compare normalization methods on small "
                     "PyTorch runs; results go to a SQLite run store the dashboard reads.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a comparison (base config x lists of values)",
                         description="Every config field is a flag of the same name and "
                         "default as normlab.RunConfig. Comma-separated values (--norms "
                         "batch,layer --seeds 0,1) or a range of a numeric field (--lr "
                         "logspace:0.001:10:9, --init_scale linspace:0.5:2:4) make a "
                         "comparison over every combination.")
    for f in fields(RunConfig):
        flag = PLURALS.get(f.name, f.name)
        names = [f"--{flag}"] + ([f"--{f.name}"] if flag != f.name else [])
        if "_" in flag:
            names.append(f"--{flag.replace('_', '-')}")
        run.add_argument(*names, dest=f.name, default=None, metavar=FIELD_TYPES[f.name].upper(),
                         help=field_help(f.name))
    run.add_argument("--name", help="a name for the comparison")
    run.add_argument("--workers", type=int, default=None,
                     help="worker processes if the engine has to be started (default: CPU cores)")
    run.add_argument("--no-wait", action="store_true",
                     help="submit and return; the engine keeps running the comparison")
    _backend_args(run)
    _store_arg(run)

    lst = sub.add_parser("list", help="one line per run",
                         description="One line per run: id, comparison, method, seed, "
                         "dataset, status, step/total, then its tags (#tag; the run's and "
                         "its comparison's) and the first line of its notes.")
    lst.add_argument("--status", help="only runs with this status")
    lst.add_argument("--comparison", help="only the runs of this comparison")
    _store_arg(lst)

    show = sub.add_parser("show", help="config, status and final metrics of a run or comparison")
    show.add_argument("id")
    _store_arg(show)

    exp = sub.add_parser(
        "export", help="write a run or comparison to a file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a run or a comparison (every run, config and metric) to one file.\n"
        "Each metric row names its run in words: run, step, layer, site, metric, value,\n"
        "label, method, seed, comparison_name.\n\n"
        "  parquet  the smallest and fastest; pd.read_parquet(PATH) gives the rows; imports\n"
        "           alone (the records are in its metadata). Use this one.\n"
        "  csv      pd.read_csv(PATH) gives the rows; `normlab import` also needs the\n"
        "           records written beside it, PATH.runs.json: copy both files.\n"
        "  json     runs with their series nested; normlab.read_export(PATH) gives the\n"
        "           rows (pd.read_json cannot flatten them); imports alone.\n\n"
        f"Sizes measured: {EXPORT_SIZES}.\n"
        "CSV is for spreadsheets of small runs; larger record intervals shrink every format.")
    exp.add_argument("id")
    exp.add_argument("--format", choices=("csv", "parquet", "json"), default=None,
                     help="default: from the file name's suffix (.parquet, .csv, .json)")
    exp.add_argument("-o", "--output", required=True, metavar="PATH")
    _store_arg(exp)

    imp = sub.add_parser("import", help="load an exported file into the store")
    imp.add_argument("path")
    _store_arg(imp)

    _report_parser(sub)

    for name, text in (("delete", "delete a run or comparison with its metrics"),
                       ("cancel", "cancel a run or every unfinished run of a comparison"),
                       ("pause", "pause a run or comparison (resume continues it)"),
                       ("resume", "resume a paused run or comparison")):
        p = sub.add_parser(name, help=text)
        p.add_argument("id")
        _store_arg(p)

    tag = sub.add_parser("tag", help="set the tags of a run or comparison",
                         description="Replace the tags of a run or comparison with TAGS "
                         "(--clear removes them all). `list` and `show` display them.")
    tag.add_argument("id")
    tag.add_argument("tags", nargs="*")
    tag.add_argument("--clear", action="store_true", help="remove every tag")
    _store_arg(tag)
    note = sub.add_parser("annotate", help="set the notes of a run or comparison",
                          description="Replace the notes of a run or comparison (\"\" "
                          "clears them). `list` and `show` display them.")
    note.add_argument("id")
    note.add_argument("notes")
    _store_arg(note)

    eng = sub.add_parser("engine", help="run the engine in the foreground (or --stop/--status)")
    eng.add_argument("--workers", type=int, default=None)
    eng.add_argument("--idle-exit", type=float, default=900.0,
                     help="seconds with nothing to do before the engine exits")
    eng.add_argument("--stop", action="store_true", help="stop the running engine")
    eng.add_argument("--status", action="store_true", help="print the engine's pid, if any")
    eng.add_argument("--watch-pid", type=int, default=None, metavar="PID",
                     help="stop when process PID exits (tests use it)")
    _backend_args(eng)
    _store_arg(eng)
    return parser


def _grid(args: argparse.Namespace) -> tuple[RunConfig, dict[str, list[str]]]:
    """The base config (single values) and the grid (comma-separated values or ranges)."""
    from normlab.runs.comparisons import RANGE_KINDS, parse_values

    single, grid = {}, {}
    for f in fields(RunConfig):
        raw = getattr(args, f.name)
        if raw is None:
            continue
        parts = [p.strip() for p in str(raw).split(",")]
        if f.name == "dataset" and str(raw).startswith(("idx:", "csv:")):
            parts = [str(raw)]  # a path may hold commas
        if parts[0].split(":", 1)[0].lower() in RANGE_KINDS and len(parts) == 1:
            values = parse_values(f.name, parts[0])
            if len(values) == 1:
                single[f.name] = values[0]
            else:
                grid[f.name] = values
            continue
        if any(p == "" for p in parts):
            raise UsageError(f"normlab run: --{PLURALS.get(f.name, f.name)} {raw!r} has an "
                             "empty item; give comma-separated values like a,b")
        if len(parts) == 1:
            single[f.name] = parts[0]
        else:
            grid[f.name] = parts
    return RunConfig.from_dict(single), grid


def cmd_run(args, store) -> int:
    from normlab.runs.comparisons import expand, submit, wait_for

    from normlab.training.config import warnings

    base, grid = _grid(args)
    configs = expand(base, grid)
    for message in dict.fromkeys(m for c in configs for m in warnings(c).values()):
        print(f"warning: {message}", file=sys.stderr)
    cid, run_ids = submit(configs, name=args.name, base=base, grid=grid or None, store=store,
                          workers=args.workers, backend=args.backend,
                          ray_address=args.ray_address)
    print(f"comparison {cid}: {len(run_ids)} run(s) {' '.join(run_ids)}")
    if args.no_wait:
        return 0
    bars = ProgressBars(run_ids, configs, grid)
    try:
        statuses = wait_for(cid, store=store, on_progress=bars.update, on_notice=bars.note)
    except KeyboardInterrupt:
        bars.close()
        print(f"stopped watching; the runs go on (cancel with: python -m normlab cancel {cid})")
        return 130
    bars.close()
    for rid, status in statuses.items():
        run = store.run(rid)
        extra = f" ({run['error']})" if run.get("error") else ""
        print(f"{rid}  {run['norm']:<12} seed {run['seed']}  {status}{extra}")
    return 0 if all(s in ("done", "diverged") for s in statuses.values()) else 1


def cmd_list(args, store) -> int:
    columns = ("id", "comparison_id", "norm", "seed", "dataset", "status", "step",
               "total_steps", "tags", "notes")
    rows = store.run_lines(comparison=args.comparison, status=args.status, columns=columns)
    if not rows:
        print("no runs")
        return 0
    comps = {r.id: (r.tags or [], r.notes or "") for r in store.comparisons().itertuples()}
    out = sys.stdout
    for rid, cid, norm, seed, dataset, status, step, total, tags, notes in rows:
        total = "?" if _missing(total) else _int(total)
        ctags, cnotes = comps.get(cid, ([], ""))
        extra = _tags_notes([*ctags, *_json_list(tags)], notes or cnotes)
        out.write(f"{rid}  {cid}  {_text(norm):<12} seed {_text(seed):<3} {_text(dataset):<10} "
                  f"{status:<11} {_int(step)}/{total}{extra}\n")
    return 0


NOTE_WIDTH = 60  # characters of a note `list` shows


def _json_list(raw) -> list[str]:
    """A stored JSON list of tags ([] when missing or malformed)."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


def _tags_notes(tags, notes) -> str:
    """'  #a #b  “first line of the notes…”' for a list line ('' when neither)."""
    out = " ".join(f"#{t}" for t in dict.fromkeys(tags))
    note = str(notes or "").strip().splitlines()[0] if str(notes or "").strip() else ""
    if len(note) > NOTE_WIDTH:
        note = note[:NOTE_WIDTH - 1] + "…"
    if note:
        out = f"{out}  “{note}”" if out else f"“{note}”"
    return f"  {out}" if out else ""


def _text(value) -> str:
    """A run field for a table cell: '—' where it is missing (an external or odd run)."""
    return "—" if _missing(value) else str(value)


def final_metrics(store, run_ids: list[str]):
    """Last train and validation loss/accuracy per run (a small DataFrame)."""
    import pandas as pd

    frame = store.metrics(run_ids, metrics=["loss", "acc"], sites=["train", "val"])
    if frame.empty:  # nothing measured (e.g. a run that failed before its first step)
        return pd.DataFrame(index=pd.Index(run_ids, name="run"))
    last = frame.sort_values("step").groupby(["run", "site", "metric"], observed=True).tail(1)
    table = last.pivot_table(index="run", columns=["site", "metric"], values="value",
                             observed=True)
    table.columns = [f"{s}_{m}" for s, m in table.columns]
    return table


def cmd_show(args, store) -> int:
    kind, _ = store.resolve(args.id)
    if kind == "run":
        run = store.run(args.id)
        print(json.dumps({k: run[k] for k in ("id", "comparison_id", "name", "status", "step",
                                              "total_steps", "error", "tags", "notes")},
                         indent=2, default=str))
        print("config:", json.dumps(run["config"], indent=2))
        print(final_metrics(store, [args.id]).to_string())
    else:
        comp = store.comparison(args.id)
        print(f"comparison {comp['id']}  {comp['name']}")
        if comp.get("tags"):
            print("tags: " + " ".join(f"#{t}" for t in comp["tags"]))
        if (comp.get("notes") or "").strip():
            print("notes: " + comp["notes"].strip())
        counts = ", ".join(f"{n} {s}" for s, n in comp["counts"].items() if n)
        print(f"runs: {counts}")
        frame = store.runs(comparison=args.id).set_index("id")
        runs = frame[["norm", "seed", "status", "step"]].copy()
        if any(frame["tags"].map(bool)):
            runs["tags"] = [" ".join(f"#{t}" for t in ts) for ts in frame["tags"]]
        if any(frame["notes"].fillna("").astype(str).str.strip() != ""):
            runs["notes"] = [_tags_notes([], n).strip() for n in frame["notes"].fillna("")]
        print(runs.join(final_metrics(store, list(runs.index))).to_string())
        _print_sweep(store, args.id, comp.get("grid"))
    return 0


def _print_sweep(store, cid: str, grid: dict | None) -> None:
    """The sweep table of a comparison that varies a numeric field (else nothing)."""
    from normlab.views import sweep

    runs = store.runs(comparison=cid)
    fields_ = sweep.swept_fields(list(runs["config"]), grid)
    if not fields_:
        return
    rows = store.metrics(list(runs["id"]), metrics=["acc"], sites=["val"])
    frame = sweep.sweep_frame(runs, sweep.final_values(rows, "last"), fields_[0])
    print(f"\nsweep over {fields_[0]}: final validation accuracy, mean ± std over seeds "
          "(÷N: N runs diverged; …: not finished)")
    print(sweep.sweep_table(frame, fields_[0]).to_string())


def main(argv: list[str] | None = None) -> int:
    from normlab.runs.raydriver import RayMissing
    from normlab.runs.store import NotFound, Store, StoreError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "engine":
            return cmd_engine(args)
        store = Store(args.store)
        handler = {"run": cmd_run, "list": cmd_list, "show": cmd_show,
                   "report": cmd_report}.get(args.command)
        if handler is not None:
            return handler(args, store)
        return cmd_simple(args, store)
    except BrokenPipeError:  # `normlab show ID | head`: the reader has all it wanted
        _quiet_stdout()
        return 0
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
    except RayMissing as exc:
        print(f"normlab {args.command}: --backend ray: {exc}", file=sys.stderr)
    except ConfigError as exc:
        print(f"normlab {args.command}: " + "; ".join(f"--{PLURALS.get(k, k)}: {m}"
              for k, m in exc.errors.items()), file=sys.stderr)
    except NotFound as exc:
        print(f"normlab {args.command}: {exc.args[0]}; `python -m normlab list` shows the ids",
              file=sys.stderr)
    except (ValueError, FileNotFoundError, StoreError) as exc:
        print(f"normlab {args.command}: {exc}", file=sys.stderr)
    except OSError as exc:  # a path the user gave: a folder, no permission, a full disk
        print(f"normlab {args.command}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
    return EXIT_USAGE


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so flushing at exit cannot raise BrokenPipeError again
    (the Python docs' recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test's captured stdout)
        pass


def _report_parser(sub) -> None:
    rep = sub.add_parser("report", help="write one self-contained HTML report (charts, setup, "
                         "the runs inside; opens offline, `import` reads it back)")
    rep.add_argument("id", help="a comparison id (a lab's too) or run ids, comma-separated")
    rep.add_argument("-o", "--output", required=True, metavar="PATH", help="the .html file")
    rep.add_argument("--page", choices=("compare", "layers", "lab"), default=None,
                     help="whose charts: the lab's (claim, the lab page's charts and "
                     "readouts; the default for a comparison a lab's preset launched), "
                     "Compare's (the default otherwise) or Layer dynamics'")
    rep.add_argument("--lab", default=None, metavar="KEY", help="--page lab as this lab's "
                     "page shows the comparison (one_formula, whitening, ics, invariance, "
                     "lr_init, batch_size; default: the lab that launched it)")
    rep.add_argument("--site", default=None, help="--page layers: the activation site "
                     "(pre_norm, post_norm, post_act; default: the page's)")
    rep.add_argument("--layers", default=None, help="--page layers: comma-separated layers "
                     "(default: the page's)")
    _store_arg(rep)


def cmd_report(args, store) -> int:
    from normlab.measure.schema import ACT_SITES
    from normlab.views import report
    from normlab.views.labs import sections as labsections

    if args.site is not None and args.site not in ACT_SITES:
        raise UsageError(f"normlab report: --site {args.site!r} is not an activation site; "
                         f"use one of {', '.join(ACT_SITES)}")
    if args.page != "layers" and (args.site or args.layers):
        raise UsageError("normlab report: --site and --layers are for --page layers")
    if args.lab is not None:
        keys = [lab.key for lab in labsections.LABS]
        if args.lab not in keys:
            raise UsageError(f"normlab report: no lab {args.lab!r}; use one of "
                             f"{', '.join(keys)}")
        if args.page not in (None, "lab"):
            raise UsageError(f"normlab report: --lab is for --page lab, not --page {args.page}")
    layers = [p.strip() for p in args.layers.split(",") if p.strip()] if args.layers else None
    path = report.write(store, args.id, args.output, page=args.page, site=args.site,
                        layers=layers, lab=args.lab)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_simple(args, store) -> int:
    from normlab.runs import exchange

    if args.command == "export":
        path = exchange.export(store, args.id, args.output, args.format)
        print(f"wrote {path}")
    elif args.command == "import":
        ids, skipped = exchange.import_path(store, args.path)
        line = f"imported {len(ids)} run(s)" + (f": {' '.join(ids)}" if ids else "")
        if skipped:
            line += (f"; skipped {len(skipped)} already in the store ({_ids(skipped)}): "
                     "delete them first to import them again")
        print(line)
    elif args.command == "delete":
        print(f"deleted {len(store.delete(args.id))} run(s)")
    elif args.command in ("cancel", "pause", "resume"):
        changed = store.request(args.id, args.command)
        print(f"{args.command}: {len(changed)} run(s) {' '.join(changed)}")
    elif args.command == "tag":
        kind, _ = store.resolve(args.id)
        if args.clear and args.tags:
            raise UsageError("normlab tag: give tags or --clear, not both (see --help)")
        if not args.clear and not [t for t in args.tags if t.strip()]:
            raise UsageError(f"normlab tag: no tags given for {args.id}; name them (normlab "
                             f"tag {args.id} baseline lecture), or pass --clear to remove "
                             "every tag")
        store.tag(args.id, [] if args.clear else args.tags)
        tags = (store.run(args.id) if kind == "run" else store.comparison(args.id))["tags"]
        print(f"{kind} {args.id}: " + (("tags " + " ".join(f"#{t}" for t in tags))
                                      if tags else "tags cleared"))
    elif args.command == "annotate":
        kind, _ = store.resolve(args.id)
        store.annotate(args.id, args.notes)
        notes = args.notes.strip()
        print(f"{kind} {args.id}: " + (f"notes set ({len(notes)} characters)" if notes
                                      else "notes cleared"))
    return 0


def _ids(ids: list[str], most: int = 5) -> str:
    """Some ids for a message: 'a, b, c' or 'a, b, c, d, e and 3 more'."""
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def cmd_engine(args) -> int:
    from normlab.runs.engine import EngineAlreadyRunning, engine_pid, serve, stop_engine

    if args.backend == "ray":  # only when asked: `engine` alone is always the local one
        return cmd_ray_driver(args)
    if args.status:
        pid = engine_pid(args.store)
        print(f"engine running, pid {pid}" if pid else "no engine running")
        return 0
    if args.stop:
        print("engine stopped" if stop_engine(args.store) else "no engine running")
        return 0
    try:
        serve(args.store, workers=args.workers, idle_exit=args.idle_exit,
              watch_pid=args.watch_pid)
    except EngineAlreadyRunning as exc:
        print(f"normlab engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_ray_driver(args) -> int:
    from normlab.runs import raydriver

    if args.status:
        pid = raydriver.driver_pid(args.store)
        print(f"ray driver running, pid {pid}" if pid else "no ray driver running")
        return 0
    if args.stop:
        print("ray driver stopped" if raydriver.stop_driver(args.store) else
              "no ray driver running")
        return 0
    try:
        raydriver.serve(args.store, address=args.ray_address, idle_exit=args.idle_exit,
                        slots=args.workers)
    except raydriver.DriverAlreadyRunning as exc:
        print(f"normlab engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except raydriver.RayUnreachable as exc:
        print(f"normlab engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
