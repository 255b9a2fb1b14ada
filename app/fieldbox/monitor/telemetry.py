"""The telemetry buffer: samples gathered in memory, written once a flush interval, down-sampled with age.

**Writes**: samples wait in memory and go to the store in ONE transaction per
``flush_s`` (default 60 s): at most one write transaction a minute from the
monitor, whatever ``interval_s`` is. A crash loses at most one flush interval
of samples — health figures, not results.

**Down-sampling** (in the same transaction, every ``downsample_every_s``):
tier *i* keeps points of ``resolution`` r_i for ``keep_s`` seconds; older ones
are replaced by their average over buckets of r_{i+1} seconds (one point per
metric, tags and bucket), and the last tier's points older than its ``keep_s``
are deleted. Defaults: raw (``interval_s``, 10 s) for 1 hour → 1 minute for 1
day → 10 minutes for 7 days. A hard ``max_rows`` bound deletes the oldest,
coarsest points first if a flood of metrics ever exceeds it.

So the table holds at most about ``metrics × (3600/10 + 86400/60 + 7·86400/600)``
= ``metrics × 2808`` rows, and never more than ``max_rows``.

**Sync**: each flush also puts one outbox record (topic ``telemetry``,
priority 8 by default) holding the raw points and events written since the
last flush (watermarks in ``sync_state``), so telemetry reaches the server at
low priority and is the first to be evicted if the link is down for long.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fieldbox.monitor.sampler import Sample
from fieldbox.store import Store


@dataclass(frozen=True)
class Tier:
    """Points of ``resolution`` seconds are kept for ``keep_s`` seconds."""

    resolution: int
    keep_s: float


DEFAULT_TIERS = (Tier(0, 3600.0), Tier(60, 86400.0), Tier(600, 7 * 86400.0))
"""Raw samples (resolution 0) 1 h, 1-minute averages 1 day, 10-minute averages 7 days."""


class TelemetryBuffer:
    """Holds samples until :meth:`flush` writes them (with down-sampling and the sync record)."""

    def __init__(
        self,
        store: Store,
        *,
        tiers: tuple[Tier, ...] = DEFAULT_TIERS,
        max_rows: int = 200_000,
        max_events: int = 10_000,
        downsample_every_s: float = 600.0,
        sync_priority: int | None = 8,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.tiers = tiers
        self.max_rows = max_rows
        self.max_events = max_events
        self.downsample_every_s = downsample_every_s
        self.sync_priority = sync_priority
        self.max_pending = max_pending
        self.pending: list[tuple[float, str, float, str | None, int]] = []
        self.dropped_pending = 0
        self.flushes = 0
        self._last_downsample = -1e18

    def add(self, ts: float, samples: Iterable[Sample]) -> None:
        """Queue one round of samples taken at ``ts`` (wall time)."""
        for metric, value, tags in samples:
            if len(self.pending) >= self.max_pending:  # the store is unwritable for a long time
                self.dropped_pending += 1
                continue
            tag_text = None if not tags else json.dumps(tags, sort_keys=True, separators=(",", ":"))
            self.pending.append((ts, metric, float(value), tag_text, 0))

    def flush(self, now: float | None = None) -> int:
        """Write queued samples, down-sample if due, enqueue the sync record: one transaction."""
        now = time.time() if now is None else now
        rows = self.pending
        with self.store.transaction("writing telemetry") as conn:
            if rows:
                conn.executemany(
                    "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, ?, ?)", rows
                )
            if self.dropped_pending:
                conn.execute(
                    "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, NULL, 0)",
                    (now, "monitor.dropped_samples", float(self.dropped_pending)),
                )
            if self.sync_priority is not None:
                self._enqueue_sync(conn, now)
            if now - self._last_downsample >= self.downsample_every_s:
                self._downsample(conn, now)
                self._last_downsample = now
        self.pending = []
        self.dropped_pending = 0
        self.flushes += 1
        return len(rows)

    def _state(self, conn: Any, key: str) -> int:
        row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _enqueue_sync(self, conn: Any, now: float) -> None:
        tel_mark = self._state(conn, "monitor.telemetry_id")
        ev_mark = self._state(conn, "monitor.event_id")
        points = conn.execute(
            "SELECT id, ts, metric, value, tags FROM telemetry WHERE id > ? AND resolution = 0 ORDER BY id",
            (tel_mark,),
        ).fetchall()
        events = conn.execute(
            "SELECT id, ts, kind, detail FROM events WHERE id > ? ORDER BY id", (ev_mark,)
        ).fetchall()
        if not points and not events:
            return
        last_tel = points[-1][0] if points else tel_mark
        last_ev = events[-1][0] if events else ev_mark
        payload = json.dumps(
            {
                "points": [[ts, m, v, None if t is None else json.loads(t)] for _, ts, m, v, t in points],
                "events": [[ts, k, None if d is None else json.loads(d)] for _, ts, k, d in events],
            },
            separators=(",", ":"),
        ).encode()
        record_id = f"telemetry/{tel_mark + 1}-{last_tel}/{ev_mark + 1}-{last_ev}"
        conn.execute(
            "INSERT OR IGNORE INTO outbox (topic, record_id, priority, created_at, expires_at, size, "
            "payload) VALUES ('telemetry', ?, ?, ?, NULL, ?, ?)",
            (record_id, self.sync_priority, now, len(payload), payload),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)",
            [("monitor.telemetry_id", str(last_tel)), ("monitor.event_id", str(last_ev))],
        )

    def _downsample(self, conn: Any, now: float) -> None:
        for tier, coarser in zip(self.tiers, self.tiers[1:], strict=False):
            cutoff = now - tier.keep_s
            width = coarser.resolution
            # Only whole buckets that lie entirely before the cutoff, so a bucket is made once.
            bucket_end = (cutoff // width) * width
            conn.execute(
                "INSERT INTO telemetry (ts, metric, value, tags, resolution) "
                "SELECT CAST(ts / ? AS INTEGER) * ?, metric, avg(value), tags, ? FROM telemetry "
                "WHERE resolution = ? AND ts < ? GROUP BY CAST(ts / ? AS INTEGER), metric, tags",
                (width, width, width, tier.resolution, bucket_end, width),
            )
            conn.execute(
                "DELETE FROM telemetry WHERE resolution = ? AND ts < ?", (tier.resolution, bucket_end)
            )
        last = self.tiers[-1]
        conn.execute(
            "DELETE FROM telemetry WHERE resolution = ? AND ts < ?", (last.resolution, now - last.keep_s)
        )
        (count,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        if count > self.max_rows:
            conn.execute(
                "DELETE FROM telemetry WHERE id IN (SELECT id FROM telemetry "
                "ORDER BY resolution DESC, ts LIMIT ?)",
                (count - self.max_rows,),
            )
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        if events > self.max_events:
            conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                (events - self.max_events,),
            )
