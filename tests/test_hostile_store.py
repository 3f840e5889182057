"""Unusable store files (issue 11, point 5): a folder, a non-database file, a newer schema,
a read-only file or a path under a file give one line on stderr and exit code 2."""
from __future__ import annotations

import sqlite3

import pytest

from normlab import cli
from normlab.runs import storedb
from normlab.runs.store import Store, StoreError


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["list"], ["show", "r1"], ["run", "--steps", "5"],
                                     ["engine", "--status"]])
def test_folder_as_store(tmp_path, capsys, command):
    code, err = _cli(capsys, *command, "--store", str(tmp_path))
    if command == ["engine", "--status"]:  # only reads the lock file: nothing to refuse
        return
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path} is a folder, not a store file" in err


def test_non_database_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not SQLite\n" * 100)
    code, err = _cli(capsys, "list", "--store", str(path))
    assert code == 2 and err.count("\n") == 1 and "is not a NormLab store" in err
    assert path.read_text().startswith("hello")  # untouched


def test_newer_schema_version(tmp_path, capsys):
    path = tmp_path / "future.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    code, err = _cli(capsys, "run", "--steps", "5", "--store", str(path))
    assert code == 2 and err.count("\n") == 1
    assert "schema version 99, newer than this NormLab's" in err


def test_path_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(capsys, "list", "--store", str(blocker / "s.sqlite"))
    assert code == 2 and err.count("\n") == 1 and "cannot create the folder" in err


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A store that SQLite opens read-only (as a file without write permission is; the
    tests may run as root, whom permissions do not stop)."""
    path = tmp_path / "ro.sqlite"
    with Store(path) as store:
        store.create_comparison([{"norm": "batch", "steps": 5}])
        store.checkpoint()
    real = sqlite3.connect

    def connect_ro(database, *args, **kwargs):
        return real(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(storedb.sqlite3, "connect", connect_ro)
    return path


def test_read_only_store_reads_but_refuses_writes(read_only, capsys):
    code, err = _cli(capsys, "run", "--steps", "5", "--no-wait", "--store", str(read_only))
    assert code == 2 and err.count("\n") == 1
    assert f"the store {read_only} is read-only" in err
    with pytest.raises(StoreError, match="read-only"):
        Store(read_only).tag(Store(read_only).runs()["id"][0], ["x"])
