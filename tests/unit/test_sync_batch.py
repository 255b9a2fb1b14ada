"""The sync batch wire format: round trips, strict decoding, limits, fuzzing."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbox.errors import BatchFormatError
from fieldbox.sync import batch as wire
from fieldbox.sync.batch import Ack, Batch, Codec, Limits, Record


def _records(n: int, payload: bytes = b'{"faces": 1}') -> tuple[Record, ...]:
    return tuple(
        Record(id=f"r{i}", topic="results", priority=i % 3, created_at=1700000000.0 + i, payload=payload)
        for i in range(n)
    )


CODECS = [c for c in Codec if c.available]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip(codec: Codec) -> None:
    batch = Batch(device_id="dev-1", batch_id="b-1", records=_records(50))
    data = wire.encode(batch, codec)
    assert data[:4] == b"FBSB"
    assert wire.decode(data) == batch


def test_zstd_is_available_here() -> None:
    # The host venv pins zstandard and Debian ships python3-zstandard, so both ends have it.
    assert Codec.ZSTD.available
    assert Codec.best_available() is Codec.ZSTD


@pytest.mark.parametrize("codec", CODECS)
def test_compression_shrinks_repetitive_results(codec: Codec) -> None:
    payload = json.dumps({"detections": [{"score": 0.93, "box": [0.1, 0.2, 0.3, 0.4]}]}).encode()
    data = wire.encode(Batch("dev", "b", _records(500, payload)), codec)
    assert len(data) < 500 * len(payload) / 5


def test_record_ids_may_be_file_names() -> None:
    rec = Record("results/inbox/Photo 01 – été.jpg", "results", 5, 1.0, b"{}")
    assert wire.decode(wire.encode(Batch("dev", "b", (rec,)))).records == (rec,)


def test_binary_payload_survives() -> None:
    payload = bytes(range(256)) * 4
    batch = Batch("dev", "b", (Record("x", "telemetry", 0, 0.0, payload),))
    assert wire.decode(wire.encode(batch)).records[0].payload == payload


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (Record("", "results", 0, 0.0, b""), "record id"),
        (Record("a\nb", "results", 0, 0.0, b""), "record id"),
        (Record("x" * 513, "results", 0, 0.0, b""), "record id"),
        (Record("ok", "Results", 0, 0.0, b""), "topic"),
        (Record("ok", "results", 5000, 0.0, b""), "priority"),
        (Record("ok", "results", 0, float("nan"), b""), "created_at"),
        (Record("ok", "results", 0, -1.0, b""), "created_at"),
    ],
)
def test_encoder_refuses_bad_records(record: Record, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        wire.encode(Batch("dev", "b", (record,)))


def test_encoder_refuses_duplicates_empty_and_oversize() -> None:
    rec = _records(1)[0]
    with pytest.raises(BatchFormatError, match="twice"):
        wire.encode(Batch("dev", "b", (rec, rec)))
    with pytest.raises(BatchFormatError, match="at least one"):
        wire.encode(Batch("dev", "b", ()))
    with pytest.raises(BatchFormatError, match="exceed"):
        wire.encode(Batch("dev", "b", _records(11)), limits=Limits(max_records=10))
    with pytest.raises(BatchFormatError, match="payload"):
        wire.encode(Batch("dev", "b", _records(1, b"x" * 100)), limits=Limits(max_payload_bytes=10))


def _valid() -> bytes:
    return wire.encode(Batch("dev", "b", _records(3)), Codec.ZLIB)


def _rebuild(header: dict[str, object], raw: bytes, codec: int = 1, version: int = 1) -> bytes:
    h = json.dumps(header).encode()
    body = zlib.compress(raw)
    return struct.pack(">4sBBHII", b"FBSB", version, codec, 0, len(h), len(body)) + h + body


def _raw_of(records: tuple[Record, ...]) -> bytes:
    out = b""
    for r in records:
        meta = r.meta_bytes()
        out += struct.pack(">I", len(meta)) + meta + struct.pack(">I", len(r.payload)) + r.payload
    return out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:10], "shorter than"),
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "version 9"),
        (lambda d: d[:5] + b"\x07" + d[6:], "codec 7"),
        (lambda d: d[:-1], "truncated or padded"),
        (lambda d: d + b"\x00", "truncated or padded"),
    ],
)
def test_decoder_rejects_damaged_prefix(mutate, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message):
        wire.decode(mutate(_valid()))


def test_decoder_rejects_header_lies() -> None:
    recs = _records(2)
    raw = _raw_of(recs)
    good = {"device": "dev", "batch": "b", "schema": 1, "count": 2, "raw_size": len(raw)}
    assert wire.decode(_rebuild(good, raw)).records == recs
    with pytest.raises(BatchFormatError, match="raw_size"):
        wire.decode(_rebuild({**good, "raw_size": len(raw) - 1}, raw))
    with pytest.raises(BatchFormatError, match="inflates to"):
        wire.decode(_rebuild({**good, "raw_size": len(raw) + 5}, raw))
    with pytest.raises(BatchFormatError, match="after the last"):
        wire.decode(_rebuild({**good, "count": 1}, raw))
    with pytest.raises(BatchFormatError, match="ends before"):
        wire.decode(_rebuild({**good, "count": 3}, raw))
    with pytest.raises(BatchFormatError, match="keys differ"):
        wire.decode(_rebuild({**good, "extra": 1}, raw))
    with pytest.raises(BatchFormatError, match="schema"):
        wire.decode(_rebuild({**good, "schema": 2}, raw))
    with pytest.raises(BatchFormatError, match="device id"):
        wire.decode(_rebuild({**good, "device": "../etc"}, raw))
    dup = _raw_of((recs[0], recs[0]))
    with pytest.raises(BatchFormatError, match="twice"):
        wire.decode(_rebuild({**good, "raw_size": len(dup)}, dup))


def test_decompression_bomb_stops_at_limit() -> None:
    raw = b"\x00" * (64 * 1024 * 1024)  # 64 MiB of zeros deflates to ~64 KiB
    header = {"device": "dev", "batch": "b", "schema": 1, "count": 1, "raw_size": 1000}
    with pytest.raises(BatchFormatError, match="more than"):
        wire.decode(_rebuild(header, raw))
    with pytest.raises(BatchFormatError, match="raw_size"):
        wire.decode(_rebuild({**header, "raw_size": len(raw)}, raw))


def test_zstd_bomb_and_trailing_bytes() -> None:
    zstd = pytest.importorskip("zstandard")
    raw = _raw_of(_records(2))
    header = json.dumps({"device": "d", "batch": "b", "schema": 1, "count": 2, "raw_size": len(raw)}).encode()

    def frame(body: bytes) -> bytes:
        return struct.pack(">4sBBHII", b"FBSB", 1, 2, 0, len(header), len(body)) + header + body

    good = zstd.ZstdCompressor().compress(raw)
    assert len(wire.decode(frame(good)).records) == 2
    with pytest.raises(BatchFormatError, match="after the end"):
        wire.decode(frame(good + good))
    with pytest.raises(BatchFormatError, match="content size"):
        wire.decode(frame(zstd.ZstdCompressor().compress(raw + b"\x00" * 10_000_000)))
    with pytest.raises(BatchFormatError, match="zstd"):
        wire.decode(frame(good[:-4]))


def test_ack_round_trip_and_checks() -> None:
    ack = Ack("b1", ("a", "b"))
    assert wire.decode_ack(wire.encode_ack(ack), sent=["a", "b", "c"]) == ack
    with pytest.raises(BatchFormatError, match="not sent"):
        wire.decode_ack(wire.encode_ack(ack), sent=["a"])
    for bad in (b"", b"[]", b'{"batch": 1, "accepted": []}', b'{"batch": "x", "accepted": [1]}', b"\xff"):
        with pytest.raises(BatchFormatError):
            wire.decode_ack(bad)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_our_error(data: bytes) -> None:
    try:
        wire.decode(b"FBSB\x01\x01" + data)
        wire.decode(data)
    except BatchFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_batches(data: st.DataObject) -> None:
    valid = bytearray(wire.encode(Batch("dev", "b", _records(4)), data.draw(st.sampled_from(CODECS))))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(valid) - 1))
        valid[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(valid)))
    try:
        decoded = wire.decode(bytes(valid[:cut]) if data.draw(st.booleans()) else bytes(valid))
    except BatchFormatError:
        return
    for record in decoded.records:
        record.check()


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            _ids,
            st.integers(-1000, 1000),
            st.floats(0, 4e9, allow_nan=False),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=20,
        unique_by=lambda t: t[0],
    )
)
def test_fuzz_round_trip_any_valid_records(rows: list[tuple[str, int, float, bytes]]) -> None:
    records = tuple(Record(i, "results", p, t, b) for i, p, t, b in rows)
    batch = Batch("dev", "b", records)
    for codec in CODECS:
        assert wire.decode(wire.encode(batch, codec)) == batch
