"""The device's config document in the store's kv table: local edits, remote merges, tombstones."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox.store import FileKeyProvider, Store
from fieldbox.sync import configstore
from fieldbox.sync.configdoc import Entry, live_values
from fieldbox.sync.hlc import Clock, Timestamp


class Wall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


def test_kv_set_is_a_local_edit_stamped_before_push(store: Store) -> None:
    clock = Clock("dev", now_ms=Wall(1_000))
    store.kv_set("threshold", 0.5)
    store.kv_set("local.secret", "stays")
    assert configstore.load_document(store) == {}  # not stamped yet
    assert configstore.stamp_local_edits(store, clock) == 1
    doc = configstore.load_document(store)
    assert live_values(doc) == {"threshold": 0.5}
    assert configstore.stamp_local_edits(store, clock) == 0
    store.kv_set("threshold", 0.6)  # edited again: stamped again, later
    assert configstore.stamp_local_edits(store, clock) == 1
    assert configstore.load_document(store)["threshold"].hlc > doc["threshold"].hlc


def test_apply_remote_later_wins_earlier_loses(store: Store) -> None:
    clock = Clock("dev", now_ms=Wall(5_000))
    configstore.set_local(store, clock, "a", 1)
    configstore.set_local(store, clock, "b", 2)
    remote = {
        "a": Entry(10, Timestamp(9_000, 0, "server")),  # later: wins
        "b": Entry(20, Timestamp(1_000, 0, "server")),  # earlier: loses
        "c": Entry(30, Timestamp(1_000, 0, "server")),  # new key
        "local.x": Entry(1, Timestamp(9_000, 0, "server")),  # never taken from a server
    }
    changed = configstore.apply_remote(store, clock, remote)
    assert changed == {"a", "c"}
    assert store.kv_items() == {"a": 10, "b": 2, "c": 30}
    # The clock observed the server's timestamp: the next local edit orders after it.
    assert configstore.set_local(store, clock, "a", 11) > Timestamp(9_000, 0, "server")


def test_remote_delete_removes_the_row_and_keeps_a_tombstone(store: Store) -> None:
    clock = Clock("dev", now_ms=Wall(5_000))
    configstore.set_local(store, clock, "gone", "v")
    tombstone = {"gone": Entry(None, Timestamp(6_000, 0, "server"), True)}
    changed = configstore.apply_remote(store, clock, tombstone)
    assert changed == {"gone"}
    assert store.kv_get("gone") is None
    doc = configstore.load_document(store)
    assert doc["gone"].deleted
    # A stale copy of the old value does not bring it back.
    assert configstore.apply_remote(store, clock, {"gone": Entry("v", Timestamp(5_500, 0, "dev"))}) == set()
    assert store.kv_get("gone") is None


def test_local_delete_then_later_remote_set_resurrects(store: Store) -> None:
    clock = Clock("dev", now_ms=Wall(5_000))
    configstore.set_local(store, clock, "k", 1)
    configstore.delete_local(store, clock, "k")
    assert store.kv_get("k") is None and configstore.load_document(store)["k"].deleted
    configstore.apply_remote(store, clock, {"k": Entry(2, Timestamp(7_000, 0, "server"))})
    assert store.kv_get("k") == 2


def test_clock_survives_a_restart(store: Store) -> None:
    clock = Clock("dev", now_ms=Wall(5_000))
    last = configstore.set_local(store, clock, "k", 1)
    again = configstore.load_clock(store, "dev")
    again.now_ms = Wall(1_000)  # the clock went back across the reboot
    assert again.tick() > last
