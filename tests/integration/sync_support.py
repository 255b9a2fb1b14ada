"""Helpers for the sync integration tests: a real store, a real server, a TCP fault-injecting proxy."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fieldbox.store import FileKeyProvider, ResultIn, Store
from fieldbox_host.netfault import reset
from fieldbox_host.serve import IngestDB, IngestServer


def open_store(data_dir: Path) -> Store:
    """The store where the device programs look for it under FIELDBOX_DATA=data_dir."""
    return Store.open(data_dir / "store" / "fieldbox.db", FileKeyProvider(data_dir / "keys" / "kek"))


def put_results(store: Store, n: int, priorities: list[int] | None = None, prefix: str = "img") -> None:
    """``n`` results with cycling priorities, in chunks (like the workflow engine does)."""
    prios = priorities or [5]
    rows = [
        ResultIn(
            f"{prefix}-{i:06d}",
            "faces",
            "blazeface",
            f"inbox/{prefix}-{i:06d}.jpg",
            {"faces": [{"score": 0.91, "box": [0.12, 0.2, 0.33, 0.41]}], "n": i},
            prios[i % len(prios)],
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        store.put_results(rows[start : start + 1000])


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(db_path: Path, port: int = 0, **kwargs: object) -> Iterator[IngestServer]:
    """A real ingest server on loopback, in a thread, for the duration of the block."""
    db = IngestDB(db_path)
    server = IngestServer(("127.0.0.1", port), db, **kwargs)  # type: ignore[arg-type]
    server.serve_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        db.close()


@dataclass
class FaultProxy:
    """A TCP proxy on loopback that resets connections, truncates responses and delays data.

    Per chunk the client sends: with ``p_reset`` both sides are reset before it
    is forwarded (the request never arrives, or arrives half); with
    ``p_truncate`` it is forwarded but only half of the server's next answer
    reaches the client before a reset (the server committed, the client cannot
    know); with ``p_delay`` it is held for ``delay_s`` first.
    """

    target_port: int
    seed: int = 1
    p_reset: float = 0.1
    p_truncate: float = 0.1
    p_delay: float = 0.1
    delay_s: float = 0.2
    counts: dict[str, int] = field(
        default_factory=lambda: {"reset": 0, "truncate": 0, "delay": 0, "conns": 0}
    )

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL through the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def _roll(self) -> str:
        with self._lock:
            x = self._rng.random()
        if x < self.p_reset:
            return "reset"
        if x < self.p_reset + self.p_truncate:
            return "truncate"
        if x < self.p_reset + self.p_truncate + self.p_delay:
            return "delay"
        return "pass"

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._count("conns")
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            reset(client)
            return
        truncate_next = False
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    fault = self._roll()
                    if fault == "reset":
                        self._count("reset")
                        reset(client)
                        reset(upstream)
                        return
                    if fault == "truncate":
                        truncate_next = True
                    elif fault == "delay":
                        self._count("delay")
                        time.sleep(self.delay_s)
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    if truncate_next:
                        self._count("truncate")
                        client.sendall(data[: len(data) // 2])
                        reset(client)
                        reset(upstream)
                        return
                    client.sendall(data)
        except OSError:
            pass
        reset(client)
        reset(upstream)

    def close(self) -> None:
        """Stop accepting (open connections end on their own)."""
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=2)
