"""The device's path: the sync client reaches the outbox only through the store writer's socket.

Real SQLCipher store behind a real store writer, real ingest server on loopback,
a fault-injecting proxy between them, and the writer restarted mid-run: every
record arrives exactly once and the outbox ends empty.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_support import FaultProxy, free_port, open_store, put_results, running_server

from fieldbox import ipc
from fieldbox.services.store import StoreWriter
from fieldbox.sync.access import StoreSocketAccess
from fieldbox.sync.client import SyncClient
from fieldbox.sync.config import BackoffSettings, SyncConfig
from fieldbox_host.serve import IngestDB

pytestmark = pytest.mark.integration


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_every_record_once_through_the_writer_across_faults_and_a_writer_restart(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    store = open_store(tmp_path)
    put_results(store, 3000, priorities=[2, 5, 8])
    store.close()
    sock = run_dir / "store.sock"
    db_path = tmp_path / "store" / "fieldbox.db"
    server_db = tmp_path / "server.sqlite"
    port = free_port()
    with running_server(server_db, port=port):
        proxy = FaultProxy(port, seed=7, p_reset=0.1, p_truncate=0.1, p_delay=0.05, delay_s=0.05)
        config = SyncConfig(
            server_url=proxy.url, device_id="dev-w", idle_s=0.05, timeout_s=5.0, batch_max_records=200,
            backoff=BackoffSettings(base_s=0.02, cap_s=0.2),
        )  # fmt: skip
        access = StoreSocketAccess(ipc.Client(sock, timeout=10, name="store"))
        client = SyncClient(access, config)
        writer = StoreWriter(db_path)
        writer.start()
        server = ipc.Server(sock, writer.handle, name="store")
        server.start()
        stop = threading.Event()
        # Run the loop until about a third has gone, then stop the writer under it and restart it.
        while client.stats.records_acked < 1000:
            threading.Event().wait(client.step())
        server.shutdown()
        writer.stop()
        for _ in range(5):  # the writer is gone: the client waits, nothing is lost
            assert client.step() == config.idle_s
        assert "store writer" in (client.stats.last_error or "")
        writer = StoreWriter(db_path)
        writer.start()
        server = ipc.Server(sock, writer.handle, name="store")
        server.start()
        try:
            assert client.drain(timeout_s=180, stop=stop)
            assert access.totals() == (0, 0)
        finally:
            server.shutdown()
            writer.stop()
            access.ipc.close()
            proxy.close()
    db = IngestDB(server_db)
    try:
        ids = [row[2] for row in db.records()]
    finally:
        db.close()
    assert len(ids) == 3000 and set(ids) == {f"results/img-{i:06d}" for i in range(3000)}
