"""The CLI's store commands (list, show, tag, annotate, import) and the export files as
pandas reads them, on a store of tiny runs trained in this process (no engine).

Oracles: the records written with the Store API (tags, notes), the metric rows the store
returns (``Store.metrics``), hand-built labels, and tqdm's own rate formula.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

import normlab
from normlab import cli, cliparts
from normlab.runs import exchange
from normlab.runs.store import Store
from normlab.training import config as config_module
from test_runtable import TINY, train_into

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One comparison: batch and layer x seeds 0, 1 (4 tiny finished runs)."""
    path = tmp_path_factory.mktemp("cli") / "store.sqlite"
    store = Store(path)
    small = TINY.replace(steps=10, record_interval=2, eval_interval=5)
    cid, ids, _ = train_into(store, [small.replace(norm=n, seed=s) for n in ("batch", "layer")
                                     for s in (0, 1)], name="bn vs ln",
                             grid={"norm": ["batch", "layer"], "seed": [0, 1]}, base=small)
    yield str(path), cid, ids
    store.close()


@pytest.fixture
def fresh(trained, tmp_path):
    """A copy of the trained store each test may change."""
    path, cid, ids = trained
    copy = tmp_path / "copy.sqlite"
    src = Store(path)
    exchange.export(src, cid, tmp_path / "all.parquet")
    exchange.import_file(Store(copy), tmp_path / "all.parquet")
    return str(copy), cid, ids


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as strings (assert_frame_equal compares categoricals slowly)."""
    return frame.astype({c: str for c in frame.columns if frame[c].dtype == "category"})


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ tags and notes
def test_list_and_show_display_tags_and_notes(fresh, capsys):
    path, cid, ids = fresh
    store = Store(path)
    store.tag(cid, ["lecture"])
    store.tag(ids[0], ["keep", "bn"])
    store.annotate(ids[1], "diverged once at lr 1\nsecond line not shown")
    store.annotate(cid, "the week-3 demo")
    code, out, _ = run_cli(capsys, "list", "--store", path)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines[ids[0]].endswith("#lecture #keep #bn  “the week-3 demo”")
    assert lines[ids[1]].endswith("#lecture  “diverged once at lr 1”")  # the run's own note
    assert "second line" not in out
    code, out, _ = run_cli(capsys, "show", cid, "--store", path)
    assert "tags: #lecture" in out and "notes: the week-3 demo" in out
    row = next(line for line in out.splitlines() if line.startswith(ids[0]))
    assert "#keep #bn" in row
    code, out, _ = run_cli(capsys, "show", ids[1], "--store", path)
    assert "diverged once at lr 1" in out


def test_tag_and_annotate_confirm_and_no_tags_is_an_error(fresh, capsys):
    path, cid, ids = fresh
    store = Store(path)
    code, out, err = run_cli(capsys, "tag", ids[0], "a", "b", "--store", path)
    assert (code, out.strip(), err) == (0, f"run {ids[0]}: tags #a #b", "")
    assert store.run(ids[0])["tags"] == ["a", "b"]
    code, out, err = run_cli(capsys, "tag", ids[0], "--store", path)  # no tags: not a clear
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no tags given" in err and "--clear" in err
    assert store.run(ids[0])["tags"] == ["a", "b"]
    code, out, _ = run_cli(capsys, "tag", ids[0], "--clear", "--store", path)
    assert (code, out.strip()) == (0, f"run {ids[0]}: tags cleared")
    assert store.run(ids[0])["tags"] == []
    code, out, _ = run_cli(capsys, "annotate", cid, "compare with week 2", "--store", path)
    assert (code, out.strip()) == (0, f"comparison {cid}: notes set (19 characters)")
    assert store.comparison(cid)["notes"] == "compare with week 2"
    code, out, _ = run_cli(capsys, "annotate", cid, "", "--store", path)
    assert out.strip() == f"comparison {cid}: notes cleared"


def test_reimport_prints_one_line_and_no_warning(trained, tmp_path, capsys):
    path, cid, ids = trained
    export = exchange.export(Store(path), cid, tmp_path / "c.json")
    other = str(tmp_path / "other.sqlite")
    assert run_cli(capsys, "import", str(export), "--store", other)[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning fails the test
        code, out, err = run_cli(capsys, "import", str(export), "--store", other)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"imported 0 run(s); skipped 4 already in the store "
                                f"({', '.join(ids)}): delete them first to import them again"]


def test_show_into_a_closed_pipe_ends_quietly(trained):
    """`normlab show ID | head`: the reader goes away; no BrokenPipeError on stderr."""
    path, cid, _ = trained
    proc = subprocess.Popen([sys.executable, "-m", "normlab", "show", cid, "--store", path],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0
    assert err == ""


def test_run_help_lists_each_fields_allowed_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for values in (config_module.ACTIVATIONS, config_module.INITS, config_module.OPTIMIZERS,
                   config_module.MODELS, config_module.BUILTIN_DATASETS,
                   normlab.NORM_NAMES, config_module.NORM_POSITIONS):
        assert all(v in text for v in values), values
    for f in config_module.RunConfig.__dataclass_fields__:
        assert cliparts.field_help(f).count("Allowed: ") == 1, f
    assert "Allowed: a number > 0. Default: 0.1" in text  # lr
    assert "Allowed: 1 or 0 (true/false). Default: False" in text  # mean_only_bn


def test_progress_rate_counts_training_time_not_the_queue():
    """A run queued for 100 s that then trained 100 steps in 2 s shows ~50 steps/s."""
    cfg = TINY.replace(steps=200)
    bars = cliparts.ProgressBars(["r1"], [cfg], {})
    bar = bars.bars["r1"]
    now = time.time()
    bar.start_t = bar.last_print_t = now - 100  # submitted 100 s ago
    frame = pd.DataFrame({"id": ["r1"], "status": ["queued"], "step": [0],
                          "started_at": [float("nan")]})
    bars.update(frame)
    assert bar.n == 0 and bar.start_t == now - 100
    bars.update(frame.assign(status="running", step=100, started_at=now - 2))
    rate = bar.format_dict["rate"] or bar.n / bar.format_dict["elapsed"]
    bars.close()
    assert bar.n == 100
    assert 40 < rate < 51  # 100 steps / ~2 s; counting the queue would give < 1


# ------------------------------------------------------------------ exports for pandas
def test_export_rows_name_their_runs_and_pandas_reads_every_format(trained, tmp_path,
                                                                   capsys):
    path, cid, ids = trained
    store = Store(path)
    stored = store.metrics(comparison=cid)
    labels = {rid: f"{n} · seed {s}" for rid, (n, s) in
              zip(ids, [("batch", 0), ("batch", 1), ("layer", 0), ("layer", 1)])}
    files = {}
    for fmt in ("parquet", "csv", "json"):
        files[fmt] = tmp_path / f"c.{fmt}"
        assert run_cli(capsys, "export", cid, "-o", str(files[fmt]), "--store", path)[0] == 0
    frames = {"parquet": pd.read_parquet(files["parquet"]), "csv": pd.read_csv(files["csv"]),
              "json": normlab.read_export(files["json"])}
    # the README's pandas-only way to the JSON rows
    doc = json.load(open(files["json"]))
    frames["json (pandas)"] = pd.json_normalize(
        doc["runs"], "series", ["id", "label", "norm", "seed"]).explode(["steps", "values"])
    key = ["run", "layer", "site", "metric", "step"]
    want = stored.astype({c: str for c in ("run", "layer", "site", "metric")}) \
        .sort_values(key).reset_index(drop=True)
    for fmt, frame in frames.items():
        if fmt == "json (pandas)":
            frame = frame.rename(columns={"id": "run", "norm": "method", "steps": "step",
                                          "values": "value"})
            frame = frame.astype({"step": "int64", "value": "float64"})
        assert len(frame) == len(stored), fmt
        frame = frame.astype({c: str for c in ("run", "layer", "site", "metric")}) \
            .sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(frame[list(want.columns)], want, check_dtype=False,
                                      check_categorical=False, obj=fmt)
        assert dict(zip(frame["run"], frame["label"])) == labels, fmt
        assert dict(zip(frame["run"], frame["method"])) == {i: labels[i].split()[0]
                                                            for i in ids}, fmt
        assert sorted(set(frame["seed"].astype(int))) == [0, 1], fmt
        if fmt != "json (pandas)":
            assert set(frame["comparison_name"]) == {"bn vs ln"}, fmt
    with pytest.raises(ValueError):  # why the README shows read_export, not pd.read_json
        pd.read_json(files["json"])


def test_label_names_the_setting_that_differs_and_a_given_name_wins():
    runs = [{"id": "r1", "norm": "batch", "seed": 0, "config": {"lr": 0.1, "steps": 9}},
            {"id": "r2", "norm": "batch", "seed": 0, "config": {"lr": 0.01, "steps": 9}},
            {"id": "r3", "norm": "layer", "seed": 0, "name": "mine",
             "config": {"lr": 0.1, "steps": 9}}]
    assert exchange.run_labels(runs) == {"r1": "batch · lr 0.1", "r2": "batch · lr 0.01",
                                         "r3": "mine"}


def test_each_format_imports_and_csv_needs_its_sidecar(trained, tmp_path, capsys):
    path, cid, _ = trained
    want = plain(Store(path).metrics(comparison=cid))
    for fmt in ("parquet", "csv", "json"):
        export = exchange.export(Store(path), cid, tmp_path / f"c.{fmt}")
        other = str(tmp_path / f"{fmt}.sqlite")
        code, out, _ = run_cli(capsys, "import", str(export), "--store", other)
        assert code == 0 and out.startswith("imported 4 run(s)"), fmt
        got = plain(Store(other).metrics(comparison=cid))
        pd.testing.assert_frame_equal(got, want, obj=fmt)
    lone = tmp_path / "lone.csv"
    lone.write_bytes((tmp_path / "c.csv").read_bytes())  # the CSV without c.csv.runs.json
    alone = str(tmp_path / "alone.sqlite")
    code, out, err = run_cli(capsys, "import", str(lone), "--store", alone)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lone.csv.runs.json are missing" in err and "copy both files" in err
    assert Store(alone).runs().empty
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "also needs the records written beside it, PATH.runs.json" in help_text
    assert "MB as CSV" in help_text and "MB as Parquet" in help_text


def test_requirements_install_normlab_itself_and_pull_no_unpinned_dependency():
    """`-e .` makes `import normlab` work outside the checkout; pyproject declares no
    dependencies, so it cannot pull an unpinned (CUDA) torch past requirements.txt."""
    import tomllib

    lines = [line.split("#")[0].strip() for line in
             (ROOT / "requirements.txt").read_text().splitlines()]
    assert "-e ." in lines
    assert all("==" in line for line in lines if line and not line.startswith("-"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not project.get("dependencies") and "dependencies" not in project.get("dynamic", [])
    assert project["scripts"]["normlab"] == "normlab.cli:main"


# ------------------------------------------------------------------ the README
def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def test_readme_python_block_runs_as_written(tmp_path):
    """The Python API block, run outside the checkout in a fresh store (the engine trains
    its comparison), with 20 steps instead of 500 and 200; then its results are checked."""
    from normlab.runs.engine import stop_engine

    code = readme_block("## Python API")
    assert code.count("steps=500") == 1 and code.count("steps=200") == 1
    code = code.replace("steps=500", "steps=20").replace("steps=200", "steps=20")
    code += ('\nassert len(run_ids) == 6 and set(curves["metric"]) == {"loss"}'
             '\nassert set(curves["run"]) == set(run_ids) and not frame.empty'
             '\nrows = batch.to_frame()'
             '\nassert {"grad_norm", "update_ratio"} <= set(rows["metric"]) and norm is not None'
             '\nprint("ok")\n')
    store = tmp_path / "readme.sqlite"
    env = {**__import__("os").environ, "NORMLAB_STORE": str(store), "PYTHONPATH": str(ROOT)}
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)
    finally:
        stop_engine(store)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_readme_export_block_runs_and_labels_the_legend(trained, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    path, cid, _ = trained
    for fmt in ("parquet", "json"):
        exchange.export(Store(path), cid, tmp_path / f"demo.{fmt}")
    monkeypatch.chdir(tmp_path)
    code = readme_block("**Exports.**").rstrip().splitlines()
    code[-1] = "axes = " + code[-1]  # keep the plot the last line draws
    scope: dict = {}
    exec("\n".join(code), scope)
    legend = sorted(t.get_text() for t in scope["axes"].get_legend().get_texts())
    assert legend == ["batch · seed 0", "batch · seed 1", "layer · seed 0", "layer · seed 1"]
