"""The outbox as sync sees it (real SQLCipher store): send order, byte budgets, the eviction rule, TTL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.sync import outbox
from fieldbox.sync.backoff import Backoff, parse_retry_after
from fieldbox.sync.config import OutboxBounds, SyncConfig

DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


def _put(store: Store, n: int, priority: int, created_at: float, prefix: str, size: int = 10) -> None:
    store.put_results(
        [
            ResultIn(f"{prefix}-{i}", "wf", "agent", f"i{i}", {"pad": "x" * size}, priority, created_at + i)
            for i in range(n)
        ]
    )


def _ids(store: Store) -> list[str]:
    return [r.record.id for r in outbox.pending(store, 100_000, 10**12)]


def test_pending_is_priority_then_age_order(store: Store) -> None:
    _put(store, 3, 7, 1000.0, "late-low")
    _put(store, 3, 1, 2000.0, "later-urgent")
    _put(store, 3, 1, 500.0, "early-urgent")
    assert _ids(store) == [
        *(f"results/early-urgent-{i}" for i in range(3)),
        *(f"results/later-urgent-{i}" for i in range(3)),
        *(f"results/late-low-{i}" for i in range(3)),
    ]


def test_pending_respects_count_and_byte_budgets(store: Store) -> None:
    _put(store, 10, 5, 1000.0, "r", size=1000)
    assert len(outbox.pending(store, 4, 10**9)) == 4
    one = outbox.pending(store, 10, 1)[0].record.encoded_size()
    assert len(outbox.pending(store, 10, one * 3 + 1)) == 3
    # A record bigger than the budget still goes, alone.
    assert len(outbox.pending(store, 10, 5)) == 1


def test_delete_only_what_is_named(store: Store) -> None:
    _put(store, 5, 5, 1000.0, "r")
    assert outbox.delete(store, ["results/r-1", "results/r-3", "results/not-there"]) == 2
    assert _ids(store) == ["results/r-0", "results/r-2", "results/r-4"]


def test_eviction_drops_least_urgent_then_oldest(store: Store) -> None:
    _put(store, 5, 2, 1000.0, "urgent")
    _put(store, 5, 8, 1000.0, "telemetry")
    _put(store, 5, 5, 1000.0, "normal")
    bounds = OutboxBounds(max_rows=8, max_bytes=10**9, ttl_s={})
    report = outbox.enforce_bounds(store, bounds, now=2000.0)
    # 15 rows, bound 8: the five priority-8 rows go, then the two OLDEST priority-5 rows.
    assert report.dropped == {("bounds", 8): 5, ("bounds", 5): 2}
    left = _ids(store)
    assert left == [*(f"results/urgent-{i}" for i in range(5)), "results/normal-2", "results/normal-3",
                    "results/normal-4"]
    # Reported, not silent: telemetry rows per (reason, priority) and an event.
    tele = store.query("SELECT metric, value, tags FROM telemetry ORDER BY id")
    assert [(m, v, json.loads(t)) for m, v, t in tele] == [
        ("sync.evicted", 2.0, {"priority": 5, "reason": "bounds"}),
        ("sync.evicted", 5.0, {"priority": 8, "reason": "bounds"}),
    ]
    (event,) = store.events("sync.evicted")
    assert event.detail["records"] == 7


def test_eviction_by_bytes(store: Store) -> None:
    _put(store, 4, 5, 1000.0, "big", size=5000)
    _put(store, 4, 5, 2000.0, "small", size=10)
    total_rows, total_bytes = outbox.totals(store)
    assert total_rows == 8
    small = (total_bytes - 4 * 5000) // 4
    bounds = OutboxBounds(max_rows=1000, max_bytes=total_bytes - 1, ttl_s={})
    report = outbox.enforce_bounds(store, bounds, now=3000.0)
    assert report.total == 1 and _ids(store)[0] == "results/big-1"  # the oldest one went
    assert outbox.totals(store)[1] <= total_bytes - 1
    assert small < 5000


def test_ttl_per_priority(store: Store) -> None:
    now = 100 * DAY
    _put(store, 2, 1, now - 20 * DAY, "urgent-old")  # TTL 30 days: kept
    _put(store, 2, 8, now - 8 * DAY, "tele-old")  # TTL 7 days: expired
    _put(store, 2, 8, now - 1 * DAY, "tele-new")  # kept
    report = outbox.enforce_bounds(store, SyncConfig().outbox, now=now)
    assert report.dropped == {("ttl", 8): 2}
    assert sorted(_ids(store)) == sorted(
        ["results/urgent-old-0", "results/urgent-old-1", "results/tele-new-0", "results/tele-new-1"]
    )


def test_nothing_over_bounds_writes_nothing(store: Store) -> None:
    _put(store, 3, 5, 1000.0, "r")
    report = outbox.enforce_bounds(store, OutboxBounds(max_rows=10, max_bytes=10**9, ttl_s={}), now=2000.0)
    assert report.total == 0
    assert store.query("SELECT count(*) FROM telemetry")[0][0] == 0
    assert store.events("sync.evicted") == []


def test_backoff_full_jitter_grows_to_the_cap() -> None:
    top = Backoff(base_s=1.0, cap_s=60.0, rng=lambda: 0.999999)
    waits = [top.failure() for _ in range(10)]
    assert waits[:6] == pytest.approx([1, 2, 4, 8, 16, 32], rel=1e-3)
    assert max(waits) <= 60.0
    bottom = Backoff(base_s=1.0, cap_s=60.0, rng=lambda: 0.0)
    assert bottom.failure() == 0.0  # full jitter: anything from zero
    top.success()
    assert top.failure() == pytest.approx(1.0, rel=1e-3)


def test_backoff_honours_retry_after_with_a_cap() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0, max_retry_after_s=600.0, rng=lambda: 0.5)
    assert b.failure(retry_after=30.0) == 30.0
    assert b.failure(retry_after=10**6) == 600.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
