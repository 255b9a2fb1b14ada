"""The sync client refuses plain HTTP when TLS is configured and never buffers an endless answer."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldbox.errors import SyncError
from fieldbox.store import FileKeyProvider, Store
from fieldbox.sync.client import MAX_RESPONSE_BYTES, SyncClient, tls_arguments
from fieldbox.sync.config import SyncConfig, TLSSettings


def test_http_url_with_tls_configured_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used\n")
    config = SyncConfig(server_url="http://fleet.example:8080", tls=TLSSettings(server_ca=ca))
    with pytest.raises(SyncError, match="not https://"):
        tls_arguments(config)
    pinned = SyncConfig(server_url="https://fleet.example", tls=TLSSettings(server_ca=ca))
    assert tls_arguments(pinned)[0] == str(ca)


class _Endless(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(2 * MAX_RESPONSE_BYTES // len(chunk)):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endless_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_answer_over_the_limit_is_not_read(tmp_path: Path, endless_server: str) -> None:
    with Store.open(tmp_path / "db", FileKeyProvider(tmp_path / "kek")) as store:
        store.kv_set("threshold", 0.5)
        client = SyncClient(store, SyncConfig(server_url=endless_server, device_id="dev-1", timeout_s=10))
        assert client.step() > 0
        assert client.stats.failures == 1
        assert f"longer than {MAX_RESPONSE_BYTES} bytes" in (client.stats.last_error or "")
