"""The store's public API on a real SQLCipher database: idempotency, the outbox, reads, kv, telemetry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fieldbox.errors import StoreError
from fieldbox.store import (
    RESULTS_TOPIC,
    SCHEMA_VERSION,
    FileKeyProvider,
    ResultIn,
    Store,
    TelemetryPoint,
    default_db_path,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


def test_default_paths_follow_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    assert default_db_path() == tmp_path / "store" / "fieldbox.db"
    assert FileKeyProvider().path == tmp_path / "keys" / "kek"
    with Store.open(default_db_path()) as s:  # keys=None: the file provider under the data dir
        assert s.put_result("a", "wf", "agent", "item", {"x": 1})
    assert (tmp_path / "keys" / "kek").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "store" / "fieldbox.db.key").stat().st_mode & 0o777 == 0o600


def test_put_result_is_idempotent_by_key(store: Store) -> None:
    assert store.put_result("img-1", "faces", "blazeface", "inbox/1.jpg", {"faces": 2}, priority=2) is True
    assert store.put_result("img-1", "faces", "blazeface", "inbox/1.jpg", {"faces": 99}, priority=0) is False
    assert store.count_results() == 1
    (row,) = store.results()
    assert (row.key, row.workflow, row.agent, row.item, row.priority) == (
        "img-1",
        "faces",
        "blazeface",
        "inbox/1.jpg",
        2,
    )
    assert row.result == {"faces": 2}  # the second write changed nothing
    assert store.query("SELECT count(*) FROM outbox")[0][0] == 1


def test_put_results_reports_each_row_and_skips_duplicates(store: Store) -> None:
    store.put_result("old", "wf", "a", "i", {})
    flags = store.put_results(
        [
            ResultIn("n1", "wf", "a", "i1", {"v": 1}),
            ResultIn("old", "wf", "a", "i", {"v": 2}),
            ResultIn("n2", "wf", "a", "i2", {"v": 3}, priority=0),
            ResultIn("n1", "wf", "a", "i1", {"v": 4}),  # repeats an earlier row of the batch
        ]
    )
    assert flags == [True, False, True, False]
    assert store.count_results() == 3
    assert store.put_results([]) == []
    assert {r.key: r.result for r in store.results()} == {"old": {}, "n1": {"v": 1}, "n2": {"v": 3}}


def test_every_stored_result_has_its_outbox_record(store: Store) -> None:
    store.put_results(
        [ResultIn(f"k{i}", "wf", "agent", f"item{i}", {"i": i}, priority=i % 10) for i in range(25)]
    )
    store.put_result("single", "wf2", "agent", "x", {"é": "ünïcode"}, priority=1)
    rows = store.query("SELECT topic, record_id, priority, created_at, expires_at, size, payload FROM outbox")
    assert len(rows) == store.count_results() == 26
    by_key = {r.key: r for r in store.results(limit=100)}
    for topic, record_id, priority, created_at, expires_at, size, payload in rows:
        assert topic == RESULTS_TOPIC
        record = json.loads(payload)
        stored = by_key[record["key"]]
        assert record_id == f"results/{stored.key}"
        assert record == {
            "key": stored.key,
            "workflow": stored.workflow,
            "agent": stored.agent,
            "item": stored.item,
            "created_at": stored.created_at,
            "priority": stored.priority,
            "result": stored.result,
        }
        assert (priority, created_at, expires_at, size) == (
            stored.priority,
            stored.created_at,
            None,
            len(payload),
        )


def test_results_paging_and_filter(store: Store) -> None:
    store.put_results(
        [ResultIn(f"k{i:02d}", "even" if i % 2 == 0 else "odd", "a", "i", {"i": i}) for i in range(10)]
    )
    first = store.results(limit=4)
    assert [r.result["i"] for r in first] == [0, 1, 2, 3]
    nxt = store.results(limit=4, after_id=first[-1].id)
    assert [r.result["i"] for r in nxt] == [4, 5, 6, 7]
    assert [r.result["i"] for r in store.results(workflow="odd")] == [1, 3, 5, 7, 9]
    assert store.count_results("even") == 5
    assert store.count_results("nope") == 0
    assert store.has_result("k03") and not store.has_result("k99")


def test_agent_output_with_numpy_values_is_stored(store: Store) -> None:
    result = {"score": np.float32(0.5), "boxes": np.array([[1, 2], [3, 4]], dtype=np.int64)}
    assert store.put_result("np", "wf", "a", "i", result)
    assert store.results()[0].result == {"score": 0.5, "boxes": [[1, 2], [3, 4]]}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (ResultIn("", "wf", "a", "i", {}), "key must be a non-empty string"),
        (ResultIn("k", "wf", "a", "i", {}, priority=10), "priority must be an integer 0..9"),
        (ResultIn("k", "wf", "a", "i", {}, priority=True), "priority must be an integer 0..9"),
        (ResultIn("k", "wf", None, "i", {}), "agent must be a string"),  # type: ignore[arg-type]
        (ResultIn("k", "wf", "a", "i", [1, 2]), "must be a mapping"),  # type: ignore[arg-type]
        (ResultIn("k", "wf", "a", "i", {"x": math.nan}), "cannot be stored as JSON"),
        (ResultIn("k", "wf", "a", "i", {"x": object()}), "cannot be stored as JSON"),
        (ResultIn("k", "wf", "a", "i", {}, created_at=math.inf), "created_at must be a finite number"),
    ],
)
def test_bad_results_are_refused_and_nothing_is_written(store: Store, row: ResultIn, message: str) -> None:
    store.put_result("good", "wf", "a", "i", {})
    with pytest.raises(StoreError, match=message):
        store.put_results([ResultIn("other", "wf", "a", "i", {}), row])
    assert store.count_results() == 1
    assert store.query("SELECT count(*) FROM outbox")[0][0] == 1


def test_kv_round_trips_json_and_counts_versions(store: Store) -> None:
    assert store.kv_get("missing") is None
    assert store.kv_get("missing", {"d": 1}) == {"d": 1}
    store.kv_set("sync", {"url": "https://x", "batch": 100})
    store.kv_set("sync", {"url": "https://y", "batch": 50})
    store.kv_set("flag", True)
    assert store.kv_get("sync") == {"url": "https://y", "batch": 50}
    assert store.kv_items() == {"flag": True, "sync": {"url": "https://y", "batch": 50}}
    ((version, hlc),) = store.query("SELECT version, hlc FROM kv WHERE key = 'sync'")
    assert version == 2 and hlc is None
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        store.kv_set("bad", {1, 2})


def test_telemetry_and_events(store: Store) -> None:
    assert store.add_telemetry([TelemetryPoint(1.0, "cpu", 12.5, {"core": "0"}), (2.0, "mem", 300.0)]) == 2
    assert store.add_telemetry([]) == 0
    rows = store.query("SELECT ts, metric, value, tags, resolution FROM telemetry ORDER BY ts")
    assert rows == [(1.0, "cpu", 12.5, '{"core":"0"}', 0), (2.0, "mem", 300.0, None, 0)]
    first = store.add_event("program-exit", {"name": "runner", "code": -9})
    second = store.add_event("boot")
    assert second > first
    events = store.events()
    assert [(e.kind, e.detail) for e in events] == [
        ("boot", None),
        ("program-exit", {"name": "runner", "code": -9}),
    ]
    assert [e.kind for e in store.events(kind="boot")] == ["boot"]


def test_info_reports_schema_counts_files_and_key_caveat(store: Store) -> None:
    store.put_result("a", "wf", "a", "i", {})
    info = store.info()
    assert info.schema_version == info.code_schema_version == SCHEMA_VERSION
    assert info.counts["results"] == 1 and info.counts["outbox"] == 1
    assert "fieldbox.db" in info.file_sizes and "fieldbox.db.key" in info.file_sizes
    assert info.key_provider.startswith("file ")
    assert (
        info.key_warning is not None
        and "protects nothing against someone holding the card" in info.key_warning
    )
    assert info.page_size == 4096
    store.check()  # an intact store passes


def test_closed_store_says_so(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", FileKeyProvider(tmp_path / "kek")) as s:
        s.put_result("a", "wf", "a", "i", {})
    s.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        s.count_results()


def test_a_failed_transaction_rolls_back_whole(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction("test") as conn:
        conn.execute("INSERT INTO events (ts, kind) VALUES (1, 'x')")
        raise Boom
    assert store.events() == []
    assert not store.conn.in_transaction
