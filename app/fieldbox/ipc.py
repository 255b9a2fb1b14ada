"""The one definition of the local-socket frame format, with its client and server.

The device's services (runner, store writer, workflows) talk over Unix stream
sockets under :func:`fieldbox.paths.run_dir`. Every message, either way, is one
frame::

    +--------+----------------+-----------------+------------------+---------------+
    | "FBX1" | header length  | payload length  | header           | payload       |
    | 4 B    | uint32, big-e. | uint32, big-e.  | UTF-8 JSON object| raw bytes     |
    +--------+----------------+-----------------+------------------+---------------+

The header carries the fields (a request: ``id`` (int) and ``op`` (str) plus
the op's arguments; a reply: ``id`` of the request and ``ok``); the payload
carries bytes that should not go through JSON (an image, a tensor). Limits:
:data:`MAX_HEADER` and :data:`MAX_PAYLOAD`; a frame over either is refused
before its body is read, so a peer cannot make a service allocate without
bound.

A failed request gets a reply with ``ok: false``, a typed ``error`` code (see
:data:`ERROR_CODES`) and a one-line ``message``; the client raises the matching
:class:`~fieldbox.errors.FieldboxError` subclass, so an ``InputError`` raised in
the runner arrives as an ``InputError`` in the workflow. A malformed frame gets
one ``bad-frame`` reply and the connection is closed (the byte stream cannot
be trusted to be in step any more); a malformed request in a well-formed frame
gets a ``bad-request`` reply and the connection stays open. Neither ever stops
the server.

Requests on one connection are answered in order; a client that wants
parallel requests opens more connections (the server gives each its own
thread, up to ``max_connections``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldbox.errors import (
    AgentUnavailableError,
    BusyError,
    ClockSkewError,
    ConfigError,
    FieldboxError,
    InputError,
    ModelError,
    ProtocolError,
    ServiceError,
    ServiceUnavailableError,
    StoreError,
)

log = logging.getLogger(__name__)

MAGIC = b"FBX1"
PREFIX = struct.Struct("!4sII")
"""magic, header length, payload length."""
MAX_HEADER = 1 << 20
"""Largest header (JSON) a peer may send: 1 MiB (a batch of store writes fits)."""
MAX_PAYLOAD = 64 << 20
"""Largest payload a peer may send: 64 MiB (a large photograph fits)."""
UNIX_PATH_MAX = 107
"""Longest socket path Linux accepts (``sun_path`` is 108 bytes with its NUL)."""

ERROR_CODES: dict[str, type[FieldboxError]] = {
    "bad-frame": ProtocolError,
    "bad-request": ProtocolError,
    "busy": BusyError,
    "clock-skew": ClockSkewError,
    "agent-unavailable": AgentUnavailableError,
    "unavailable": ServiceUnavailableError,
    "input": InputError,
    "model": ModelError,
    "config": ConfigError,
    "store": StoreError,
    "internal": ServiceError,
}
"""Error code in a reply -> the exception the client raises."""


class ConnectionLostError(ServiceUnavailableError):
    """A service went away (or stopped answering) while handling our request.

    Part of the :mod:`fieldbox.errors` tree, under ``ServiceUnavailableError``.
    Unlike "not reachable", the request may have been acted on, and a request
    that keeps ending like this may be what kills the service.
    """


def error_code(exc: BaseException) -> str:
    """The reply error code for an exception raised by a handler (most specific first)."""
    for code, cls in (
        ("busy", BusyError),
        ("clock-skew", ClockSkewError),
        ("agent-unavailable", AgentUnavailableError),
        ("unavailable", ServiceUnavailableError),
        ("bad-request", ProtocolError),
        ("input", InputError),
        ("model", ModelError),
        ("config", ConfigError),
        ("store", StoreError),
    ):
        if isinstance(exc, cls):
            return code
    return "internal"


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its JSON header and its raw payload."""

    header: dict[str, Any]
    payload: bytes = b""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """The bytes of one frame; :class:`ProtocolError` if it would break a limit."""
    try:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not plain JSON: {exc}") from None
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"frame header is {len(head)} bytes, over the {MAX_HEADER}-byte limit")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(
            f"frame payload is {len(payload)} bytes, over the {MAX_PAYLOAD}-byte limit",
            "send a smaller item",
        )
    return PREFIX.pack(MAGIC, len(head), len(payload)) + head + bytes(payload)


def _check_prefix(prefix: bytes) -> tuple[int, int]:
    magic, head_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"not a fieldbox frame (starts with {magic!r}, expected {MAGIC!r})")
    if head_len > MAX_HEADER:
        raise ProtocolError(f"frame header of {head_len} bytes is over the {MAX_HEADER}-byte limit")
    if payload_len > MAX_PAYLOAD:
        raise ProtocolError(
            f"frame payload of {payload_len} bytes is over the {MAX_PAYLOAD}-byte limit"
        )
    return head_len, payload_len


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header must be a JSON object, got {type(header).__name__}")
    return header


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames out.

    Raises :class:`ProtocolError` on the first malformed frame; after that the
    decoder (like the stream) is unusable.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame it completed, in order."""
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= PREFIX.size:
            head_len, payload_len = _check_prefix(bytes(self._buf[: PREFIX.size]))
            end = PREFIX.size + head_len + payload_len
            if len(self._buf) < end:
                break
            header = _parse_header(bytes(self._buf[PREFIX.size : PREFIX.size + head_len]))
            payload = bytes(self._buf[PREFIX.size + head_len : end])
            del self._buf[:end]
            frames.append(Frame(header, payload))
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Exactly ``size`` bytes, or None if the peer closed before sending any of them."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if not chunks:
                return None
            raise ProtocolError(
                f"connection closed in the middle of a frame ({len(chunks)} of {size} bytes)"
            )
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> Frame | None:
    """Read one frame from a stream socket; None on a clean close between frames."""
    prefix = _recv_exact(sock, PREFIX.size)
    if prefix is None:
        return None
    head_len, payload_len = _check_prefix(prefix)
    body = _recv_exact(sock, head_len + payload_len) if head_len + payload_len else b""
    if body is None:
        raise ProtocolError("connection closed after a frame prefix")
    return Frame(_parse_header(body[:head_len]), body[head_len:])


def write_frame(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    """Send one frame."""
    sock.sendall(encode(header, payload))


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One request as a handler sees it."""

    op: str
    id: int
    fields: dict[str, Any]
    payload: bytes = b""

    def get(self, name: str, kind: type, default: Any = ...) -> Any:
        """A header field of type ``kind``; :class:`ProtocolError` (bad-request) if wrong."""
        if name not in self.fields:
            if default is ...:
                raise ProtocolError(f"request {self.op!r}: missing field {name!r}")
            return default
        value = self.fields[name]
        if kind is int and isinstance(value, bool):
            raise ProtocolError(f"request {self.op!r}: field {name!r} must be int")
        if not isinstance(value, kind):
            raise ProtocolError(f"request {self.op!r}: field {name!r} must be {kind.__name__}")
        return value


@dataclass(frozen=True)
class Reply:
    """What a handler returns: header fields (JSON) and an optional payload."""

    fields: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


Handler = Callable[[Request], Reply]


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= 500 else line[:497] + "..."


def error_reply_header(request_id: Any, exc: BaseException) -> dict[str, Any]:
    """The header of a failed reply: typed code, one-line message, hint when there is one."""
    header: dict[str, Any] = {
        "id": request_id if isinstance(request_id, int) else None,
        "ok": False,
        "error": error_code(exc),
        "message": _one_line(exc.message if isinstance(exc, FieldboxError) else str(exc)),
    }
    if isinstance(exc, FieldboxError) and exc.hint:
        header["hint"] = _one_line(exc.hint)
    if isinstance(exc, BusyError):
        header["retry_after"] = 0.2
    return header


def raise_for_reply(header: dict[str, Any]) -> None:
    """Raise the exception a failed reply header stands for (nothing if ``ok``)."""
    if header.get("ok") is True:
        return
    code = header.get("error")
    cls = ERROR_CODES.get(code if isinstance(code, str) else "", ServiceError)
    message = header.get("message")
    hint = header.get("hint")
    raise cls(
        str(message) if message else f"service replied with error {code!r}",
        str(hint) if isinstance(hint, str) else None,
    )


# --------------------------------------------------------------------------- server


class Server:
    """A Unix-socket server: one thread per connection, requests handled in order.

    ``handler`` is called for every well-formed request; whatever it raises is
    turned into a typed error reply and logged, never propagated. Binding
    refuses to replace a socket another live process is listening on.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        name: str = "service",
        max_connections: int = 64,
        mode: int = 0o660,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.name = name
        self.max_connections = max_connections
        self.mode = mode
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def bind(self) -> None:
        """Create the listening socket (removing a stale one left by a dead process)."""
        check_socket_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ServiceError(f"{self.path}: exists and is not a socket", "remove it")
            if _is_listening(self.path):
                raise ServiceError(
                    f"{self.path}: another {self.name} is already listening",
                    "stop it first (supervisorctl stop ...)",
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.path.with_name(f".{os.getpid()}.bind")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock.bind(str(tmp))
        tmp.chmod(self.mode)
        os.replace(tmp, self.path)  # appears with its final mode, never world-writable
        sock.listen(128)
        sock.settimeout(0.2)
        self._sock = sock

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                log.warning("%s: accept failed: %s", self.name, exc)
                continue
            conn.settimeout(None)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                too_many = len(self._conns) >= self.max_connections
                if not too_many:
                    self._conns.add(conn)
            if too_many:
                with contextlib.suppress(OSError):
                    write_frame(
                        conn,
                        error_reply_header(
                            None, BusyError(f"{self.name}: too many connections")
                        ),
                    )
                conn.close()
                continue
            thread = threading.Thread(
                target=self._serve_connection, args=(conn,), name=f"{self.name}-conn", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()
        self._close_listener()

    def start(self) -> threading.Thread:
        """Bind now and serve in a background thread (for services and tests)."""
        self.bind()
        thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-accept", daemon=True)
        thread.start()
        return thread

    def shutdown(self, wait: float = 5.0) -> None:
        """Stop accepting, close open connections once their current request is answered."""
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        for thread in threads:
            thread.join(wait)
        self._close_listener()

    def _close_listener(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = read_frame(conn)
                except ProtocolError as exc:
                    log.warning("%s: bad frame from a client: %s", self.name, exc)
                    with contextlib.suppress(OSError):
                        write_frame(conn, error_reply_header(None, exc) | {"error": "bad-frame"})
                    return
                if frame is None:
                    return
                conn.sendall(self._answer(frame))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                log.warning("%s: connection failed: %s", self.name, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, frame: Frame) -> bytes:
        """The encoded reply to one frame; every failure becomes a typed error reply."""
        header = frame.header
        request_id = header.get("id")
        op = header.get("op")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return encode(error_reply_header(None, ProtocolError("request needs an integer 'id'")))
        if not isinstance(op, str) or not op:
            return encode(error_reply_header(request_id, ProtocolError("request needs a text 'op'")))
        fields = {k: v for k, v in header.items() if k not in ("id", "op")}
        request = Request(op=op, id=request_id, fields=fields, payload=frame.payload)
        try:
            reply = self.handler(request)
            # A reply over a limit (or not JSON) raises here and becomes an error reply.
            return encode({**reply.fields, "id": request_id, "ok": True}, reply.payload)
        except FieldboxError as exc:
            return encode(error_reply_header(request_id, exc))
        except Exception as exc:
            log.exception("%s: request %r failed", self.name, op)
            return encode(error_reply_header(request_id, exc))


def check_socket_path(path: Path) -> None:
    """Refuse a socket path longer than the kernel accepts, with a clear message."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ConfigError(
            f"{path}: socket path is {len(os.fsencode(path))} bytes, over Linux's {UNIX_PATH_MAX}",
            "use a shorter FIELDBOX_RUN directory",
        )


def _is_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


# --------------------------------------------------------------------------- client


class Client:
    """A connection to one service; reconnects on demand; safe to share between threads.

    :meth:`call` raises :class:`ServiceUnavailableError` when the service
    cannot be reached (not started, restarting) and the typed error of a
    failed reply otherwise. A call interrupted by the service dying is not
    retried here: the caller knows whether its request is safe to repeat.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0, name: str | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.name = name or self.path.stem
        self._sock: socket.socket | None = None
        self._next_id = 1
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            check_socket_path(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise ServiceUnavailableError(
                    f"{self.name} service not reachable at {self.path}: {exc.strerror or exc}",
                    "is it running? (supervisorctl status)",
                ) from None
            self._sock = sock
        return self._sock

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, payload: bytes = b"", **fields: Any) -> Frame:
        """Send one request and return the successful reply (header fields + payload)."""
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            data = encode({**fields, "id": request_id, "op": op}, payload)
            sock = self._connect()
            try:
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The server may have refused us with a reply before closing
                    # (busy, bad frame): read it rather than report a bare EPIPE.
                    sock.settimeout(min(self.timeout, 1.0))
                    reply = read_frame(sock)
                    if reply is None or reply.header.get("ok") is not False:
                        raise
                else:
                    reply = read_frame(sock)
            except TimeoutError:
                self.close()
                raise ConnectionLostError(
                    f"{self.name} service did not answer {op!r} within {self.timeout:g} s"
                ) from None
            except ProtocolError:
                self.close()
                raise
            except OSError as exc:
                self.close()
                raise ConnectionLostError(
                    f"{self.name} service connection lost during {op!r}: {exc.strerror or exc}"
                ) from None
            if reply is None:
                self.close()
                raise ConnectionLostError(
                    f"{self.name} service closed the connection during {op!r}"
                )
            if reply.header.get("id") not in (request_id, None):
                self.close()
                raise ProtocolError(
                    f"{self.name} service answered request {reply.header.get('id')!r}, "
                    f"expected {request_id}"
                )
            if reply.header.get("error") == "bad-frame":
                self.close()
        raise_for_reply(reply.header)
        return reply


@contextlib.contextmanager
def serving(path: Path, handler: Handler, name: str = "service") -> Iterator[Server]:
    """Run a :class:`Server` in a background thread for the ``with`` block."""
    server = Server(path, handler, name=name)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()
