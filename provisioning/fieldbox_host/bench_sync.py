"""Benchmark section "sync": results per second synced over loopback, and bytes on the wire per result.

Ours: :class:`fieldbox.sync.client.SyncClient` draining a real SQLCipher
outbox in compressed batches to ``fieldbox serve``'s batch endpoint. Baseline,
the naive design: for each outbox row, one JSON ``POST /v1/records`` (a
keep-alive session, which flatters the baseline), then delete that row. Both
send the same results from the same kind of store to the same server, back to
back in one run. Bytes on the wire are counted by a TCP relay on loopback
(both directions, HTTP headers included); the rate is measured without it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox.sync import outbox
from fieldbox.sync.client import SyncClient
from fieldbox.sync.config import SyncConfig
from fieldbox_host.bench import Row
from fieldbox_host.serve import IngestDB, IngestServer

N_OURS = 20_000
N_NAIVE = 2_000


class CountingRelay:
    """A loopback TCP relay that counts the bytes it carries in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        peers = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    with self._lock:
                        self.bytes += len(data)
                    peers[sock].sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        """Stop relaying."""
        self._stop.set()
        self._listener.close()


@contextlib.contextmanager
def _server(path: Path) -> Iterator[IngestServer]:
    db = IngestDB(path)
    server = IngestServer(("127.0.0.1", 0), db)
    server.serve_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        db.close()


def _store(directory: Path, n: int) -> Store:
    store = Store.open(directory / "store" / "fieldbox.db", FileKeyProvider(directory / "keys" / "kek"))
    rows = [
        ResultIn(
            f"cam0/{i:07d}.jpg",
            "faces",
            "blazeface",
            f"inbox/cam0/{i:07d}.jpg",
            {"faces": [{"score": round(0.5 + (i % 50) / 100, 2), "box": [0.12, 0.2, 0.33, 0.41]}],
             "latency_ms": round(0.6 + (i % 7) / 10, 1)},
            i % 10,
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        store.put_results(rows[start : start + 1000])
    return store


def _ours(work: Path, n: int, relay: bool) -> tuple[float, int]:
    store = _store(work, n)
    try:
        with _server(work / "server.sqlite") as server:
            counter = CountingRelay(server.server_address[1]) if relay else None
            url = f"http://127.0.0.1:{counter.port}" if counter else server.url
            client = SyncClient(store, SyncConfig(server_url=url, device_id="bench", idle_s=0.01))
            start = time.perf_counter()
            if not client.drain(timeout_s=300):
                raise RuntimeError("sync did not drain the outbox")
            elapsed = time.perf_counter() - start
            if counter:
                time.sleep(0.1)
                counter.close()
            if len(server.db.records()) != n:
                raise RuntimeError("server did not receive every record")
            return elapsed, counter.bytes if counter else 0
    finally:
        store.close()


def _naive(work: Path, n: int, relay: bool) -> tuple[float, int]:
    store = _store(work, n)
    try:
        with _server(work / "server.sqlite") as server:
            counter = CountingRelay(server.server_address[1]) if relay else None
            url = f"http://127.0.0.1:{counter.port}" if counter else server.url
            session = requests.Session()
            start = time.perf_counter()
            while True:
                rows = outbox.pending(store, 1, 10**9)
                if not rows:
                    break
                rec = rows[0].record
                body = {
                    "device": "bench",
                    "id": rec.id,
                    "topic": rec.topic,
                    "priority": rec.priority,
                    "created_at": rec.created_at,
                    "payload_b64": base64.b64encode(rec.payload).decode(),
                }
                response = session.post(url + "/v1/records", json=body, timeout=30)
                response.raise_for_status()
                outbox.delete(store, json.loads(response.content)["accepted"])
            elapsed = time.perf_counter() - start
            if counter:
                time.sleep(0.1)
                counter.close()
            if len(server.db.records()) != n:
                raise RuntimeError("server did not receive every record")
            return elapsed, counter.bytes if counter else 0
    finally:
        store.close()


def bench() -> list[Row]:
    """The "sync" rows: rate and bytes per result, ours vs one JSON POST per result."""
    with tempfile.TemporaryDirectory(prefix="fieldbox-bench-sync-") as tmp:
        root = Path(tmp)
        ours_s, _ = _ours(root / "ours-rate", N_OURS, relay=False)
        naive_s, _ = _naive(root / "naive-rate", N_NAIVE, relay=False)
        _, ours_bytes = _ours(root / "ours-bytes", N_NAIVE, relay=True)
        _, naive_bytes = _naive(root / "naive-bytes", N_NAIVE, relay=True)
    ours_rate = N_OURS / ours_s
    naive_rate = N_NAIVE / naive_s
    ours_bpr = ours_bytes / N_NAIVE
    naive_bpr = naive_bytes / N_NAIVE
    return [
        Row(
            "sync",
            "results synced per second over loopback",
            ours_rate,
            "results/s",
            baseline=naive_rate,
            baseline_name="one JSON POST per result",
            target=">= 20x",
            met=ours_rate >= 20 * naive_rate,
            note=f"{N_OURS} results, zstd batches of <= 1000, SQLCipher outbox",
        ),
        Row(
            "sync",
            "bytes on the wire per result (both directions, headers included)",
            ours_bpr,
            "B",
            baseline=naive_bpr,
            baseline_name="one JSON POST per result",
            target="<= 1/5",
            met=ours_bpr * 5 <= naive_bpr,
            note=f"{N_NAIVE} results each",
        ),
    ]
