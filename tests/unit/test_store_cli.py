"""``fieldbox store query|info|check`` read the store back through its key; errors are one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fieldbox.cli import main
from fieldbox.store import FileKeyProvider, ResultIn, Store


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    with Store.open(tmp_path / "store" / "fieldbox.db") as store:
        store.put_results(
            [
                ResultIn(
                    f"img-{i}", "faces" if i % 2 else "cats", "blazeface", f"inbox/{i}.jpg", {"faces": i}
                )
                for i in range(7)
            ]
        )
    return tmp_path


def test_query_prints_a_table_by_default(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "query", "--workflow", "faces", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["id", "created", "(UTC)", "workflow", "agent", "item", "prio", "result"]
    assert len(lines) == 3 and "inbox/1.jpg" in lines[1] and '{"faces":3}' in lines[2]
    assert "2 of 3 result(s) in workflow 'faces'; next page: --after-id 4" in err


def test_query_json_with_explicit_paths(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, kek = data_dir / "store" / "fieldbox.db", data_dir / "keys" / "kek"
    assert main(["store", "query", "--db", str(db), "--kek", str(kek), "--json", "--after-id", "5"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["key"], r["result"]) for r in records] == [
        (6, "img-5", {"faces": 5}),
        (7, "img-6", {"faces": 6}),
    ]


def test_info_shows_schema_counts_and_the_key_caveat(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "info"]) == 0
    out = capsys.readouterr().out
    assert "schema version" in out and "results         7 row(s)" in out and "outbox          7 row(s)" in out
    assert f"file {data_dir / 'keys' / 'kek'}" in out
    assert "protects nothing against someone holding the card" in out
    assert main(["store", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["results"] == 7 and info["schema_version"] == info["code_schema_version"]


def test_check_passes_then_catches_damage(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "check"]) == 0
    assert "ok (7 results, every page authenticated)" in capsys.readouterr().out
    db = data_dir / "store" / "fieldbox.db"
    with open(db, "r+b") as fh:
        fh.seek(db.stat().st_size - 2000)
        fh.write(os.urandom(16))
    assert main(["store", "check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fieldbox: error: store ") and "is corrupt" in err[-1]


def test_errors_are_one_line_and_exit_1(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "query", "--db", str(tmp_path / "nope.db")]) == 1
    assert "fieldbox: error: no store at" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    other = FileKeyProvider(tmp_path / "other-kek")
    other.wrap(b"\0" * 32, b"")  # make a different KEK
    assert main(["store", "query", "--kek", str(other.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fieldbox: error: ") and "cannot unwrap" in err[-1]
