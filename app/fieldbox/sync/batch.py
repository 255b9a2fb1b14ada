"""The sync batch: the one wire format between a device's sync client and an ingest server.

Both ends import this module; there is no second parser of these bytes.

A batch is::

    prefix   16 bytes, big-endian: magic b"FBSB", format version (u8), codec (u8),
             reserved (u16, zero), header length (u32), body length (u32)
    header   UTF-8 JSON object, uncompressed so a server can log and route a batch
             without inflating it: {"device": str, "batch": str, "schema": int,
             "count": int, "raw_size": int}
    body     the records, compressed with ``codec`` (zlib, or zstd where the
             ``zstandard`` module is present); ``raw_size`` bytes once inflated

The inflated body is ``count`` records back to back, each::

    meta length (u32), meta (UTF-8 JSON {"id", "topic", "priority", "created_at"}),
    payload length (u32), payload (opaque bytes; JSON text for results)

``id`` is the record's stable id (the outbox's ``record_id``): the server keeps
one row per (device, id), so sending a batch twice has the effect of sending it
once. The server answers with an :class:`Ack` listing the ids it has committed;
the client deletes exactly those from its outbox.

Decoding is strict: every length is checked against the bytes present and against
:class:`Limits` *before* anything is allocated or inflated (a decompression bomb
stops at ``raw_size``), unknown header keys are rejected, and any violation is a
:class:`~fieldbox.errors.BatchFormatError` naming what was wrong.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
import types
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fieldbox.errors import BatchFormatError

MAGIC = b"FBSB"
FORMAT_VERSION = 1
SCHEMA_VERSION = 1
"""Version of the record meta fields; bumped when a field's meaning changes."""

CONTENT_TYPE = "application/vnd.fieldbox.batch"
ACK_CONTENT_TYPE = "application/json"

_PREFIX = struct.Struct(">4sBBHII")
_U32 = struct.Struct(">I")

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
"""Device and batch ids: they appear in URLs, file names and logs."""
_RECORD_ID_RE = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,512}")
"""Record ids: any text without control characters (result keys are often file names), <= 512 chars."""
_TOPIC_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

_zstd: types.ModuleType | None
try:  # Debian bookworm ships python3-zstandard 0.20; zlib is always there.
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the installation
    _zstd = None


class Codec(enum.IntEnum):
    """How the body is compressed."""

    ZLIB = 1
    ZSTD = 2

    @classmethod
    def best_available(cls) -> Codec:
        """zstd where the library is installed (smaller, faster), else zlib."""
        return cls.ZSTD if _zstd is not None else cls.ZLIB

    @property
    def available(self) -> bool:
        """Whether this codec can be used in this Python."""
        return self is Codec.ZLIB or _zstd is not None


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces; the encoder checks the same ones, so it never makes what a peer refuses."""

    max_wire_bytes: int = 8 * 1024 * 1024
    max_raw_bytes: int = 32 * 1024 * 1024
    max_records: int = 20_000
    max_header_bytes: int = 4096
    max_meta_bytes: int = 1024
    max_payload_bytes: int = 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Record:
    """One outbox row as it travels: a stable id, a topic, a priority, a creation time and opaque bytes."""

    id: str
    topic: str
    priority: int
    created_at: float
    payload: bytes

    def check(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Raise BatchFormatError when a field is outside what the format allows."""
        if not isinstance(self.id, str) or not _RECORD_ID_RE.fullmatch(self.id):
            raise BatchFormatError(
                f"record id {str(self.id)[:80]!r} is not 1-512 characters without control characters"
            )
        if not isinstance(self.topic, str) or not _TOPIC_RE.fullmatch(self.topic):
            raise BatchFormatError(f"record {self.id}: topic {self.topic!r} is not a lower-case name")
        if type(self.priority) is not int or not -1000 <= self.priority <= 1000:
            raise BatchFormatError(f"record {self.id}: priority must be an integer in [-1000, 1000]")
        if (
            type(self.created_at) not in (int, float)
            or not math.isfinite(self.created_at)
            or self.created_at < 0
        ):
            raise BatchFormatError(f"record {self.id}: created_at must be a finite time >= 0")
        if not isinstance(self.payload, bytes):
            raise BatchFormatError(f"record {self.id}: payload must be bytes")
        if len(self.payload) > limits.max_payload_bytes:
            raise BatchFormatError(
                f"record {self.id}: payload of {len(self.payload)} bytes exceeds the limit of "
                f"{limits.max_payload_bytes}"
            )

    def meta_bytes(self) -> bytes:
        """The record's JSON meta, compact and key-sorted (deterministic)."""
        meta = {
            "id": self.id,
            "topic": self.topic,
            "priority": self.priority,
            "created_at": self.created_at,
        }
        return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()

    def encoded_size(self) -> int:
        """Bytes this record adds to an uncompressed body (for batch byte budgets)."""
        return 8 + len(self.meta_bytes()) + len(self.payload)


@dataclass(frozen=True)
class Batch:
    """A device's records sent together, identified by ``batch_id`` (for logs; dedup is by record id)."""

    device_id: str
    batch_id: str
    records: tuple[Record, ...]
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Ack:
    """The server's answer: the record ids it has durably committed (new or seen before)."""

    batch_id: str
    accepted: tuple[str, ...]


def _compress(codec: Codec, raw: bytes) -> bytes:
    if codec is Codec.ZLIB:
        return zlib.compress(raw, 6)
    if _zstd is None:
        raise BatchFormatError("zstd compression asked for, but the zstandard module is not installed")
    out: bytes = _zstd.ZstdCompressor(level=3).compress(raw)
    return out


def _decompress(codec: Codec, data: bytes, raw_size: int) -> bytes:
    """Inflate at most ``raw_size`` bytes and require exactly that many (no bombs, no trailing junk)."""
    if codec is Codec.ZLIB:
        inflater = zlib.decompressobj()
        try:
            # One byte past the announced size tells "too much" from "exactly right".
            raw = inflater.decompress(data, raw_size + 1)
        except zlib.error as exc:
            raise BatchFormatError(f"body is not a valid zlib stream: {exc}") from None
        if len(raw) > raw_size:
            raise BatchFormatError("body inflates to more than the header's raw_size")
        if not inflater.eof:
            raise BatchFormatError("body is a truncated zlib stream")
        if inflater.unused_data:
            raise BatchFormatError("bytes after the end of the compressed body")
    else:
        if _zstd is None:
            raise BatchFormatError(
                "batch is zstd-compressed, but the zstandard module is not installed here",
                "install python3-zstandard, or configure the client with codec = 'zlib'",
            )
        try:
            # The frame must state its size, and it must be the header's: then the
            # one-shot decompress allocates at most raw_size bytes.
            if _zstd.frame_content_size(data) != raw_size:
                raise BatchFormatError("zstd frame's content size differs from the header's raw_size")
            raw = _zstd.ZstdDecompressor().decompress(data, max_output_size=raw_size)
            # A second, streaming pass over the now-known-good frame finds trailing bytes.
            dobj = _zstd.ZstdDecompressor().decompressobj()
            dobj.decompress(data)
        except _zstd.ZstdError as exc:
            raise BatchFormatError(f"body is not a valid zstd frame: {exc}") from None
        if not dobj.eof:
            raise BatchFormatError("body is a truncated zstd frame")
        if dobj.unused_data:
            raise BatchFormatError("bytes after the end of the compressed body")
    if len(raw) != raw_size:
        raise BatchFormatError(f"body inflates to {len(raw)} bytes, header says {raw_size}")
    return raw


def _check_device_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise BatchFormatError(f"{what} {value!r} is not 1-128 characters of [A-Za-z0-9._:@/+=-]")
    return value


def encode(batch: Batch, codec: Codec = Codec.ZLIB, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialise ``batch``; raises BatchFormatError if it would break ``limits``."""
    _check_device_id(batch.device_id, "device id")
    _check_device_id(batch.batch_id, "batch id")
    if not batch.records:
        raise BatchFormatError("a batch needs at least one record")
    if len(batch.records) > limits.max_records:
        raise BatchFormatError(f"{len(batch.records)} records exceed the limit of {limits.max_records}")
    parts: list[bytes] = []
    seen: set[str] = set()
    for record in batch.records:
        record.check(limits)
        if record.id in seen:
            raise BatchFormatError(f"record id {record.id} appears twice in one batch")
        seen.add(record.id)
        meta = record.meta_bytes()
        parts += [_U32.pack(len(meta)), meta, _U32.pack(len(record.payload)), record.payload]
    raw = b"".join(parts)
    if len(raw) > limits.max_raw_bytes:
        raise BatchFormatError(f"batch body of {len(raw)} bytes exceeds the limit of {limits.max_raw_bytes}")
    body = _compress(codec, raw)
    header = json.dumps(
        {
            "device": batch.device_id,
            "batch": batch.batch_id,
            "schema": batch.schema_version,
            "count": len(batch.records),
            "raw_size": len(raw),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    wire = _PREFIX.pack(MAGIC, FORMAT_VERSION, int(codec), 0, len(header), len(body)) + header + body
    if len(wire) > limits.max_wire_bytes:
        raise BatchFormatError(f"batch of {len(wire)} bytes exceeds the limit of {limits.max_wire_bytes}")
    return wire


def _int_field(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        raise BatchFormatError(f"header field {key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BatchFormatError(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BatchFormatError(f"{what} is not a JSON object")
    return doc


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Parse and validate a batch; raises BatchFormatError for anything malformed or too large."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BatchFormatError("a batch must be bytes")
    data = bytes(data)
    if len(data) > limits.max_wire_bytes:
        raise BatchFormatError(f"batch of {len(data)} bytes exceeds the limit of {limits.max_wire_bytes}")
    if len(data) < _PREFIX.size:
        raise BatchFormatError(f"batch of {len(data)} bytes is shorter than its {_PREFIX.size}-byte prefix")
    magic, version, codec_no, reserved, header_len, body_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BatchFormatError("not a fieldbox sync batch (bad magic)")
    if version != FORMAT_VERSION:
        raise BatchFormatError(
            f"batch format version {version} is not supported (this end speaks {FORMAT_VERSION})",
            "update the older end",
        )
    try:
        codec = Codec(codec_no)
    except ValueError:
        raise BatchFormatError(f"unknown compression codec {codec_no}") from None
    if reserved != 0:
        raise BatchFormatError("reserved prefix bits are set")
    if header_len > limits.max_header_bytes:
        raise BatchFormatError(f"header of {header_len} bytes exceeds the limit of {limits.max_header_bytes}")
    if _PREFIX.size + header_len + body_len != len(data):
        raise BatchFormatError(
            f"batch is {len(data)} bytes but its prefix announces "
            f"{_PREFIX.size + header_len + body_len} (truncated or padded)"
        )
    header = _json_object(data[_PREFIX.size : _PREFIX.size + header_len], "batch header")
    expected = {"device", "batch", "schema", "count", "raw_size"}
    if set(header) != expected:
        extra = sorted(set(header) ^ expected)
        raise BatchFormatError(f"batch header keys differ from {sorted(expected)}: {extra}")
    device_id = _check_device_id(header["device"], "device id")
    batch_id = _check_device_id(header["batch"], "batch id")
    schema = _int_field(header, "schema", 1, SCHEMA_VERSION)
    count = _int_field(header, "count", 1, limits.max_records)
    raw_size = _int_field(header, "raw_size", 0, limits.max_raw_bytes)
    raw = _decompress(codec, data[_PREFIX.size + header_len :], raw_size)
    records = _decode_records(raw, count, limits)
    return Batch(device_id=device_id, batch_id=batch_id, records=records, schema_version=schema)


def _decode_records(raw: bytes, count: int, limits: Limits) -> tuple[Record, ...]:
    records: list[Record] = []
    seen: set[str] = set()
    pos = 0
    for index in range(count):
        where = f"record {index}"
        if pos + 4 > len(raw):
            raise BatchFormatError(f"{where}: body ends before its meta length")
        (meta_len,) = _U32.unpack_from(raw, pos)
        pos += 4
        if meta_len > limits.max_meta_bytes or pos + meta_len > len(raw):
            raise BatchFormatError(f"{where}: meta length {meta_len} is too large or runs past the body")
        meta = _json_object(raw[pos : pos + meta_len], f"{where} meta")
        pos += meta_len
        if set(meta) != {"id", "topic", "priority", "created_at"}:
            raise BatchFormatError(f"{where}: meta keys must be id, topic, priority, created_at")
        if pos + 4 > len(raw):
            raise BatchFormatError(f"{where}: body ends before its payload length")
        (payload_len,) = _U32.unpack_from(raw, pos)
        pos += 4
        if payload_len > limits.max_payload_bytes or pos + payload_len > len(raw):
            raise BatchFormatError(
                f"{where}: payload length {payload_len} is too large or runs past the body"
            )
        payload = raw[pos : pos + payload_len]
        pos += payload_len
        created_at = meta["created_at"]
        if type(created_at) is int:
            created_at = float(created_at)
        record = Record(
            id=meta["id"],
            topic=meta["topic"],
            priority=meta["priority"],
            created_at=created_at,
            payload=payload,
        )
        record.check(limits)
        if record.id in seen:
            raise BatchFormatError(f"{where}: record id {record.id} appears twice in one batch")
        seen.add(record.id)
        records.append(record)
    if pos != len(raw):
        raise BatchFormatError(f"{len(raw) - pos} bytes after the last of {count} records")
    return tuple(records)


def encode_ack(ack: Ack) -> bytes:
    """The server's answer body."""
    return json.dumps({"batch": ack.batch_id, "accepted": list(ack.accepted)}, separators=(",", ":")).encode()


def decode_ack(data: bytes, sent: Sequence[str] | None = None, max_bytes: int = 4 * 1024 * 1024) -> Ack:
    """Parse the server's answer; with ``sent``, also require every accepted id to be one that was sent.

    A client deletes what the ack lists, so an ack naming an id it never sent
    (a confused or hostile server) is an error rather than a silent deletion.
    """
    if len(data) > max_bytes:
        raise BatchFormatError(f"acknowledgement of {len(data)} bytes exceeds the limit of {max_bytes}")
    doc = _json_object(data, "acknowledgement")
    batch_id = doc.get("batch")
    accepted = doc.get("accepted")
    if not isinstance(batch_id, str) or not isinstance(accepted, list):
        raise BatchFormatError("acknowledgement needs 'batch' (text) and 'accepted' (a list of ids)")
    if not all(isinstance(x, str) for x in accepted):
        raise BatchFormatError("acknowledgement's 'accepted' must list text ids")
    if sent is not None:
        unknown = set(accepted) - set(sent)
        if unknown:
            raise BatchFormatError(f"acknowledgement names {len(unknown)} id(s) that were not sent")
    return Ack(batch_id=batch_id, accepted=tuple(accepted))
