"""Config documents: the HLC and the per-key last-writer-wins rule, case by case."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldbox.errors import ClockSkewError, SyncError
from fieldbox.sync import configdoc
from fieldbox.sync.configdoc import Entry, live_values, merge
from fieldbox.sync.hlc import MAX_COUNTER, Clock, Timestamp


class FakeWall:
    """A wall clock the test drives (milliseconds)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_timestamp_text_sorts_like_the_tuple() -> None:
    stamps = [Timestamp(5, 0, "b"), Timestamp(5, 1, "a"), Timestamp(40, 0, "a"), Timestamp(5, 0, "a")]
    assert sorted(stamps) == [Timestamp.parse(s) for s in sorted(str(t) for t in stamps)]
    assert Timestamp.parse(str(stamps[0])) == stamps[0]
    for bad in ("", "1.2.x", "000000000000001.000000.", 5, "000000000000001.000000.a b"):
        with pytest.raises(SyncError):
            Timestamp.parse(bad)


def test_tick_is_monotonic_when_the_wall_clock_goes_back() -> None:
    wall = FakeWall(1_000_000)
    clock = Clock("dev", now_ms=wall)
    a = clock.tick()
    wall.ms -= 3_600_000  # NTP steps the clock back an hour
    b = clock.tick()
    c = clock.tick()
    assert a < b < c
    assert b.wall_ms == a.wall_ms and b.counter == 1 and c.counter == 2
    wall.ms = 2_000_000
    assert clock.tick() == Timestamp(2_000_000, 0, "dev")


def test_counter_overflow_moves_logical_time_on() -> None:
    clock = Clock("dev", last=Timestamp(10, MAX_COUNTER, "dev"), now_ms=FakeWall(0))
    assert clock.tick() == Timestamp(11, 0, "dev")


def test_observe_orders_later_local_edits_after_what_was_seen() -> None:
    device = Clock("dev", now_ms=FakeWall(1_000))  # device clock far behind
    server_ts = Timestamp(9_000_000, 3, "server")
    device.observe(server_ts)
    assert device.tick() > server_ts


def test_observe_refuses_a_clock_far_in_the_future() -> None:
    clock = Clock("dev", now_ms=FakeWall(1_000_000), max_ahead_ms=60_000)
    clock.observe(Timestamp(1_050_000, 0, "server"))  # 50 s ahead: accepted
    with pytest.raises(ClockSkewError, match="ahead"):
        clock.observe(Timestamp(1_000_000 + 3_600_000, 0, "server"))


def _e(value: object, wall: int, counter: int = 0, node: str = "dev", deleted: bool = False) -> Entry:
    return Entry(value=None if deleted else value, hlc=Timestamp(wall, counter, node), deleted=deleted)


def test_concurrent_edits_of_different_keys_both_survive() -> None:
    local = {"threshold": _e(0.5, 100)}
    remote = {"interval": _e(30, 90, node="server")}
    merged, changed = merge(local, remote)
    assert live_values(merged) == {"interval": 30, "threshold": 0.5}
    assert changed == {"interval"}


def test_concurrent_edits_of_one_key_later_wall_time_wins() -> None:
    device = {"threshold": _e(0.5, 100, node="dev")}
    server = {"threshold": _e(0.7, 200, node="server")}
    assert live_values(merge(device, server)[0]) == {"threshold": 0.7}
    assert live_values(merge(server, device)[0]) == {"threshold": 0.7}


def test_sequential_edit_wins_despite_clock_skew() -> None:
    # The server edits at its wall time 10,000,000. The device's clock is far behind (1,000)
    # but it has seen the server's edit; its later local edit must win.
    server_clock = Clock("server", now_ms=FakeWall(10_000_000))
    device_clock = Clock("dev", now_ms=FakeWall(1_000))
    server_doc = {"mode": Entry("fast", server_clock.tick())}
    device_doc, _ = merge({}, server_doc)
    for entry in server_doc.values():
        device_clock.observe(entry.hlc)
    device_doc["mode"] = Entry("accurate", device_clock.tick())
    merged_on_server, changed = merge(server_doc, device_doc)
    assert live_values(merged_on_server) == {"mode": "accurate"}
    assert changed == {"mode"}


def test_equal_timestamps_tie_break_on_node_id() -> None:
    a = {"k": _e("from-dev-a", 500, 2, node="dev-a")}
    b = {"k": _e("from-dev-b", 500, 2, node="dev-b")}
    assert live_values(merge(a, b)[0]) == {"k": "from-dev-b"}
    assert live_values(merge(b, a)[0]) == {"k": "from-dev-b"}


def test_identical_timestamps_with_different_content_still_converge() -> None:
    a = {"k": _e("x", 500, node="dev")}
    b = {"k": _e("y", 500, node="dev")}
    assert merge(a, b)[0] == merge(b, a)[0]


def test_delete_is_a_tombstone_that_competes_by_the_same_rule() -> None:
    live = {"k": _e("v", 100)}
    later_delete = {"k": _e(None, 200, node="server", deleted=True)}
    merged, changed = merge(live, later_delete)
    assert live_values(merged) == {} and merged["k"].deleted and changed == {"k"}
    # A stale copy of the old value does not resurrect it ...
    assert live_values(merge(merged, live)[0]) == {}
    # ... but a later set does.
    resurrect = {"k": _e("again", 300)}
    assert live_values(merge(merged, resurrect)[0]) == {"k": "again"}
    # An earlier delete loses to a later set.
    assert live_values(merge({"k": _e("v", 400)}, {"k": _e(None, 300, deleted=True)})[0]) == {"k": "v"}


def test_merge_is_idempotent_and_reports_no_change_twice() -> None:
    doc = {"a": _e(1, 1), "b": _e(None, 2, deleted=True)}
    merged, changed = merge(doc, doc)
    assert merged == doc and changed == set()


def test_wire_round_trip_and_strict_decoding() -> None:
    doc = {"a": _e({"nested": [1, 2]}, 1), "gone": _e(None, 2, deleted=True)}
    assert configdoc.decode(configdoc.encode(doc)) == doc
    bad_docs = [
        b"[]",
        b'{"entries": []}',
        b'{"entries": {}, "x": 1}',
        b'{"entries": {"bad key": {"value": 1, "hlc": "000000000000001.000000.a", "deleted": false}}}',
        b'{"entries": {"k": {"value": 1, "hlc": "yesterday", "deleted": false}}}',
        b'{"entries": {"k": {"value": 1, "hlc": "000000000000001.000000.a", "deleted": 0}}}',
        b'{"entries": {"k": {"value": NaN, "hlc": "000000000000001.000000.a", "deleted": false}}}',
        b"\xff",
    ]
    for data in bad_docs:
        with pytest.raises(SyncError):
            configdoc.decode(data)


_entries = st.builds(
    lambda v, w, c, n, d: Entry(None if d else v, Timestamp(w, c, n), d),
    st.one_of(st.integers(-5, 5), st.text(max_size=3)),
    st.integers(0, 5),
    st.integers(0, 2),
    st.sampled_from(["dev-a", "dev-b", "server"]),
    st.booleans(),
)
_docs = st.dictionaries(st.sampled_from(["a", "b", "c"]), _entries, max_size=3)


@settings(max_examples=300, deadline=None)
@given(_docs, _docs, _docs)
def test_merge_is_a_semilattice(x: dict[str, Entry], y: dict[str, Entry], z: dict[str, Entry]) -> None:
    def m(p: dict[str, Entry], q: dict[str, Entry]) -> dict[str, Entry]:
        return merge(p, q)[0]

    assert m(x, y) == m(y, x)
    assert m(m(x, y), z) == m(x, m(y, z))
    assert m(x, x) == x
    # Every order of delivering three copies converges to one document.
    results = {configdoc.encode(m(m(p, q), r)) for p, q, r in itertools.permutations([x, y, z])}
    assert len(results) == 1
