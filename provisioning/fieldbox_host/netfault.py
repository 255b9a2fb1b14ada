"""A TCP proxy on loopback that cuts the download at chosen byte counts (tests and ``make bench``).

``CutProxy(port, cuts=[a, b, ...])`` forwards connections to ``127.0.0.1:port``
and counts the bytes going back to the clients; each time the total passes
the next cut, that connection is reset on both sides (SO_LINGER 0), as a
dropped radio link looks to the client. A QEMU guest reaches it the same way
as the server itself (``guestfwd`` to its loopback port).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading


def reset(sock: socket.socket) -> None:
    """Close with an RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class CutProxy:
    """Forward to a loopback port; reset the connection carrying byte ``cuts[i]`` of the total."""

    def __init__(self, target_port: int, cuts: list[int]) -> None:
        self.target_port = target_port
        self.cuts = sorted(cuts)
        self.sent = 0
        self.cut_count = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="cut-proxy", daemon=True)
        self._thread.start()

    def hold(self) -> None:
        """New connections wait (are accepted, not forwarded) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        """Forward again, starting with the connections that waited."""
        self._open.set()

    def cut_after(self, offsets: list[int]) -> None:
        """Add cuts at these byte counts from now on (relative to what has passed so far)."""
        with self._lock:
            self.cuts = sorted([*self.cuts, *(self.sent + o for o in offsets)])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _allow(self, n: int) -> int:
        """How many of the next ``n`` bytes may pass before a cut (n: no cut)."""
        with self._lock:
            pending = [c for c in self.cuts if c > self.sent]
            if pending and self.sent + n >= pending[0]:
                allowed = pending[0] - self.sent
                self.sent = pending[0]
                self.cut_count += 1
                return allowed
            self.sent += n
            return n

    def _pipe(self, client: socket.socket) -> None:
        while not self._open.wait(0.2):
            if self._stop.is_set():
                reset(client)
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            reset(client)
            return
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    allowed = self._allow(len(data))
                    client.sendall(data[:allowed])
                    if allowed < len(data):
                        break
        except OSError:
            pass
        reset(client)
        reset(upstream)

    def close(self) -> None:
        """Stop accepting."""
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=2)
