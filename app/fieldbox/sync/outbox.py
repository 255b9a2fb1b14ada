"""The sync side of the store's outbox: read in send order, delete what was acknowledged, keep it bounded.

**Send order**: priority (0 first), then age (oldest first), then insertion.

**The eviction rule** (run by the sync program before every batch and at least
every ``idle_s`` while the link is down):

1. *Expiry*: a record older than its priority's TTL (``outbox.ttl_s``) is dropped.
2. *Bounds*: while the outbox holds more than ``outbox.max_rows`` records or
   ``outbox.max_bytes`` payload bytes, the least urgent record is dropped —
   the highest priority number first, and within one priority the oldest first.

So an urgent result is never dropped to make room for telemetry, and within a
priority the newest data (the device's current state) survives. Every drop is
counted, never silent: in the same transaction as the delete, one ``telemetry``
row per (reason, priority) (metric ``sync.evicted``, tags ``{"reason",
"priority"}``, value = records dropped) and one ``events`` row ``sync.evicted``
with the totals are written; the telemetry rows are synced like any other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldbox.sync.batch import Record
from fieldbox.sync.config import OutboxBounds

if TYPE_CHECKING:
    from fieldbox.store import Store

_IN_CHUNK = 500


@dataclass(frozen=True)
class OutboxRow:
    """One queued record as the sync client sees it."""

    id: int
    record: Record


@dataclass
class EvictionReport:
    """What one bounds check dropped: counts by (reason, priority)."""

    dropped: dict[tuple[str, int], int] = field(default_factory=dict)
    dropped_bytes: int = 0

    @property
    def total(self) -> int:
        """Records dropped."""
        return sum(self.dropped.values())

    def add(self, reason: str, priority: int, count: int, size: int) -> None:
        """Count ``count`` records of ``size`` bytes dropped for ``reason``."""
        if count:
            self.dropped[(reason, priority)] = self.dropped.get((reason, priority), 0) + count
            self.dropped_bytes += size


def pending(store: Store, max_records: int, max_bytes: int) -> list[OutboxRow]:
    """The next records to send, in send order, within ``max_records`` and ``max_bytes`` (raw).

    At least one record is returned when any is queued, even one larger than
    ``max_bytes``, so a large record cannot block the queue.
    """
    rows = store.query(
        "SELECT id, topic, record_id, priority, created_at, payload FROM outbox "
        "ORDER BY priority, created_at, id LIMIT ?",
        (max_records,),
        "reading the outbox",
    )
    out: list[OutboxRow] = []
    used = 0
    for row_id, topic, record_id, priority, created_at, payload in rows:
        record = Record(
            id=record_id, topic=topic, priority=priority, created_at=float(created_at), payload=bytes(payload)
        )
        size = record.encoded_size()
        if out and used + size > max_bytes:
            break
        out.append(OutboxRow(row_id, record))
        used += size
    return out


def delete(store: Store, record_ids: Sequence[str]) -> int:
    """Delete acknowledged records (by record id) in one short transaction; returns how many."""
    deleted = 0
    if not record_ids:
        return 0
    with store.transaction("deleting acknowledged outbox records") as conn:
        for start in range(0, len(record_ids), _IN_CHUNK):
            chunk = list(record_ids[start : start + _IN_CHUNK])
            marks = ",".join("?" * len(chunk))
            cur = conn.execute(f"DELETE FROM outbox WHERE record_id IN ({marks})", chunk)
            deleted += cur.rowcount
    return deleted


def totals(store: Store) -> tuple[int, int]:
    """(records, payload bytes) queued."""
    rows = store.query("SELECT count(*), coalesce(sum(size), 0) FROM outbox", (), "reading the outbox")
    return int(rows[0][0]), int(rows[0][1])


def _record_drops(store_conn: object, report: EvictionReport, now: float) -> None:
    conn = store_conn
    rows = [
        (now, "sync.evicted", float(n), json.dumps({"reason": reason, "priority": prio}, sort_keys=True), 0)
        for (reason, prio), n in sorted(report.dropped.items())
    ]
    conn.executemany(  # type: ignore[attr-defined]
        "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, ?, ?)", rows
    )
    detail = {
        "records": report.total,
        "bytes": report.dropped_bytes,
        "by_reason_priority": {f"{r}/{p}": n for (r, p), n in sorted(report.dropped.items())},
    }
    conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO events (ts, kind, detail) VALUES (?, 'sync.evicted', ?)",
        (now, json.dumps(detail, sort_keys=True)),
    )


def enforce_bounds(store: Store, bounds: OutboxBounds, now: float | None = None) -> EvictionReport:
    """Apply the eviction rule (module docstring) in one transaction; report what was dropped."""
    now = time.time() if now is None else now
    report = EvictionReport()
    with store.transaction("enforcing the outbox bounds") as conn:
        # 1. Expiry, per priority.
        for priority_text, ttl in sorted(bounds.ttl_s.items()):
            priority = int(priority_text)
            cutoff = now - ttl
            n, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox "
                "WHERE priority = ? AND (created_at < ? OR (expires_at IS NOT NULL AND expires_at < ?))",
                (priority, cutoff, now),
            ).fetchone()
            if n:
                conn.execute(
                    "DELETE FROM outbox WHERE priority = ? AND "
                    "(created_at < ? OR (expires_at IS NOT NULL AND expires_at < ?))",
                    (priority, cutoff, now),
                )
                report.add("ttl", priority, int(n), int(size))
        # 2. Bounds: least urgent first, oldest first within a priority.
        rows, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        excess_rows = rows - bounds.max_rows
        excess_bytes = size - bounds.max_bytes
        if excess_rows > 0 or excess_bytes > 0:
            victims: list[int] = []
            per_priority: dict[int, tuple[int, int]] = {}
            cur = conn.execute("SELECT id, priority, size FROM outbox ORDER BY priority DESC, created_at, id")
            for row_id, priority, row_size in cur:
                if excess_rows <= 0 and excess_bytes <= 0:
                    break
                victims.append(row_id)
                count, total = per_priority.get(priority, (0, 0))
                per_priority[priority] = (count + 1, total + row_size)
                excess_rows -= 1
                excess_bytes -= row_size
            cur.close()
            for start in range(0, len(victims), _IN_CHUNK):
                chunk = victims[start : start + _IN_CHUNK]
                conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            for priority, (count, total) in per_priority.items():
                report.add("bounds", priority, count, total)
        if report.total:
            _record_drops(conn, report, now)
    return report


def drop_unsendable(store: Store, rows: Iterable[tuple[str, int, str]], now: float | None = None) -> int:
    """Remove records that can never be sent (the server refuses them as malformed), counted like evictions.

    ``rows`` are (record id, priority, reason).
    """
    now = time.time() if now is None else now
    report = EvictionReport()
    rows = list(rows)
    with store.transaction("dropping unsendable outbox records") as conn:
        for record_id, priority, _reason in rows:
            cur = conn.execute("DELETE FROM outbox WHERE record_id = ?", (record_id,))
            report.add("rejected", priority, cur.rowcount, 0)
        if report.total:
            _record_drops(conn, report, now)
            conn.execute(
                "INSERT INTO events (ts, kind, detail) VALUES (?, 'sync.rejected', ?)",
                (now, json.dumps([{"record_id": r, "reason": why} for r, _, why in rows])),
            )
    return report.total
