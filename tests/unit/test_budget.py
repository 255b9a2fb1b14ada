"""The /data budget: its file, the full-card pause with hysteresis, pruning synced results (real
SQLCipher store) and pruning the files the inbox keeps, and the outbox cap by disk size."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from fieldbox.budget import DAY, DataBudget, InboxBudget, MiB, ResultsBudget, Space, SpaceGuard, load_budget
from fieldbox.errors import BusyError, ConfigError
from fieldbox.services.store import StoreWriter
from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.store.prune import PRUNED_EVENT, prune_synced
from fieldbox.sync import outbox
from fieldbox.sync.config import OutboxBounds
from fieldbox.workflows.engine import WorkflowEngine
from fieldbox.workflows.inbox import prune_kept
from fieldbox.workflows.spec import parse_workflow
from fieldbox.workflows.triggers import submit_and_wait

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- the file


def test_the_shipped_budget_file_is_the_defaults() -> None:
    assert load_budget(REPO / "rootfs-overlay" / "etc" / "fieldbox" / "budget.toml") == DataBudget()


def test_a_missing_file_means_defaults_and_bad_keys_are_named(tmp_path: Path) -> None:
    assert load_budget(tmp_path / "absent.toml") == DataBudget()
    bad = tmp_path / "budget.toml"
    bad.write_text("[inbox]\nkeep_don = true\n")
    with pytest.raises(ConfigError, match="keep_don"):
        load_budget(bad)
    bad.write_text("reserve_fraction = 1.5\n")
    with pytest.raises(ConfigError, match="reserve_fraction"):
        load_budget(bad)
    bad.write_text("[results]\nmax_synced_rows = 0\n")
    with pytest.raises(ConfigError, match="max_synced_rows"):
        load_budget(bad)


# ----------------------------------------------------------------- the full-card pause


class FakeDisk:
    """A filesystem whose free space the test sets (the guard's only input)."""

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free

    def __call__(self, path: Path) -> Space:
        return Space(total=self.total, free=self.free)


def test_pause_below_the_reserve_resume_only_above_the_margin(tmp_path: Path) -> None:
    disk = FakeDisk(total=256 * MiB, free=100 * MiB)
    changes: list[tuple[bool, str]] = []
    guard = SpaceGuard(
        tmp_path, DataBudget(), every_s=0.0, space=disk, on_change=lambda p, r: changes.append((p, r))
    )
    assert guard.reserve(256 * MiB) == 32 * MiB  # reserve_bytes beats 5 % of 256 MiB
    assert guard.reserve(4096 * MiB) == int(0.05 * 4096 * MiB)
    assert guard.paused() == ""
    disk.free = 31 * MiB
    reason = guard.paused()
    assert "31 MiB free" in reason and "32 MiB reserve" in reason
    disk.free = 35 * MiB  # above the reserve, not above the margin: still paused (no flapping)
    assert guard.paused() == reason
    disk.free = 40 * MiB
    assert guard.paused() == ""
    assert guard.pauses == 1
    assert [p for p, _ in changes] == [True, False]


def test_a_statvfs_error_keeps_the_last_answer(tmp_path: Path) -> None:
    calls = {"n": 0}

    def failing(path: Path) -> Space:
        calls["n"] += 1
        if calls["n"] == 1:
            return Space(total=256 * MiB, free=1 * MiB)
        raise OSError(5, "Input/output error")

    guard = SpaceGuard(tmp_path, DataBudget(), every_s=0.0, space=failing)
    reason = guard.paused()
    assert reason and guard.paused() == reason


def engine_for(guard: SpaceGuard) -> WorkflowEngine:
    spec = parse_workflow(
        {"name": "snap", "trigger": {"socket": {}}, "steps": [{"agent": "a"}], "sinks": {"log": {}},
         "queue": {"size": 2, "workers": 1}},
        "snap.toml",
    )
    return WorkflowEngine(spec, runner_factory=lambda: None, store_factory=lambda: None,  # type: ignore[arg-type,return-value]
                          space=guard)


def test_a_paused_engine_admits_nothing_and_says_why(tmp_path: Path) -> None:
    disk = FakeDisk(total=256 * MiB, free=1 * MiB)
    engine = engine_for(SpaceGuard(tmp_path, DataBudget(), every_s=0.0, space=disk))
    assert not engine.admit(block=False)
    assert not engine.admit(block=True, timeout=0.3)
    assert engine.status()["paused"].startswith(str(tmp_path))
    with pytest.raises(BusyError, match="paused: .*1 MiB free"):
        submit_and_wait(engine, "x.jpg", b"x", timeout=1.0)
    # A blocked caller is let in once the space returns.
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(engine.admit(block=True)))
    waiter.start()
    disk.free = 200 * MiB
    waiter.join(5)
    assert got == [True] and engine.status()["paused"] == ""
    engine.stop.set()


# ------------------------------------------------------------- pruning synced results


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


def put(store: Store, n: int, created_at: float, prefix: str) -> list[str]:
    store.put_results(
        [ResultIn(f"{prefix}-{i}", "wf", "agent", f"i{i}", {"n": i}, 5, created_at + i) for i in range(n)]
    )
    return [f"{prefix}-{i}" for i in range(n)]


def keys(store: Store) -> set[str]:
    return {k for (k,) in store.query("SELECT key FROM results")}


def test_unsynced_results_are_never_pruned(store: Store) -> None:
    put(store, 5, 1000.0, "old")
    report = prune_synced(store, ResultsBudget(keep_synced_s=1.0, max_synced_rows=1), now=10 * DAY)
    assert report.total == 0 and len(keys(store)) == 5
    assert store.query("SELECT count(*) FROM events WHERE kind = ?", (PRUNED_EVENT,)) == [(0,)]


def test_synced_results_go_by_age_then_by_count_newest_kept_and_counted(store: Store) -> None:
    now = 100 * DAY
    old = put(store, 4, now - 9 * DAY, "old")
    recent = put(store, 6, now - 1 * DAY, "recent")
    waiting = put(store, 3, now - 30 * DAY, "waiting")  # still in the outbox: stays, however old
    assert outbox.delete(store, [f"results/{k}" for k in old + recent]) == 10
    report = prune_synced(store, ResultsBudget(keep_synced_s=7 * DAY, max_synced_rows=4), now=now)
    assert report.pruned == {"age": 4, "rows": 2}
    assert keys(store) == set(recent[2:]) | set(waiting)
    tele = store.query("SELECT metric, value, tags FROM telemetry ORDER BY id")
    assert [(m, v, json.loads(t)) for m, v, t in tele] == [
        (PRUNED_EVENT, 4.0, {"reason": "age"}),
        (PRUNED_EVENT, 2.0, {"reason": "rows"}),
    ]
    (detail,) = store.query("SELECT detail FROM events WHERE kind = ?", (PRUNED_EVENT,))[0]
    assert json.loads(detail) == {"results": 6, "by_reason": {"age": 4, "rows": 2}}
    # Within the budget now: a second pass prunes nothing.
    assert prune_synced(store, ResultsBudget(keep_synced_s=7 * DAY, max_synced_rows=4), now=now).total == 0


def test_the_store_writer_prunes_between_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    with Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek")) as s:
        synced = put(s, 3, time.time() - 2 * DAY, "synced")
        put(s, 2, time.time() - 2 * DAY, "queued")
        outbox.delete(s, [f"results/{k}" for k in synced])
    budget = DataBudget(prune_interval_s=0.2, results=ResultsBudget(keep_synced_s=DAY))
    writer = StoreWriter(tmp_path / "store" / "fieldbox.db", budget)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while writer.pruned < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.pruned == 3
    finally:
        writer.stop()
    with Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek")) as s:
        assert keys(s) == {"queued-0", "queued-1"}


# ------------------------------------------------------------ pruning kept inbox files


def write(directory: Path, name: str, size: int, mtime: float, reason: str | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"x" * size)
    os.utime(directory / name, (mtime, mtime))
    if reason is not None:
        (directory / f"{name}.reason").write_text(reason)
        os.utime(directory / f"{name}.reason", (mtime, mtime))


def test_prune_kept_oldest_first_by_age_then_bytes_reasons_go_along(tmp_path: Path) -> None:
    now = 1_000_000.0
    d = tmp_path / "failed"
    write(d, "ancient.jpg", 100, now - 40 * DAY, reason="bad\n")
    write(d, "a.jpg", 400, now - 3000)
    write(d, "b.jpg", 400, now - 2000, reason="truncated\n")
    write(d, "c.jpg", 400, now - 1000)
    (d / "subdir").mkdir()
    files, size = prune_kept(d, max_bytes=1000, max_age_s=30 * DAY, now=now)
    # ancient (age) and its reason; then a.jpg (oldest) brings the rest under 1000 bytes.
    assert sorted(p.name for p in d.iterdir()) == ["b.jpg", "b.jpg.reason", "c.jpg", "subdir"]
    assert files == 2 and size == 100 + len("bad\n") + 400  # items, each with its reason
    assert prune_kept(d, max_bytes=1000, max_age_s=30 * DAY, now=now) == (0, 0)


def test_prune_kept_of_a_missing_directory_is_nothing(tmp_path: Path) -> None:
    assert prune_kept(tmp_path / "nope", max_bytes=1, max_age_s=1.0, now=0.0) == (0, 0)


def test_an_inbox_budget_that_keeps_done_copies_bounds_them_too() -> None:
    rules = InboxBudget(keep_done=True)
    assert rules.done_max_bytes == 64 * MiB and rules.done_max_age_s == 7 * DAY


# -------------------------------------------------------------- the outbox and the disk


def test_outbox_bytes_are_capped_by_the_partition_size() -> None:
    bounds = OutboxBounds(max_bytes=64 * MiB, max_disk_fraction=0.2)
    assert bounds.for_disk(100 * MiB).max_bytes == 20 * MiB
    assert bounds.for_disk(4096 * MiB).max_bytes == 64 * MiB
