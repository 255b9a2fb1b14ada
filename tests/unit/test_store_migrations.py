"""Schema migrations: numbered, one transaction each, data preserved from v1 to the current version."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlcipher3

from fieldbox.errors import StoreError
from fieldbox.store import SCHEMA_VERSION, FileKeyProvider, Store
from fieldbox.store.keys import key_file_for, read_key, write_new_key
from fieldbox.store.migrations import (
    APPLICATION_ID,
    LATEST,
    MIGRATIONS,
    Migration,
    check_numbering,
    migrate,
    schema_version,
)
from fieldbox.store.sqlcipher import CIPHER_SETTINGS, connect


def _tables(conn: object) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}  # type: ignore[attr-defined]


def _v1_store(tmp_path: Path) -> tuple[Path, FileKeyProvider]:
    """A store as the first released schema left it, with data in every v1 table."""
    db = tmp_path / "fieldbox.db"
    keys = FileKeyProvider(tmp_path / "kek")
    key = write_new_key(key_file_for(db), keys, CIPHER_SETTINGS)
    conn = connect(db, key.dek, key.cipher, create=True)
    assert migrate(conn, "test", target=1) == 1
    assert _tables(conn) == {"results", "outbox", "kv"}
    conn.execute("BEGIN")
    for i in range(100):
        conn.execute(
            "INSERT INTO results (key, workflow, agent, item, created_at, priority, result) "
            "VALUES (?, 'wf', 'agent', ?, ?, 3, ?)",
            (f"k{i}", f"item{i}", 1000.0 + i, f'{{"i":{i}}}'),
        )
        conn.execute(
            "INSERT INTO outbox (topic, record_id, priority, created_at, size, payload) "
            "VALUES ('results', ?, 3, ?, 3, x'414243')",
            (f"results/k{i}", 1000.0 + i),
        )
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES ('cfg', '{\"a\":1}', 5.0)")
    conn.execute("COMMIT")
    conn.close()
    return db, keys


def test_migrations_are_numbered_in_order() -> None:
    check_numbering()
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert SCHEMA_VERSION == LATEST
    with pytest.raises(StoreError, match="numbered 3, expected 2"):
        check_numbering([MIGRATIONS[0], Migration(3, "gap", ())])


def test_upgrade_from_v1_to_current_preserves_data(tmp_path: Path) -> None:
    db, keys = _v1_store(tmp_path)
    with Store.open(db, keys) as store:
        assert schema_version(store.conn) == LATEST
        assert store.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert {"results", "outbox", "kv", "telemetry", "events"} <= _tables(store.conn)
        assert store.count_results() == 100
        rows = store.results(limit=1000)
        assert [r.result["i"] for r in rows] == list(range(100))
        assert rows[42].key == "k42" and rows[42].created_at == 1042.0 and rows[42].priority == 3
        assert store.query("SELECT count(*), sum(size) FROM outbox")[0] == (100, 300)
        assert store.kv_get("cfg") == {"a": 1}
        # The upgraded store works like a new one.
        assert store.put_result("k100", "wf", "agent", "item100", {"i": 100})
        assert not store.put_result("k5", "wf", "agent", "x", {})
        store.add_telemetry([(1.0, "cpu", 2.0)])
        store.add_event("upgraded", {"from": 1})
    with Store.open(db, keys) as store:  # reopening an up-to-date store changes nothing
        assert schema_version(store.conn) == LATEST and store.count_results() == 101


def test_a_failing_migration_leaves_the_previous_version_whole(tmp_path: Path) -> None:
    db, keys = _v1_store(tmp_path)
    broken = (
        *MIGRATIONS[:1],
        Migration(
            2, "half good", ("CREATE TABLE new_one (x)", "ALTER TABLE results ADD COLUMN y", "NOT SQL")
        ),
    )
    key = read_key(key_file_for(db), keys)
    conn = connect(db, key.dek, key.cipher, create=False)
    with pytest.raises(sqlcipher3.OperationalError):
        migrate(conn, "test", migrations=broken)
    assert schema_version(conn) == 1
    assert "new_one" not in _tables(conn)
    assert "y" not in {r[1] for r in conn.execute("PRAGMA table_info(results)")}
    assert not conn.in_transaction
    conn.close()
    with Store.open(db, keys) as store:  # the real migrations still apply afterwards
        assert schema_version(store.conn) == LATEST and store.count_results() == 100


def test_concurrent_first_opens_agree_on_one_key_and_one_schema(tmp_path: Path) -> None:
    """Several processes open a store that does not exist yet, at the same moment."""
    db, kek, go = tmp_path / "store" / "fieldbox.db", tmp_path / "keys" / "kek", tmp_path / "go"
    child = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from fieldbox.store import FileKeyProvider, Store
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        with Store.open(Path({str(db)!r}), FileKeyProvider(Path({str(kek)!r}))) as s:
            s.put_result("child-" + sys.argv[1], "wf", "a", "i", {{}})
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", child, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    go.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    with Store.open(db, FileKeyProvider(kek)) as store:
        assert sorted(r.key for r in store.results()) == [f"child-{i}" for i in range(6)]
        assert schema_version(store.conn) == LATEST
