"""Nothing stored is readable in the files on disk: not the values, not the database key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.store.keys import key_file_for, read_key

CANARY = "CANARY-fieldbox-7f3a9c41-plaintext"


def _files(db: Path) -> dict[str, bytes]:
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            out[p.name] = p.read_bytes()
    return out


def _write_canaries(store: Store) -> None:
    store.put_result(f"key-{CANARY}", f"wf-{CANARY}", "agent", f"item-{CANARY}", {"label": CANARY})
    store.put_results([ResultIn(f"k{i}-{CANARY}", "wf", "a", "i", {"v": CANARY * 3}) for i in range(50)])
    store.kv_set(f"cfg-{CANARY}", {"secret": CANARY})
    store.add_event("e", {"detail": CANARY})
    store.add_telemetry([(1.0, f"metric-{CANARY}", 1.0, {"tag": CANARY})])


def test_grep_finds_the_canary_in_a_plain_sqlite_database(tmp_path: Path) -> None:
    """The control: the same search does find plaintext, so its silence below means something."""
    db = tmp_path / "plain.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (CANARY,))
    files = _files(db)
    assert any(CANARY.encode() in data for data in files.values())
    conn.close()


def test_no_plaintext_in_db_wal_or_shm_while_open_and_after_close(tmp_path: Path) -> None:
    db = tmp_path / "store" / "fieldbox.db"
    keys = FileKeyProvider(tmp_path / "keys" / "kek")
    needles = [CANARY.encode(), CANARY.encode("utf-16-le"), b'"label"', b"CREATE TABLE"]
    with Store.open(db, keys) as store:
        _write_canaries(store)
        open_files = _files(db)
        assert set(open_files) == {"fieldbox.db", "fieldbox.db-wal", "fieldbox.db-shm"}
        assert len(open_files["fieldbox.db-wal"]) > 50 * 200  # the commits really are in the WAL
        for name, data in open_files.items():
            for needle in needles:
                assert needle not in data, f"{needle!r} in {name} while open"
    closed_files = _files(db)
    assert len(closed_files["fieldbox.db"]) > 50 * 200
    for name, data in closed_files.items():
        for needle in needles:
            assert needle not in data, f"{needle!r} in {name} after close"
    # Neither is the database key, in any form, nor in the wrapped-key file.
    dek = read_key(key_file_for(db), keys).dek
    for name, data in {**closed_files, "fieldbox.db.key": key_file_for(db).read_bytes()}.items():
        for form in (dek, dek.hex().encode(), dek.hex().upper().encode()):
            assert form not in data, f"database key in {name}"
    assert not closed_files["fieldbox.db"].startswith(b"SQLite format 3")
    with Store.open(db, keys) as store:  # and it all reads back through the key
        assert store.results(limit=1)[0].result == {"label": CANARY}
        assert store.kv_get(f"cfg-{CANARY}") == {"secret": CANARY}
