"""The sync client's operations: the same answers in process and through the real store writer's socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldbox import ipc
from fieldbox.errors import ClockSkewError, ProtocolError
from fieldbox.services.store import StoreWriter
from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.sync import configstore
from fieldbox.sync.access import LocalAccess, StoreSocketAccess
from fieldbox.sync.config import OutboxBounds
from fieldbox.sync.configdoc import Entry
from fieldbox.sync.hlc import Timestamp, wall_ms_now


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbx-"))  # short: a socket path has a 107-byte limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


@pytest.fixture
def remote(
    store: Store, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreSocketAccess]:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))  # the writer finds the same key file
    writer = StoreWriter(tmp_path / "store" / "fieldbox.db")
    writer.start()
    with ipc.serving(run_dir / "store.sock", writer.handle, name="store"):
        client = ipc.Client(run_dir / "store.sock", timeout=10, name="store")
        yield StoreSocketAccess(client)
        client.close()
    writer.stop()


def _put(store: Store, n: int, priority: int, created_at: float, prefix: str, size: int = 10) -> None:
    store.put_results(
        [
            ResultIn(f"{prefix}-{i}", "wf", "agent", f"i{i}", {"pad": "y" * size}, priority, created_at + i)
            for i in range(n)
        ]
    )


def test_pending_delete_and_totals_match_the_local_answers(store: Store, remote: StoreSocketAccess) -> None:
    _put(store, 20, 5, 1000.0, "a", size=300)
    _put(store, 5, 1, 2000.0, "urgent", size=0)
    local = LocalAccess(store)
    assert remote.totals() == local.totals()
    for limits in ((100, 10**9), (7, 10**9), (100, 2000), (1, 1)):
        assert remote.pending(*limits) == local.pending(*limits)
    head = remote.pending(3, 10**9)
    assert [r.id for r in head] == ["results/urgent-0", "results/urgent-1", "results/urgent-2"]
    assert remote.delete([r.id for r in head] + ["results/no-such"]) == 3
    assert remote.totals()[0] == 22 == local.totals()[0]


def test_bounds_and_drops_are_applied_and_counted_by_the_writer(
    store: Store, remote: StoreSocketAccess
) -> None:
    _put(store, 30, 8, 1000.0, "old", size=50)
    report = remote.enforce_bounds(OutboxBounds(max_rows=10, max_bytes=10**9, ttl_s={}))
    assert report.dropped == {("bounds", 8): 20} and report.dropped_bytes > 0
    assert remote.drop_unsendable([("results/old-29", 8, "refused by the server")]) == 1
    assert store.count_results() == 30  # results stay; only their outbox copies went
    events = [e.kind for e in store.events()]
    assert events.count("sync.evicted") == 2 and "sync.rejected" in events


def test_config_document_round_trips_through_the_writer(store: Store, remote: StoreSocketAccess) -> None:
    store.kv_set("threshold", 0.5)
    doc = remote.config_outgoing("dev-1")
    assert doc["threshold"].value == 0.5
    newer = Timestamp(doc["threshold"].hlc.wall_ms + 1, 0, "server")
    assert remote.config_incoming("dev-1", {"threshold": Entry(value=0.7, hlc=newer)}) == {"threshold"}
    assert configstore.load_document(store)["threshold"].value == 0.7


def test_errors_cross_the_socket_typed(remote: StoreSocketAccess) -> None:
    future = Timestamp(wall_ms_now() + 10 * 365 * 86400 * 1000, 0, "server")
    with pytest.raises(ClockSkewError):
        remote.config_incoming("dev-1", {"k": Entry(value=1, hlc=future)})
    with pytest.raises(ProtocolError):
        remote.ipc.call("outbox.drop", rows=[["id", "not-a-priority", "why"]])
    with pytest.raises(ProtocolError):
        remote.ipc.call("outbox.delete", ids=[1, 2])
