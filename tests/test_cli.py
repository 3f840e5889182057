"""The CLI: a real comparison end to end, and bad input → one stderr line, exit 2, nothing written."""
import json
import subprocess
import sys

import pytest

from normlab.cli import main
from normlab.runs.engine import stop_engine
from normlab.runs.store import Store


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "cli.sqlite"
    yield str(path)
    stop_engine(path)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "normlab", *args], capture_output=True, text=True,
                          timeout=300)


def test_run_list_show_export_import_delete(store_path, tmp_path):
    out = cli("run", "--norms", "batch,layer", "--seeds", "0,1", "--steps", "40",
              "--eval_interval", "20", "--width", "16", "--store", store_path)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("comparison c") and "4 run(s)" in first
    cid = first.split()[1].rstrip(":")
    store = Store(store_path)
    runs = store.runs(comparison=cid)
    assert sorted(zip(runs.norm, runs.seed)) == [("batch", 0), ("batch", 1), ("layer", 0), ("layer", 1)]
    assert set(runs.status) == {"done"}

    listed = cli("list", "--store", store_path)
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 4
    assert all(" done " in line for line in listed.stdout.splitlines())

    shown = cli("show", cid, "--store", store_path)
    assert shown.returncode == 0 and "val_loss" in shown.stdout and "4 done" in shown.stdout
    rid = runs.id.iloc[0]
    shown_run = cli("show", rid, "--store", store_path)
    assert '"lr": 0.1' in shown_run.stdout

    export = tmp_path / "cmp.json"
    assert cli("export", cid, "--format", "json", "-o", str(export), "--store", store_path).returncode == 0
    assert json.loads(export.read_text())["runs"]
    other = str(tmp_path / "other.sqlite")
    imported = cli("import", str(export), "--store", other)
    assert imported.returncode == 0 and "imported 4 run(s)" in imported.stdout
    a = Store(store_path).metrics(comparison=cid)
    b = Store(other).metrics(comparison=cid)
    assert len(a) == len(b) > 0

    assert cli("delete", cid, "--store", store_path).returncode == 0
    assert Store(store_path).runs().empty


@pytest.mark.parametrize("args,needle", [
    (["run", "--norms", "batch,bogus"], "unknown norm 'bogus'"),
    (["run", "--lr", "-0.5"], "lr must be a positive number"),
    (["run", "--steps", "ten"], "'ten' is not a valid int"),
    (["run", "--norms", "instance"], "CNN"),
    (["run", "--norm", "batch", "--batch_size", "1"], "at least 2"),
    (["run", "--dataset", "csv:/no/such.csv"], "such.csv"),
    (["run", "--norms", "batch,"], "empty item"),
    (["run", "--colour", "red"], "unrecognized arguments"),
    (["show", "r12345678"], "no run or comparison with id 'r12345678'"),
    (["cancel", "nope"], "no run or comparison with id 'nope'"),
    (["import", "/no/such/export.json"], "export.json"),
    (["export", "nope", "-o", "x.json"], "no run or comparison"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(store_path, capsys, args, needle):
    code = main(args + ["--store", store_path])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert Store(store_path).runs().empty  # nothing written


@pytest.mark.parametrize("command", ["run", "list", "show", "export", "import", "delete",
                                     "cancel", "pause", "resume", "tag", "annotate", "engine"])
def test_help_on_every_command(command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
