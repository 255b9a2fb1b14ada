"""The monitor (sampling and its event listener) writes through the real store writer's socket."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldbox import ipc
from fieldbox.errors import ProtocolError, ServiceUnavailableError
from fieldbox.monitor.events import EventForwarder, listen
from fieldbox.monitor.telemetry import DEFAULT_TIERS, TelemetryBatch, TelemetryBuffer, Tier
from fieldbox.services.clients import StoreClient
from fieldbox.services.store import StoreWriter
from fieldbox.store import FileKeyProvider, Store

START = 1_700_000_000.0
EXITED = (
    "ver:3.0 server:supervisor serial:1 pool:events poolserial:1 eventname:PROCESS_STATE_EXITED len:{n}\n"
)
EXITED_BODY = "processname:runner groupname:runner from_state:RUNNING expected:0 pid:42"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbx-"))  # short: a socket path has a 107-byte limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "fieldbox.db"


def _open(tmp_path: Path) -> Store:
    return Store.open(_db(tmp_path), FileKeyProvider(tmp_path / "keys" / "kek"))


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FIELDBOX_DATA -> tmp_path (the store writer finds its key-encryption key there)."""
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    return tmp_path


@pytest.fixture
def writer(data_env: Path, tmp_path: Path, run_dir: Path) -> Iterator[StoreWriter]:
    w = StoreWriter(_db(tmp_path))
    w.start()
    with ipc.serving(run_dir / "store.sock", w.handle, name="store"):
        yield w
    w.stop()


def test_telemetry_flush_goes_through_the_writer_in_one_commit(
    writer: StoreWriter, run_dir: Path, tmp_path: Path
) -> None:
    client = StoreClient(run_dir / "store.sock", timeout=10)
    client.add_event("process.exited", {"program": "runner"})
    buffer = TelemetryBuffer(client, sync_priority=8)
    buffer.add(START, [("cpu.percent", 12.5, None), ("temp.c", 48.0, {"zone": "cpu"})])
    assert buffer.flush(now=START + 60) == 2
    assert buffer.pending == []
    client.close()
    writer.stop()  # the acknowledgement came after COMMIT: a fresh connection sees everything
    with _open(tmp_path) as store:
        points = store.query("SELECT ts, metric, value, tags, resolution FROM telemetry ORDER BY id")
        assert points == [(START, "cpu.percent", 12.5, None, 0), (START, "temp.c", 48.0, '{"zone":"cpu"}', 0)]
        (topic, priority, payload) = store.query("SELECT topic, priority, payload FROM outbox")[0]
        assert (topic, priority) == ("telemetry", 8)
        assert b"process.exited" in payload and b"cpu.percent" in payload


def test_failed_flush_keeps_samples_until_the_writer_is_back(
    data_env: Path, tmp_path: Path, run_dir: Path
) -> None:
    client = StoreClient(run_dir / "store.sock", timeout=10)
    buffer = TelemetryBuffer(client, sync_priority=None)
    buffer.add(START, [("cpu.percent", 1.0, None)])
    with pytest.raises(ServiceUnavailableError):
        buffer.flush(now=START + 60)
    assert len(buffer.pending) == 1
    w = StoreWriter(_db(tmp_path))
    w.start()
    with ipc.serving(run_dir / "store.sock", w.handle, name="store"):
        buffer.add(START + 60, [("cpu.percent", 2.0, None)])
        assert buffer.flush(now=START + 120) == 2
    w.stop()
    with _open(tmp_path) as store:
        assert store.query("SELECT count(*) FROM telemetry")[0][0] == 2


def test_batch_round_trips_and_malformed_batches_are_refused(writer: StoreWriter, run_dir: Path) -> None:
    batch = TelemetryBatch(now=START, points=[(START, "m", 1.0, None)], dropped=3, downsample=True,
                           tiers=(Tier(0, 60.0), Tier(60, 600.0)), max_rows=10, max_events=5,
                           sync_priority=None)
    assert TelemetryBatch.from_json(batch.to_json()) == batch
    for bad in (b"[", b"[]", b'{"now": 1, "tiers": []}', b'{"now": "x", "tiers": [[0, 1]]}',
                b'{"now": 1, "tiers": [[0, 1]], "max_rows": 1, "max_events": 1, "points": [[1, "m", 1]]}'):
        with pytest.raises(ProtocolError, match="telemetry batch"):
            TelemetryBatch.from_json(bad)
    with ipc.Client(run_dir / "store.sock", timeout=10) as raw, pytest.raises(ProtocolError, match="tiers"):
        raw.call("telemetry", b'{"now": 1}')
    assert TelemetryBatch(now=0).tiers == DEFAULT_TIERS


def _feed(n: int) -> io.StringIO:
    return io.StringIO("".join(EXITED.format(n=len(EXITED_BODY)) + EXITED_BODY for _ in range(n)))


def test_listener_answers_at_once_while_the_store_is_down_then_delivers(
    data_env: Path, tmp_path: Path, run_dir: Path
) -> None:
    client = StoreClient(run_dir / "store.sock", timeout=10)
    forwarder = EventForwarder(client.add_event, retry_min_s=0.05, retry_max_s=0.2)
    out = io.StringIO()
    started = time.monotonic()
    assert listen(forwarder.record, stdin=_feed(3), stdout=out) == 3
    assert time.monotonic() - started < 2.0  # no waiting on the missing store
    assert out.getvalue() == "READY\nRESULT 2\nOK" * 3 + "READY\n"
    assert forwarder.pending == 3
    w = StoreWriter(_db(tmp_path))
    w.start()
    with ipc.serving(run_dir / "store.sock", w.handle, name="store"):
        deadline = time.monotonic() + 20
        while forwarder.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert forwarder.close() == 0
    w.stop()
    client.close()
    with _open(tmp_path) as store:
        events = store.events("process.exited")
    assert len(events) == 3 and {e.detail["program"] for e in events} == {"runner"}
    assert all(e.detail["pid"] == 42 and e.detail["expected"] is False for e in events)


def test_full_queue_and_stop_log_every_event_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    def down(kind: str, detail: dict[str, Any]) -> None:
        raise ServiceUnavailableError("store service not reachable")

    forwarder = EventForwarder(down, max_pending=2, retry_min_s=0.05, retry_max_s=0.1)
    with caplog.at_level(logging.INFO, logger="fieldbox.monitor.events"):
        for i in range(3):
            forwarder.record("process.fatal", {"program": f"p{i}"})
        assert forwarder.pending == 2 and forwarder.dropped == 1
        assert forwarder.close(timeout=0.2) == 2
    lost = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(lost) == 3
    assert all(f"'program': 'p{i}'" in "\n".join(lost) for i in range(3))


def test_monitor_process_with_its_event_listener_never_loads_sqlcipher() -> None:
    code = (
        "import sys\n"
        "import fieldbox.services.monitor\n"
        "assert 'fieldbox.monitor.events' in sys.modules\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlcipher3', 'cryptography')"
        " or m.startswith('fieldbox.store'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_forwarder_keeps_order_across_an_outage() -> None:
    got: list[str] = []
    up = threading.Event()

    def send(kind: str, detail: dict[str, Any]) -> None:
        if not up.is_set():
            raise ServiceUnavailableError("down")
        got.append(detail["program"])

    forwarder = EventForwarder(send, retry_min_s=0.02, retry_max_s=0.05)
    for i in range(5):
        forwarder.record("process.backoff", {"program": f"p{i}"})
    time.sleep(0.1)
    up.set()
    deadline = time.monotonic() + 10
    while forwarder.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert forwarder.close() == 0
    assert got == [f"p{i}" for i in range(5)]


def test_sync_service_loads_requests_only_when_it_sends() -> None:
    code = "import sys, fieldbox.services.sync\nprint('requests' in sys.modules, 'urllib3' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
