"""End to end over loopback HTTP: real SQLCipher store, real sync client, real ingest server, real faults."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sync_support import FaultProxy, free_port, open_store, put_results, running_server

from fieldbox.sync import outbox
from fieldbox.sync.backoff import Backoff
from fieldbox.sync.client import SyncClient
from fieldbox.sync.config import BackoffSettings, OutboxBounds, SyncConfig
from fieldbox_host.serve import IngestDB

pytestmark = pytest.mark.integration


def _config(url: str, **kw: object) -> SyncConfig:
    base = {
        "server_url": url,
        "device_id": "dev-1",
        "idle_s": 0.05,
        "timeout_s": 5.0,
        "batch_max_records": 500,
        "backoff": BackoffSettings(base_s=0.02, cap_s=0.3),
    }
    base.update(kw)
    return SyncConfig(**base)  # type: ignore[arg-type]


def _server_rows(db_path: Path) -> list[tuple[int, str, str, str, int, bytes]]:
    db = IngestDB(db_path)
    try:
        return db.records()
    finally:
        db.close()


def test_ten_thousand_while_down_then_all_exactly_once_urgent_first(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put_results(store, 10_000, priorities=[7, 2, 5, 0, 9])
    port = free_port()
    client = SyncClient(store, _config(f"http://127.0.0.1:{port}"))
    # Server down: attempts fail (connection refused), back off, lose nothing.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(client.step())
    assert client.stats.failures >= 2 and client.stats.records_acked == 0
    assert outbox.totals(store)[0] == 10_000
    server_db = tmp_path / "server.sqlite"
    with running_server(server_db, port=port):
        assert client.drain(timeout_s=120)
    rows = _server_rows(server_db)
    ids = [r[2] for r in rows]
    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    assert set(ids) == {f"results/img-{i:06d}" for i in range(10_000)}
    priorities = [r[4] for r in rows]  # in arrival order
    assert priorities == sorted(priorities), "a less urgent record arrived before a more urgent one"
    payload = json.loads(rows[0][5])
    assert payload["result"]["faces"][0]["score"] == 0.91
    assert outbox.totals(store) == (0, 0)
    store.close()


def test_exactly_once_through_resets_truncations_and_delays(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put_results(store, 3000, priorities=[1, 5, 8])
    server_db = tmp_path / "server.sqlite"
    with running_server(server_db) as server:
        proxy = FaultProxy(server.server_address[1], seed=7, p_reset=0.15, p_truncate=0.15, p_delay=0.1)
        try:
            client = SyncClient(store, _config(proxy.url, batch_max_records=100))
            assert client.drain(timeout_s=180)
        finally:
            proxy.close()
        devices = {d.device: d for d in server.db.devices()}
    rows = _server_rows(server_db)
    ids = [r[2] for r in rows]
    assert len(ids) == 3000 and len(set(ids)) == 3000
    # The faults really happened, and some batches really arrived twice (answer lost after commit).
    assert proxy.counts["reset"] > 0 and proxy.counts["truncate"] > 0 and proxy.counts["delay"] > 0
    assert client.stats.failures > 0
    assert devices["dev-1"].duplicates > 0
    assert outbox.totals(store)[0] == 0
    store.close()


def test_server_errors_and_429_back_off_and_recover(tmp_path: Path) -> None:
    """A server that answers 503 then 429 (Retry-After) then works: nothing lost, waits honoured."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    store = open_store(tmp_path)
    put_results(store, 50)
    server_db = tmp_path / "server.sqlite"
    with running_server(server_db) as real:
        answers = iter([(503, None), (429, "1"), (500, None)])

        class Flaky(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    status, retry_after = next(answers)
                except StopIteration:
                    import requests

                    r = requests.post(real.url + self.path, data=body, timeout=5)
                    status, retry_after, out = r.status_code, None, r.content
                else:
                    out = b'{"error":"busy"}'
                self.send_response(status)
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        flaky = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
        threading.Thread(target=flaky.serve_forever, daemon=True).start()
        try:
            client = SyncClient(
                store,
                _config(f"http://127.0.0.1:{flaky.server_address[1]}"),
                backoff=Backoff(base_s=0.01, cap_s=0.05, rng=lambda: 1.0),
            )
            t0 = time.monotonic()
            assert client.drain(timeout_s=30)
            elapsed = time.monotonic() - t0
        finally:
            flaky.shutdown()
            flaky.server_close()
    assert client.stats.statuses.get(503) == 1 and client.stats.statuses.get(429) == 1
    assert elapsed >= 1.0, "Retry-After: 1 was not honoured"
    assert len(_server_rows(server_db)) == 50
    store.close()


def test_outbox_past_its_bound_evicts_by_the_rule_and_reports_it(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put_results(store, 600, priorities=[1], prefix="urgent")
    put_results(store, 600, priorities=[8], prefix="telemetry-like")
    put_results(store, 600, priorities=[5], prefix="normal")
    bounds = OutboxBounds(max_rows=1000, max_bytes=10**9)
    client = SyncClient(store, _config(f"http://127.0.0.1:{free_port()}", outbox=bounds))
    client.step()  # server down: the bounds are enforced anyway
    assert outbox.totals(store)[0] == 1000
    assert client.stats.evicted == 800
    # Reported: an event and telemetry rows (which the monitor syncs).
    (event,) = store.events("sync.evicted")
    assert event.detail["by_reason_priority"] == {"bounds/5": 200, "bounds/8": 600}
    tele = store.query("SELECT value, tags FROM telemetry WHERE metric = 'sync.evicted' ORDER BY value")
    assert [(v, json.loads(t)["priority"]) for v, t in tele] == [(200.0, 5), (600.0, 8)]
    server_db = tmp_path / "server.sqlite"
    with running_server(server_db) as server:
        client.config = _config(server.url, outbox=bounds)
        client._next_attempt = 0.0
        assert client.drain(timeout_s=60)
    ids = {r[2] for r in _server_rows(server_db)}
    assert ids == {f"results/urgent-{i:06d}" for i in range(600)} | {
        f"results/normal-{i:06d}" for i in range(200, 600)  # the 200 OLDEST normal ones went
    }
    store.close()


def test_config_documents_both_ways_with_conflicts(tmp_path: Path) -> None:
    import requests

    store = open_store(tmp_path)
    server_db = tmp_path / "server.sqlite"
    with running_server(server_db) as server:
        client = SyncClient(store, _config(server.url, config_interval_s=3600))
        # The operator sets two keys; the device sets one of them too, later, and one of its own.
        r = requests.put(
            f"{server.url}/v1/devices/dev-1/config",
            json={"set": {"monitor.interval_s": 30, "threshold": 0.7}},
            timeout=5,
        )
        assert r.status_code == 200
        time.sleep(0.01)
        store.kv_set("threshold", 0.55)  # later local edit of the same key: wins
        store.kv_set("camera.fps", 5)  # a key only the device has
        store.kv_set("local.debug", True)  # never leaves the device
        client.sync_config()
        assert store.kv_items() == {
            "monitor.interval_s": 30,
            "threshold": 0.55,
            "camera.fps": 5,
            "local.debug": True,
        }
        server_doc = requests.get(f"{server.url}/v1/devices/dev-1/config", timeout=5).json()["entries"]
        assert {k: v["value"] for k, v in server_doc.items()} == {
            "monitor.interval_s": 30,
            "threshold": 0.55,
            "camera.fps": 5,
        }
        # The operator deletes a key after that: the delete reaches the device.
        requests.put(f"{server.url}/v1/devices/dev-1/config", json={"delete": ["camera.fps"]}, timeout=5)
        assert client.sync_config() == {"camera.fps"}
        assert "camera.fps" not in store.kv_items()
        # A push with a timestamp a week in the future is refused (clock skew), nothing changes.
        bad = {"entries": {"threshold": {"value": 9, "hlc": f"{int(time.time() * 1000) + 7 * 86400_000:015d}"
                                         f".000000.dev-1", "deleted": False}}}
        r = requests.post(f"{server.url}/v1/devices/dev-1/config", data=json.dumps(bad), timeout=5)
        assert r.status_code == 422 and "ahead" in r.json()["error"]
    store.close()
