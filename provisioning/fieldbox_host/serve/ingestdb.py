"""The dev server's database: received records, devices, and config documents, in plain SQLite.

Idempotency is the table's primary key ``(device, record_id)``: a batch is
inserted with ``INSERT OR IGNORE`` in one transaction, and only after that
transaction commits does the server answer with the accepted ids. A record sent
twice (the answer was lost, the client crashed before deleting it) therefore
exists once, and the client only forgets records the server has durably kept.

``seq`` (the rowid) is the order of arrival, which the tests read to check that
urgent records arrived first.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox.errors import FieldboxError, SyncError
from fieldbox.sync import configdoc
from fieldbox.sync.batch import Batch
from fieldbox.sync.configdoc import Document, Entry
from fieldbox.sync.hlc import Clock, Timestamp

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (
        seq         INTEGER PRIMARY KEY,
        device      TEXT    NOT NULL,
        record_id   TEXT    NOT NULL,
        topic       TEXT    NOT NULL,
        priority    INTEGER NOT NULL,
        created_at  REAL    NOT NULL,
        received_at REAL    NOT NULL,
        batch       TEXT    NOT NULL,
        payload     BLOB    NOT NULL,
        UNIQUE (device, record_id)
    )""",
    """CREATE TABLE IF NOT EXISTS devices (
        device       TEXT PRIMARY KEY,
        first_seen   REAL    NOT NULL,
        last_seen    REAL    NOT NULL,
        batches      INTEGER NOT NULL DEFAULT 0,
        records      INTEGER NOT NULL DEFAULT 0,
        duplicates   INTEGER NOT NULL DEFAULT 0,
        wire_bytes   INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS config (
        device  TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT,
        hlc     TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        PRIMARY KEY (device, key)
    )""",
    """CREATE TABLE IF NOT EXISTS server_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
)


@dataclass(frozen=True)
class DeviceSummary:
    """One row of the device list."""

    device: str
    first_seen: float
    last_seen: float
    batches: int
    records: int
    duplicates: int
    wire_bytes: int
    by_topic: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "device": self.device,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "batches": self.batches,
            "records": self.records,
            "duplicates_ignored": self.duplicates,
            "wire_bytes": self.wire_bytes,
            "records_by_topic": self.by_topic,
        }


class IngestDB:
    """One SQLite file; every method is safe to call from the server's threads (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            for statement in SCHEMA:
                self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise FieldboxError(
                f"cannot open ingest database {self.path}: {exc}",
                hint="check the path and that it is a database written by `fieldbox serve`",
            ) from None
        self._lock = threading.Lock()
        row = self._conn.execute("SELECT value FROM server_state WHERE key = 'hlc'").fetchone()
        self.clock = Clock("server", last=Timestamp.parse(row[0]) if row else None)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def ingest(self, batch: Batch, wire_bytes: int, now: float | None = None) -> tuple[str, ...]:
        """Store ``batch`` idempotently; return every id now held (new or seen before), after commit."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO records (device, record_id, topic, priority, created_at, "
                "received_at, batch, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (batch.device_id, r.id, r.topic, r.priority, r.created_at, now, batch.batch_id, r.payload)
                    for r in batch.records
                ],
            )
            inserted = conn.total_changes - before
            conn.execute(
                "INSERT INTO devices (device, first_seen, last_seen, batches, records, duplicates, "
                "wire_bytes) VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
                "last_seen = excluded.last_seen, batches = batches + 1, "
                "records = records + excluded.records, duplicates = duplicates + excluded.duplicates, "
                "wire_bytes = wire_bytes + excluded.wire_bytes",
                (batch.device_id, now, now, inserted, len(batch.records) - inserted, wire_bytes),
            )
        return tuple(r.id for r in batch.records)

    def touch(self, device: str, now: float | None = None) -> None:
        """Record that ``device`` was heard from (a config sync counts)."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
                (device, now, now),
            )

    def devices(self) -> list[DeviceSummary]:
        """Every device that has sent anything, most recently seen first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT device, first_seen, last_seen, batches, records, duplicates, wire_bytes "
                "FROM devices ORDER BY last_seen DESC"
            ).fetchall()
            topics: dict[str, dict[str, int]] = {}
            for device, topic, n in self._conn.execute(
                "SELECT device, topic, count(*) FROM records GROUP BY device, topic"
            ):
                topics.setdefault(device, {})[topic] = n
        return [
            DeviceSummary(
                device=row[0],
                first_seen=row[1],
                last_seen=row[2],
                batches=row[3],
                records=row[4],
                duplicates=row[5],
                wire_bytes=row[6],
                by_topic=topics.get(row[0], {}),
            )
            for row in rows
        ]

    def records(self, device: str | None = None) -> list[tuple[int, str, str, str, int, bytes]]:
        """(seq, device, record_id, topic, priority, payload) in arrival order (for tests and tools)."""
        with self._lock:
            sql = "SELECT seq, device, record_id, topic, priority, payload FROM records"
            if device is None:
                return self._conn.execute(sql + " ORDER BY seq").fetchall()
            return self._conn.execute(sql + " WHERE device = ? ORDER BY seq", (device,)).fetchall()

    # -- config documents ------------------------------------------------------------------

    def _load_config(self, conn: sqlite3.Connection, device: str) -> Document:
        doc: Document = {}
        for key, value, hlc, deleted in conn.execute(
            "SELECT key, value, hlc, deleted FROM config WHERE device = ?", (device,)
        ):
            doc[key] = Entry(
                value=None if deleted else configdoc.json_value(value),
                hlc=Timestamp.parse(hlc),
                deleted=bool(deleted),
            )
        return doc

    def _save_config(self, conn: sqlite3.Connection, device: str, doc: Document, keys: set[str]) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO config (device, key, value, hlc, deleted) VALUES (?, ?, ?, ?, ?)",
            [
                (
                    device,
                    k,
                    None if doc[k].deleted else configdoc.value_bytes(doc[k].value).decode(),
                    str(doc[k].hlc),
                    int(doc[k].deleted),
                )
                for k in sorted(keys)
            ],
        )
        conn.execute(
            "INSERT OR REPLACE INTO server_state (key, value) VALUES ('hlc', ?)", (str(self.clock.last),)
        )

    def config(self, device: str) -> Document:
        """The server's copy of ``device``'s config document."""
        with self._lock:
            return self._load_config(self._conn, device)

    def merge_config(self, device: str, incoming: Document) -> Document:
        """Merge a device's document into ours (rule: :mod:`fieldbox.sync.configdoc`); return the result.

        Every incoming timestamp is first checked against the server clock (one
        a day ahead is refused with ClockSkewError) and observed, so the
        server's next edit orders after everything it has seen.
        """
        with self._transaction() as conn:
            for entry in incoming.values():
                self.clock.check(entry.hlc)
            for entry in incoming.values():
                self.clock.observe(entry.hlc)
            current = self._load_config(conn, device)
            merged, changed = configdoc.merge(current, incoming)
            self._save_config(conn, device, merged, changed)
        self.touch(device)
        return merged

    def edit_config(self, device: str, set_values: dict[str, Any], delete: list[str]) -> Document:
        """An operator's edit: stamp each key with the server clock, merge, return the document."""
        for key in [*set_values, *delete]:
            configdoc.check_key(key)
        for value in set_values.values():
            configdoc.value_bytes(value)
        if set(set_values) & set(delete):
            raise SyncError("a key cannot be both set and deleted in one edit")
        with self._transaction() as conn:
            edit: Document = {}
            for key, value in set_values.items():
                edit[key] = Entry(value=value, hlc=self.clock.tick())
            for key in delete:
                edit[key] = Entry(value=None, hlc=self.clock.tick(), deleted=True)
            current = self._load_config(conn, device)
            merged, changed = configdoc.merge(current, edit)
            self._save_config(conn, device, merged, changed)
        return merged
