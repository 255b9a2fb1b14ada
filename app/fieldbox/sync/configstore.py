"""The device's copy of its config document, kept in the store's ``kv`` table.

``kv`` *is* the config document: every key is synced with the server except
those starting with ``local.`` (device-only state). A value written with the
store's ``kv_set`` is a local edit: its ``version`` moves past ``hlc_version``,
and :func:`stamp_local_edits` gives it a fresh HLC timestamp before the next
push. Deletes leave the row and become a tombstone in ``kv_tombstones``, so
``kv_get`` never sees a deleted key and the delete still wins over stale copies.

The node's HLC (:class:`~fieldbox.sync.hlc.Clock`) is persisted in
``sync_state`` under ``hlc`` after every change, so it never runs backwards
across restarts.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fieldbox.sync import configdoc
from fieldbox.sync.configdoc import Document, Entry
from fieldbox.sync.hlc import Clock, Timestamp

if TYPE_CHECKING:
    from fieldbox.store import Store

LOCAL_PREFIX = "local."
"""kv keys with this prefix stay on the device."""


def load_clock(store: Store, node: str) -> Clock:
    """The device's HLC, continuing from the last persisted reading."""
    rows = store.query("SELECT value FROM sync_state WHERE key = 'hlc'")
    last = Timestamp.parse(rows[0][0]) if rows else None
    if last is not None and last.node != node:
        last = Timestamp(last.wall_ms, last.counter, node)  # the device was renamed
    return Clock(node, last=last)


def _save_clock(conn: Any, clock: Clock) -> None:
    conn.execute("INSERT OR REPLACE INTO sync_state (key, value) VALUES ('hlc', ?)", (str(clock.last),))


def stamp_local_edits(store: Store, clock: Clock) -> int:
    """Give every kv row edited since it was last stamped a new HLC timestamp; returns how many."""
    with store.transaction("stamping config edits") as conn:
        rows = conn.execute(
            "SELECT key, version FROM kv WHERE "
            "(hlc IS NULL OR hlc_version IS NULL OR hlc_version != version) "
            "AND key NOT LIKE 'local.%' ORDER BY key"
        ).fetchall()
        for key, version in rows:
            conn.execute(
                "UPDATE kv SET hlc = ?, hlc_version = ? WHERE key = ?", (str(clock.tick()), version, key)
            )
            conn.execute("DELETE FROM kv_tombstones WHERE key = ?", (key,))
        if rows:
            _save_clock(conn, clock)
    return len(rows)


def set_local(store: Store, clock: Clock, key: str, value: Any) -> Timestamp:
    """A local edit, stamped at once (what ``fieldbox config set`` would call)."""
    configdoc.check_key(key)
    text = configdoc.value_bytes(value).decode()
    with store.transaction("writing config") as conn:
        stamp = clock.tick()
        conn.execute(
            "INSERT INTO kv (key, value, updated_at, version, hlc, hlc_version) VALUES (?, ?, ?, 1, ?, 1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
            "version = kv.version + 1, hlc = excluded.hlc, hlc_version = kv.version + 1",
            (key, text, time.time(), str(stamp)),
        )
        conn.execute("DELETE FROM kv_tombstones WHERE key = ?", (key,))
        _save_clock(conn, clock)
    return stamp


def delete_local(store: Store, clock: Clock, key: str) -> Timestamp:
    """A local delete: the row goes, a tombstone stays."""
    configdoc.check_key(key)
    with store.transaction("deleting config") as conn:
        stamp = clock.tick()
        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        conn.execute("INSERT OR REPLACE INTO kv_tombstones (key, hlc) VALUES (?, ?)", (key, str(stamp)))
        _save_clock(conn, clock)
    return stamp


def load_document(store: Store) -> Document:
    """The synced part of kv, plus tombstones, as a config document (rows not yet stamped are left out)."""
    doc: Document = {}
    for key, value, hlc in store.query(
        "SELECT key, value, hlc FROM kv WHERE hlc IS NOT NULL AND key NOT LIKE 'local.%'"
    ):
        doc[key] = Entry(value=json.loads(value), hlc=Timestamp.parse(hlc))
    for key, hlc in store.query("SELECT key, hlc FROM kv_tombstones"):
        doc[key] = Entry(value=None, hlc=Timestamp.parse(hlc), deleted=True)
    return doc


def values(store: Store, prefix: str) -> dict[str, Any]:
    """The current value of every kv key starting with ``prefix`` (what :mod:`fieldbox.settings` reads)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return {
        key: json.loads(value)
        for key, value in store.query("SELECT key, value FROM kv WHERE key LIKE ? ESCAPE '\\'", (pattern,))
    }


def apply_remote(store: Store, clock: Clock, remote: Document) -> set[str]:
    """Merge a document from the server into kv by the rule; returns the keys that changed here.

    Reads, merges and writes in one transaction, so a concurrent local
    ``kv_set`` either lands before (and is compared) or after (and stays a
    pending local edit).
    """
    for entry in remote.values():
        clock.check(entry.hlc)
    remote = {k: e for k, e in remote.items() if not k.startswith(LOCAL_PREFIX)}
    with store.transaction("applying the server's config") as conn:
        for entry in remote.values():
            clock.observe(entry.hlc)
        local: Document = {}
        pending_local: set[str] = set()
        for key, value, hlc, version, hlc_version in conn.execute(
            "SELECT key, value, hlc, version, hlc_version FROM kv WHERE key NOT LIKE 'local.%'"
        ).fetchall():
            if hlc is None or hlc_version != version:
                pending_local.add(key)  # edited here since stamped: stamp_local_edits will win it later
                continue
            local[key] = Entry(value=json.loads(value), hlc=Timestamp.parse(hlc))
        for key, hlc in conn.execute("SELECT key, hlc FROM kv_tombstones").fetchall():
            local[key] = Entry(value=None, hlc=Timestamp.parse(hlc), deleted=True)
        merged, changed = configdoc.merge(local, {k: e for k, e in remote.items() if k not in pending_local})
        now = time.time()
        for key in sorted(changed):
            entry = merged[key]
            if entry.deleted:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                conn.execute(
                    "INSERT OR REPLACE INTO kv_tombstones (key, hlc) VALUES (?, ?)", (key, str(entry.hlc))
                )
            else:
                conn.execute(
                    "INSERT INTO kv (key, value, updated_at, version, hlc, hlc_version) "
                    "VALUES (?, ?, ?, 1, ?, 1) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at, version = kv.version + 1, hlc = excluded.hlc, "
                    "hlc_version = kv.version + 1",
                    (key, configdoc.value_bytes(entry.value).decode(), now, str(entry.hlc)),
                )
                conn.execute("DELETE FROM kv_tombstones WHERE key = ?", (key,))
        _save_clock(conn, clock)
    return changed
