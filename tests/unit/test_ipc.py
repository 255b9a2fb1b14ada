"""The local-socket frame format and its server, over real Unix sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldbox import ipc
from fieldbox.errors import (
    BusyError,
    ConfigError,
    InputError,
    ModelError,
    ProtocolError,
    ServiceError,
    ServiceUnavailableError,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
headers = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@given(headers, st.binary(max_size=2000), st.integers(1, 64))
def test_frames_round_trip_whatever_the_chunking(header, payload, chunk):
    data = ipc.encode(header, payload) + ipc.encode({"second": True})
    decoder = ipc.FrameDecoder()
    frames = []
    for i in range(0, len(data), chunk):
        frames += decoder.feed(data[i : i + chunk])
    assert frames == [ipc.Frame(header, payload), ipc.Frame({"second": True}, b"")]
    assert decoder.pending == 0


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoder_fuzz_random_bytes_only_protocol_errors(data):
    decoder = ipc.FrameDecoder()
    try:
        for frame in decoder.feed(data):
            assert isinstance(frame.header, dict)
    except ProtocolError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=500)
@given(st.binary(max_size=200), st.binary(max_size=50))
def test_decoder_fuzz_valid_prefix_garbage_header(head, payload):
    data = ipc.PREFIX.pack(ipc.MAGIC, len(head), len(payload)) + head + payload
    try:
        frames = ipc.FrameDecoder().feed(data)
    except ProtocolError:
        return
    assert len(frames) == 1
    assert isinstance(frames[0].header, dict)
    assert json.loads(head.decode()) == frames[0].header


def test_oversized_lengths_refused_from_the_prefix_alone():
    decoder = ipc.FrameDecoder()
    with pytest.raises(ProtocolError, match="header of .* over"):
        decoder.feed(ipc.PREFIX.pack(ipc.MAGIC, ipc.MAX_HEADER + 1, 0))
    with pytest.raises(ProtocolError, match="payload of .* over"):
        ipc.FrameDecoder().feed(ipc.PREFIX.pack(ipc.MAGIC, 2, ipc.MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="not a fieldbox frame"):
        ipc.FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="JSON object"):
        ipc.FrameDecoder().feed(ipc.PREFIX.pack(ipc.MAGIC, 2, 0) + b"[]")


def test_encode_refuses_what_it_cannot_send():
    with pytest.raises(ProtocolError, match="not plain JSON"):
        ipc.encode({"x": float("nan")})
    with pytest.raises(ProtocolError, match="not plain JSON"):
        ipc.encode({"x": object()})


def test_read_frame_over_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        ipc.write_frame(a, {"op": "x", "id": 1}, b"\x00\xff" * 1000)
        frame = ipc.read_frame(b)
        assert frame == ipc.Frame({"op": "x", "id": 1}, b"\x00\xff" * 1000)
        a.sendall(ipc.encode({"a": 1})[:10])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="middle of a frame"):
            ipc.read_frame(b)


# ----------------------------------------------------------------------------- server


def _handler(request: ipc.Request) -> ipc.Reply:
    if request.op == "echo":
        return ipc.Reply({"n": request.get("n", int, 0)}, request.payload[::-1])
    if request.op == "input":
        raise InputError("truncated JPEG", "send a whole file")
    if request.op == "model":
        raise ModelError("model sha256 mismatch")
    if request.op == "busy":
        raise BusyError("queue full")
    if request.op == "crash":
        raise RuntimeError("boom\nsecond line")
    if request.op == "huge":
        return ipc.Reply({}, b"x" * (ipc.MAX_PAYLOAD + 1))
    if request.op == "wait":
        gate.wait(5)
        return ipc.Reply({"waited": True})
    raise ProtocolError(f"unknown op {request.op!r}")


gate = threading.Event()


@pytest.fixture
def server(tmp_path: Path):
    path = tmp_path / "svc.sock"
    with ipc.serving(path, _handler, name="test") as srv:
        yield srv


def test_requests_replies_and_typed_errors(server: ipc.Server):
    with ipc.Client(server.path) as client:
        reply = client.call("echo", b"abc", n=7)
        assert reply.header["n"] == 7 and reply.header["ok"] is True
        assert reply.payload == b"cba"
        with pytest.raises(InputError, match="truncated JPEG") as exc_info:
            client.call("input")
        assert exc_info.value.hint == "send a whole file"
        with pytest.raises(ModelError):
            client.call("model")
        with pytest.raises(BusyError):
            client.call("busy")
        with pytest.raises(ServiceError, match="boom second line"):
            client.call("crash")
        with pytest.raises(ProtocolError, match="unknown op"):
            client.call("nope")
        with pytest.raises(ProtocolError, match="must be int"):
            client.call("echo", n="seven")
        with pytest.raises(ProtocolError, match="over the"):
            client.call("huge")
        # the same connection still works after every failure above
        assert client.call("echo", b"ok").payload == b"ko"


def test_garbage_gets_one_line_error_and_server_carries_on(server: ipc.Server):
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(server.path))
    with raw:
        raw.sendall(b"this is not a frame at all")
        reply = ipc.read_frame(raw)
        assert reply is not None
        assert reply.header["ok"] is False and reply.header["error"] == "bad-frame"
        assert "\n" not in reply.header["message"]
        # the server closed this connection (a reset, as our bytes went unread)
        with contextlib.suppress(ConnectionResetError):
            assert ipc.read_frame(raw) is None
    # a frame with a valid prefix but no id: bad-request, connection kept
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(server.path))
    with raw:
        ipc.write_frame(raw, {"op": "echo"})
        reply = ipc.read_frame(raw)
        assert reply is not None and reply.header["error"] == "bad-request"
        ipc.write_frame(raw, {"op": "echo", "id": 5}, b"12")
        reply = ipc.read_frame(raw)
        assert reply is not None and reply.header == {"n": 0, "id": 5, "ok": True}
    # a client that dies mid-frame
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(server.path))
    raw.sendall(ipc.encode({"op": "echo", "id": 1}, b"x" * 100)[:30])
    raw.close()
    # an absurd declared length is refused without reading it
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(server.path))
    with raw:
        raw.sendall(struct.pack("!4sII", ipc.MAGIC, 0xFFFFFFFF, 0xFFFFFFFF))
        reply = ipc.read_frame(raw)
        assert reply is not None and reply.header["error"] == "bad-frame"
    with ipc.Client(server.path) as client:
        assert client.call("echo", b"still here").payload == b"ereh llits"


def test_parallel_clients_each_get_their_own_answers(server: ipc.Server):
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with ipc.Client(server.path) as client:
                for i in range(50):
                    reply = client.call("echo", f"{n}-{i}".encode(), n=i)
                    assert reply.header["n"] == i
                    assert reply.payload == f"{n}-{i}".encode()[::-1]
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_shared_client_is_thread_safe(server: ipc.Server):
    client = ipc.Client(server.path)
    results: list[bool] = []

    def worker(n: int) -> None:
        for i in range(30):
            results.append(client.call("echo", n=n * 100 + i).header["n"] == n * 100 + i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    client.close()
    assert results == [True] * 120


def test_unreachable_service_and_long_paths(tmp_path: Path):
    with pytest.raises(ServiceUnavailableError, match="not reachable"):
        ipc.Client(tmp_path / "nobody.sock", name="runner").call("ping")
    long_path = tmp_path / ("x" * 120) / "s.sock"
    with pytest.raises(ConfigError, match="over Linux's"):
        ipc.Client(long_path).call("ping")
    with pytest.raises(ConfigError, match="shorter FIELDBOX_RUN"):
        ipc.Server(long_path, _handler).bind()


def test_stale_socket_replaced_live_socket_refused(tmp_path: Path):
    path = tmp_path / "svc.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed process leaves
    with ipc.serving(path, _handler) as srv:
        assert path.stat().st_mode & 0o777 == 0o660
        with pytest.raises(ServiceError, match="already listening"):
            ipc.Server(path, _handler).bind()
        with ipc.Client(srv.path) as client:
            assert client.call("echo", b"a").payload == b"a"
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ServiceError, match="not a socket"):
        ipc.Server(path, _handler).bind()


def test_shutdown_lets_the_request_in_flight_finish(tmp_path: Path):
    gate.clear()
    server = ipc.Server(tmp_path / "s.sock", _handler)
    server.start()
    answers: list[bool] = []

    def slow() -> None:
        with ipc.Client(server.path) as client:
            answers.append(client.call("wait").header["waited"])

    t = threading.Thread(target=slow)
    t.start()
    import time

    time.sleep(0.3)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    time.sleep(0.2)
    gate.set()
    t.join(10)
    stopper.join(10)
    assert answers == [True]


def test_too_many_connections_get_busy(tmp_path: Path):
    server = ipc.Server(tmp_path / "s.sock", _handler, max_connections=1)
    server.start()
    try:
        with ipc.Client(server.path) as first:
            first.call("echo")
            with pytest.raises(BusyError, match="too many connections"):
                ipc.Client(server.path).call("echo")
    finally:
        server.shutdown()
