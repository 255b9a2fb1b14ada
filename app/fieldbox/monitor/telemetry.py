"""The telemetry buffer: samples gathered in memory, written once a flush interval, down-sampled with age.

**Writes**: samples wait in memory (in the monitor) and go to the store in
ONE transaction per ``flush_s`` (default 60 s): at most one write transaction
a minute from the monitor, whatever ``interval_s`` is. A crash loses at most
one flush interval of samples — health figures, not results.

**Who writes**: the monitor does not open the database. A flush is one
:class:`TelemetryBatch` (the queued points plus the settings the transaction
needs) handed to a :class:`TelemetrySink`: on the device the store writer's
socket (:meth:`fieldbox.services.clients.StoreClient.write_telemetry`, which
answers only after COMMIT), and :class:`DirectSink` for a :class:`Store` held
in the same process (the store writer itself, and tests). The SQL is
:func:`write_batch`, run by whoever holds the store, so the monitor process
never loads SQLCipher or the key-unwrapping code. If the sink fails, the
samples stay queued (bounded by ``max_pending``) for the next flush.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fieldbox.errors import ProtocolError

if TYPE_CHECKING:  # for types only: the monitor process must not load SQLCipher
    from fieldbox.store import Store

Sample = tuple[str, float, dict[str, str] | None]
"""``(metric, value, tags)``, as :mod:`fieldbox.monitor.sampler` makes them."""
Point = tuple[float, str, float, str | None]
"""``(ts, metric, value, tags as canonical JSON or None)``: one raw telemetry row."""


@dataclass(frozen=True)
class Tier:
    """Points of ``resolution`` seconds are kept for ``keep_s`` seconds."""

    resolution: int
    keep_s: float


DEFAULT_TIERS = (Tier(0, 3600.0), Tier(60, 86400.0), Tier(600, 7 * 86400.0))
"""Raw samples (resolution 0) 1 h, 1-minute averages 1 day, 10-minute averages 7 days."""


@dataclass(frozen=True)
class TelemetryBatch:
    """One flush: the points to insert and what the same transaction must do besides.

    This is the payload of the store writer's ``telemetry`` request (JSON, see
    :meth:`to_json`); the monitor decides *when* to down-sample, the writer
    runs it.
    """

    now: float
    points: Sequence[Point] = ()
    dropped: int = 0
    downsample: bool = False
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    max_rows: int = 200_000
    max_events: int = 10_000
    sync_priority: int | None = 8

    def to_json(self) -> bytes:
        """The batch as compact JSON bytes."""
        doc = {
            "now": self.now,
            "points": [list(p) for p in self.points],
            "dropped": self.dropped,
            "downsample": self.downsample,
            "tiers": [[t.resolution, t.keep_s] for t in self.tiers],
            "max_rows": self.max_rows,
            "max_events": self.max_events,
            "sync_priority": self.sync_priority,
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TelemetryBatch:
        """Parse :meth:`to_json` output; :class:`ProtocolError` naming what is malformed."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(f"telemetry batch is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ProtocolError("telemetry batch must be a JSON object")

        def num(value: Any, what: str) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ProtocolError(f"telemetry batch: {what} must be a number")
            return float(value)

        def count(value: Any, what: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProtocolError(f"telemetry batch: {what} must be a non-negative integer")
            return int(value)

        points: list[Point] = []
        raw_points = doc.get("points", [])
        if not isinstance(raw_points, list):
            raise ProtocolError("telemetry batch: points must be a list")
        for i, p in enumerate(raw_points):
            if not (isinstance(p, list) and len(p) == 4 and isinstance(p[1], str)
                    and (p[3] is None or isinstance(p[3], str))):
                raise ProtocolError(f"telemetry batch: point {i} must be [ts, metric, value, tags|null]")
            points.append((num(p[0], f"point {i} ts"), p[1], num(p[2], f"point {i} value"), p[3]))
        raw_tiers = doc.get("tiers")
        if not isinstance(raw_tiers, list) or not raw_tiers or not all(
            isinstance(t, list) and len(t) == 2 for t in raw_tiers
        ):
            raise ProtocolError("telemetry batch: tiers must be a non-empty list of [resolution, keep_s]")
        tiers = tuple(Tier(count(r, "tier resolution"), num(k, "tier keep_s")) for r, k in raw_tiers)
        priority = doc.get("sync_priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not 0 <= priority <= 9):
            raise ProtocolError("telemetry batch: sync_priority must be 0..9 or null")
        if not isinstance(doc.get("downsample", False), bool):
            raise ProtocolError("telemetry batch: downsample must be true or false")
        return cls(
            now=num(doc.get("now"), "now"),
            points=points,
            dropped=count(doc.get("dropped", 0), "dropped"),
            downsample=bool(doc.get("downsample", False)),
            tiers=tiers,
            max_rows=count(doc.get("max_rows"), "max_rows"),
            max_events=count(doc.get("max_events"), "max_events"),
            sync_priority=priority,
        )


class TelemetrySink(Protocol):
    """Where a flush goes: returns only once the batch is committed (raises otherwise)."""

    def write_telemetry(self, batch: TelemetryBatch) -> int:
        """Commit ``batch`` in one transaction; the number of points written."""
        ...


class DirectSink:
    """A :class:`TelemetrySink` over a :class:`Store` open in this process."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write_telemetry(self, batch: TelemetryBatch) -> int:
        """Run :func:`write_batch` on the store."""
        return write_batch(self.store, batch)


class TelemetryBuffer:
    """Holds samples until :meth:`flush` hands them (with down-sampling and sync settings) to the sink."""

    def __init__(
        self,
        sink: TelemetrySink,
        *,
        tiers: tuple[Tier, ...] = DEFAULT_TIERS,
        max_rows: int = 200_000,
        max_events: int = 10_000,
        downsample_every_s: float = 600.0,
        sync_priority: int | None = 8,
        max_pending: int = 100_000,
    ) -> None:
        self.sink = sink
        self.tiers = tiers
        self.max_rows = max_rows
        self.max_events = max_events
        self.downsample_every_s = downsample_every_s
        self.sync_priority = sync_priority
        self.max_pending = max_pending
        self.pending: list[Point] = []
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
            self.pending.append((ts, metric, float(value), tag_text))

    def flush(self, now: float | None = None) -> int:
        """Hand queued samples to the sink (one transaction there); keep them if it fails."""
        now = time.time() if now is None else now
        downsample = now - self._last_downsample >= self.downsample_every_s
        batch = TelemetryBatch(
            now=now,
            points=self.pending,
            dropped=self.dropped_pending,
            downsample=downsample,
            tiers=self.tiers,
            max_rows=self.max_rows,
            max_events=self.max_events,
            sync_priority=self.sync_priority,
        )
        self.sink.write_telemetry(batch)
        if downsample:
            self._last_downsample = now
        written = len(self.pending)
        self.pending = []
        self.dropped_pending = 0
        self.flushes += 1
        return written


def write_batch(store: Store, batch: TelemetryBatch) -> int:
    """Insert the points, down-sample if asked, enqueue the sync record: ONE transaction.

    Run by the holder of the store (the store writer). Returns the number of
    points inserted; raises :class:`~fieldbox.errors.StoreError` (nothing
    written) if the transaction fails.
    """
    now = batch.now
    with store.transaction("writing telemetry") as conn:
        if batch.points:
            conn.executemany(
                "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, ?, 0)",
                list(batch.points),
            )
        if batch.dropped:
            conn.execute(
                "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, NULL, 0)",
                (now, "monitor.dropped_samples", float(batch.dropped)),
            )
        if batch.sync_priority is not None:
            _enqueue_sync(conn, now, batch.sync_priority)
        if batch.downsample:
            _downsample(conn, now, batch)
    return len(batch.points)


def _state(conn: Any, key: str) -> int:
    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _enqueue_sync(conn: Any, now: float, sync_priority: int) -> None:
    tel_mark = _state(conn, "monitor.telemetry_id")
    ev_mark = _state(conn, "monitor.event_id")
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
        (record_id, sync_priority, now, len(payload), payload),
    )
    conn.executemany(
        "INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)",
        [("monitor.telemetry_id", str(last_tel)), ("monitor.event_id", str(last_ev))],
    )


def _downsample(conn: Any, now: float, batch: TelemetryBatch) -> None:
    for tier, coarser in zip(batch.tiers, batch.tiers[1:], strict=False):
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
    last = batch.tiers[-1]
    conn.execute(
        "DELETE FROM telemetry WHERE resolution = ? AND ts < ?", (last.resolution, now - last.keep_s)
    )
    (count,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    if count > batch.max_rows:
        conn.execute(
            "DELETE FROM telemetry WHERE id IN (SELECT id FROM telemetry "
            "ORDER BY resolution DESC, ts LIMIT ?)",
            (count - batch.max_rows,),
        )
    (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    if events > batch.max_events:
        conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
            (events - batch.max_events,),
        )
