"""Wrong keys, damaged files and foreign databases give one clear error each, never garbage."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest
import sqlcipher3

from fieldbox.errors import StoreError, WrongKeyError
from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.store.keys import KEK_BYTES


def _make(tmp_path: Path, n: int = 0) -> tuple[Path, FileKeyProvider]:
    db = tmp_path / "store" / "fieldbox.db"
    keys = FileKeyProvider(tmp_path / "keys" / "kek")
    with Store.open(db, keys) as s:
        if n:
            s.put_results(
                [
                    ResultIn(f"k{i:05d}", "wf", "agent", f"item{i}", {"i": i, "pad": "x" * 150})
                    for i in range(n)
                ]
            )
    return db, keys


def test_wrong_kek_is_a_wrong_key_error_with_a_hint(tmp_path: Path) -> None:
    db, _ = _make(tmp_path, 5)
    other = FileKeyProvider(tmp_path / "other" / "kek")
    other.wrap(b"\0" * 32, b"create the other kek")
    with pytest.raises(WrongKeyError) as err:
        Store.open(db, other)
    assert "cannot unwrap" in str(err.value)
    assert err.value.hint and "key provider" in err.value.hint


def test_tampered_wrapped_key_is_detected(tmp_path: Path) -> None:
    db, keys = _make(tmp_path, 5)
    key_file = db.with_name("fieldbox.db.key")
    doc = json.loads(key_file.read_text())
    raw = bytearray(base64.b64decode(doc["wrapped"]))
    raw[20] ^= 0x01  # one bit of the ciphertext
    doc["wrapped"] = base64.b64encode(bytes(raw)).decode()
    key_file.write_text(json.dumps(doc))
    with pytest.raises(WrongKeyError, match="does not match it, or the file was altered"):
        Store.open(db, keys)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json",
        b'{"fieldbox_store_key": 1}',
        b'{"fieldbox_store_key": 1, "provider": "file", "wrapped": "@@"}',
    ],
)
def test_damaged_key_file_is_a_clear_error(tmp_path: Path, garbage: bytes) -> None:
    db, keys = _make(tmp_path)
    db.with_name("fieldbox.db.key").write_bytes(garbage)
    with pytest.raises(WrongKeyError, match="is damaged"):
        Store.open(db, keys)


def test_key_from_another_provider_is_refused(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)

    class Tpm(FileKeyProvider):
        name = "tpm2"

    with pytest.raises(WrongKeyError, match="wrapped by the 'file' key provider, not 'tpm2'"):
        Store.open(db, Tpm(keys.path))


def test_missing_kek_or_key_file_never_makes_a_new_key(tmp_path: Path) -> None:
    db, keys = _make(tmp_path, 3)
    kek = keys.path.read_bytes()
    keys.path.unlink()
    with pytest.raises(WrongKeyError, match="is missing"):
        Store.open(db, keys)
    assert not keys.path.exists()  # unwrapping never creates a KEK
    keys.path.write_bytes(kek)
    key_file = db.with_name("fieldbox.db.key")
    key_file.rename(tmp_path / "aside")
    with pytest.raises(WrongKeyError, match="exists but its key file .* is missing"):
        Store.open(db, keys)
    (tmp_path / "aside").rename(key_file)
    with Store.open(db, keys) as s:
        assert s.count_results() == 3


def test_short_kek_is_damaged(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)
    keys.path.write_bytes(b"short")
    with pytest.raises(WrongKeyError, match=f"5 bytes, expected {KEK_BYTES}"):
        Store.open(db, keys)


def test_kek_readable_by_others_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db, keys = _make(tmp_path)
    keys.path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fieldbox.store.keys"), Store.open(db, keys):
        pass
    assert keys.path.stat().st_mode & 0o777 == 0o600
    assert "readable by others" in caplog.text


def test_right_key_file_wrong_database_is_wrong_key(tmp_path: Path) -> None:
    """Another store's (valid) key does not open this database: SQLCipher's page-1 HMAC fails."""
    db, keys = _make(tmp_path / "a", 3)
    db2, keys2 = _make(tmp_path / "b", 3)
    db.with_name("fieldbox.db.key").write_bytes(db2.with_name("fieldbox.db.key").read_bytes())
    keys.path.write_bytes(keys2.path.read_bytes())
    with pytest.raises(WrongKeyError, match="wrong key or not a fieldbox database"):
        Store.open(db, keys)


def test_non_database_file_is_wrong_key_or_not_a_database(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)
    db.write_bytes(b"this is a text file, not a database at all\n" * 200)
    with pytest.raises(WrongKeyError, match="wrong key or not a fieldbox database") as err:
        Store.open(db, keys)
    assert err.value.hint


def test_plain_sqlite_file_is_named_as_such(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(WrongKeyError, match="is an unencrypted SQLite database, not a fieldbox store"):
        Store.open(db, keys)


def test_garbled_middle_of_the_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    db, keys = _make(tmp_path, 2000)
    assert not db.with_name("fieldbox.db-wal").exists() or db.with_name("fieldbox.db-wal").stat().st_size == 0
    size = db.stat().st_size
    assert size > 200_000
    with open(db, "r+b") as fh:  # garble 64 bytes inside one page in the middle
        fh.seek(size // 2 + 100)
        fh.write(os.urandom(64))
    with Store.open(db, keys) as store:  # page 1 is intact: opening works
        with pytest.raises(StoreError, match="is corrupt") as err:
            store.check()
        assert "HMAC" in str(err.value)
        assert err.value.hint and "move the file aside" in err.value.hint
    # A normal read that reaches the damaged page fails with the same clear error, never garbage.
    with Store.open(db, keys) as store, pytest.raises(StoreError, match="is corrupt"):
        after = 0
        while rows := store.results(limit=500, after_id=after):
            after = rows[-1].id
        store.query("SELECT count(*), sum(length(payload)) FROM outbox")
        store.query("SELECT count(*) FROM results INDEXED BY results_by_workflow WHERE workflow > ''")
        store.query("SELECT max(key) FROM results WHERE key > ''")


def test_garbled_first_page_is_wrong_key_or_damaged(tmp_path: Path) -> None:
    db, keys = _make(tmp_path, 10)
    with open(db, "r+b") as fh:
        fh.seek(200)
        fh.write(os.urandom(32))
    with pytest.raises(WrongKeyError, match="first page is damaged"):
        Store.open(db, keys)


def test_newer_schema_is_refused_with_a_hint(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)
    with Store.open(db, keys) as s:
        s.conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StoreError, match="schema version 999, newer than this fieldbox knows") as err:
        Store.open(db, keys)
    assert err.value.hint and "update fieldbox" in err.value.hint


def test_a_newer_but_compatible_schema_opens_after_a_rollback(tmp_path: Path) -> None:
    """A newer release migrated the shared store additively (min_reader <= ours): the old slot
    still opens it and reads what was stored; a min_reader above ours is refused."""
    from fieldbox.store.migrations import LATEST

    db, keys = _make(tmp_path, 10)
    with Store.open(db, keys) as s:
        s.conn.execute(f"PRAGMA user_version = {LATEST + 1}")
        s.conn.execute("CREATE TABLE schema_compat (id INTEGER PRIMARY KEY, min_reader INTEGER)")
        s.conn.execute(f"INSERT INTO schema_compat VALUES (1, {LATEST})")
        s.conn.execute("CREATE TABLE newer_feature (x TEXT)")
    with Store.open(db, keys) as s:
        assert s.count_results() == 10
    with Store.open(db, keys) as s:
        s.conn.execute(f"UPDATE schema_compat SET min_reader = {LATEST + 1}")
    with pytest.raises(StoreError, match="newer than this fieldbox knows"):
        Store.open(db, keys)


def test_foreign_sqlcipher_database_is_not_taken_over(tmp_path: Path) -> None:
    db, keys = _make(tmp_path)
    with Store.open(db, keys) as s:
        s.conn.execute("PRAGMA application_id = 1234")
    with pytest.raises(StoreError, match="not a fieldbox store"):
        Store.open(db, keys)


def test_missing_store_for_readers_and_directory_path(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path / "kek")
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "none.db", keys, create=False)
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(tmp_path, keys)


def test_sqlcipher_prints_nothing_of_its_own(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    db, keys = _make(tmp_path, 10)
    with open(db, "r+b") as fh:
        fh.seek(100)
        fh.write(os.urandom(16))
    with pytest.raises(WrongKeyError):
        Store.open(db, keys)
    assert "sqlcipher" not in capfd.readouterr().err.lower()
    assert sqlcipher3.sqlite_version  # the real library was loaded
