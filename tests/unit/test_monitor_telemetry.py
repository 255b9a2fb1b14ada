"""Telemetry in the real store: a simulated week stays bounded; writes stay at one transaction a minute."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldbox.monitor.telemetry import DEFAULT_TIERS, DirectSink, TelemetryBuffer
from fieldbox.store import FileKeyProvider, Store

METRICS = [("cpu.percent", None), ("mem.used_pct", None), ("temp.c", {"zone": "cpu-thermal"}),
           ("proc.rss_b", {"program": "runner"}), ("proc.rss_b", {"program": "store"})]
START = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


class CountingStore:
    """Counts write transactions on a real store (the writes still happen)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.transactions = 0

    def transaction(self, doing: str = "writing"):
        self.transactions += 1
        return self.store.transaction(doing)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def _simulate(buffer: TelemetryBuffer, seconds: float, interval: float = 10.0, flush: float = 60.0,
              start: float = START) -> float:
    """Drive the clock: a sample round every ``interval``, a flush every ``flush`` (no sleeping)."""
    t = start
    next_flush = t + flush
    end = start + seconds
    while t < end:
        buffer.add(t, [(m, (t % 600) / 6.0, tags) for m, tags in METRICS])
        if t >= next_flush:
            buffer.flush(now=t)
            next_flush += flush
        t += interval
    buffer.flush(now=t)
    return t


@pytest.mark.slow
def test_a_simulated_week_stays_bounded_and_writes_once_a_minute(store: Store) -> None:
    counting = CountingStore(store)
    buffer = TelemetryBuffer(DirectSink(counting), sync_priority=None)  # type: ignore[arg-type]
    week = 7 * 86400.0
    end = _simulate(buffer, week)
    # Writes: one transaction per flush, one flush per simulated minute (+1 final).
    minutes = week / 60
    assert counting.transactions <= minutes + 2
    # Size: metrics x (raw 1 h at 10 s + 1 day at 1 min + 7 days at 10 min), plus slack per tier.
    per_metric = 3600 / 10 + 86400 / 60 + 7 * 86400 / 600
    rows = store.query("SELECT resolution, count(*), min(ts), max(ts) FROM telemetry GROUP BY resolution")
    by_res = {r: (n, lo, hi) for r, n, lo, hi in rows}
    total = sum(n for n, _, _ in by_res.values())
    assert total <= len(METRICS) * (per_metric + 3 * 60), by_res
    assert set(by_res) == {0, 60, 600}
    # Each tier covers its age range and no more (slack: bucket alignment + down-sampling every 10 min).
    slack = 1200
    assert by_res[0][1] >= end - DEFAULT_TIERS[0].keep_s - slack
    assert by_res[60][1] >= end - DEFAULT_TIERS[1].keep_s - slack
    assert by_res[600][1] >= end - DEFAULT_TIERS[2].keep_s - slack
    # Down-sampled values are averages of the raw ones (a sawtooth 0..100 averages to ~50 over 10 min).
    sql = "SELECT avg(value) FROM telemetry WHERE resolution = 600 AND metric = 'cpu.percent'"
    (avg,) = store.query(sql)[0]
    assert 40 < avg < 60


def test_a_second_week_does_not_grow_the_table(store: Store) -> None:
    buffer = TelemetryBuffer(DirectSink(store), sync_priority=None, downsample_every_s=600.0)
    # Faster variant: flush hourly (the bound does not depend on the flush interval).
    end = _simulate(buffer, 8 * 86400.0, flush=3600.0)
    after_8 = store.query("SELECT count(*) FROM telemetry")[0][0]
    _simulate(buffer, 2 * 86400.0, flush=3600.0, start=end)
    after_10 = store.query("SELECT count(*) FROM telemetry")[0][0]
    assert abs(after_10 - after_8) <= len(METRICS) * 400


def test_hard_row_cap(store: Store) -> None:
    buffer = TelemetryBuffer(DirectSink(store), sync_priority=None, max_rows=500)
    _simulate(buffer, 3 * 3600.0, flush=600.0)
    assert store.query("SELECT count(*) FROM telemetry")[0][0] <= 500 + len(METRICS) * 60


def test_flush_queues_one_low_priority_sync_record_with_points_and_events(store: Store) -> None:
    buffer = TelemetryBuffer(DirectSink(store), sync_priority=8)
    store.add_event("process.exited", {"program": "runner"})
    buffer.add(START, [("cpu.percent", 12.5, None), ("temp.c", 48.0, {"zone": "cpu"})])
    buffer.flush(now=START + 60)
    buffer.flush(now=START + 120)  # nothing new: no second record
    rows = store.query("SELECT topic, record_id, priority, payload FROM outbox")
    assert len(rows) == 1
    topic, record_id, priority, payload = rows[0]
    assert (topic, priority) == ("telemetry", 8)
    doc = json.loads(payload)
    assert [p[1:] for p in doc["points"]] == [["cpu.percent", 12.5, None], ["temp.c", 48.0, {"zone": "cpu"}]]
    assert doc["events"][0][1:] == ["process.exited", {"program": "runner"}]
    buffer.add(START + 130, [("cpu.percent", 1.0, None)])
    buffer.flush(now=START + 180)
    ids = [r[0] for r in store.query("SELECT record_id FROM outbox ORDER BY id")]
    assert len(ids) == 2 and ids[0] == record_id and len(set(ids)) == 2


def test_failed_flush_keeps_the_samples(store: Store, tmp_path: Path) -> None:
    buffer = TelemetryBuffer(DirectSink(store), sync_priority=None)
    buffer.add(START, [("cpu.percent", 1.0, None)])
    store.close()
    with pytest.raises(Exception, match="closed"):
        buffer.flush(now=START + 60)
    assert len(buffer.pending) == 1
