"""The update bundle: the one definition of its bytes, written by the host, read by the device.

A bundle carries one root-slot filesystem image, cut into fixed-size chunks::

    offset  size  what
    0       8     magic b"FBXBNDL1"
    8       4     H: header length (big-endian)
    12      4     I: index length (big-endian)
    16      H     header: JSON object (version, board, image size and sha256, chunk and block size, ...)
    16+H    I     index: one zstd frame; decompressed, one record per chunk:
                    sha256 of the chunk (32) | compressed length C (4, big-endian) |
                    one 4-byte hint per block (crc32 of each block_size bytes)
    16+H+I  ...   payload: the compressed chunks back to back, chunk 0 first (C = 0: all zeros, no bytes)

The *manifest* is everything before the payload. The release's TUF target
metadata (signed) carries the manifest's length and sha256 as well as the
whole bundle's, and the manifest carries each chunk's sha256, so a device can
trust every chunk on its own before writing it, resume a broken download at
the first missing chunk with an HTTP Range request, and take a chunk from the
slot it is running instead of the network when its blocks are already there:
the block hints find where (any block-aligned position, so files that moved
in the filesystem still count), and the chunk's sha256 decides. A hint that
matches by accident costs a download, never a wrong byte.

Everything here is bounded before it is allocated: header and index sizes,
chunk count, each chunk's compressed and decompressed size. Anything else is a
:class:`~fieldbox.errors.BundleError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fieldbox.errors import BundleError
from fieldbox.ota.version import is_version

MAGIC = b"FBXBNDL1"
PREFIX = struct.Struct(">8sII")
FORMAT = 1
KIND_ROOTFS = "rootfs"
SUFFIX = ".fbb"

DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_BLOCK_SIZE = 4096
MAX_HEADER = 64 * 1024
MAX_INDEX = 32 * 1024 * 1024
MAX_IMAGE = 64 * 1024**3
MIN_CHUNK, MAX_CHUNK = 4096, 16 * 1024 * 1024
MIN_BLOCK = 512
SHA_LEN = 32
HEADER_KEYS = frozenset(
    {
        "format",
        "kind",
        "version",
        "board",
        "image_size",
        "image_sha256",
        "chunk_size",
        "block_size",
        "compression",
        "chunks",
        "payload_size",
        "built",
    }
)


def max_compressed(length: int) -> int:
    """The largest compressed size a chunk of ``length`` bytes may have (zstd's bound, rounded up)."""
    return length + length // 128 + 1024


def block_hint(block: bytes | memoryview) -> int:
    """The lookup hint of one block: crc32 (fast under emulation; the chunk sha256 decides)."""
    return zlib.crc32(block)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of the slot image and where its compressed bytes lie in the bundle."""

    index: int
    offset: int
    """Byte offset in the slot image."""
    length: int
    sha256: bytes
    compressed_length: int
    """0: the chunk is all zeros and has no payload bytes."""
    payload_offset: int
    """Byte offset of the compressed bytes in the bundle file."""
    hints: tuple[int, ...]

    @property
    def zero(self) -> bool:
        """An all-zero chunk: written without downloading anything."""
        return self.compressed_length == 0


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _is_hex(text: object, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and all(c in "0123456789abcdef" for c in text)


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    value = header[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleError(f"bundle header: {key} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _text(header: dict[str, Any], key: str) -> str:
    value = header[key]
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 64
        or not value.isascii()
        or not value.isprintable()
    ):
        raise BundleError(f"bundle header: {key} must be short printable ASCII text, got {value!r}")
    return value


@dataclass(frozen=True)
class Manifest:
    """A parsed, bounds-checked manifest (header + chunk index)."""

    version: str
    board: str
    kind: str
    image_size: int
    image_sha256: str
    chunk_size: int
    block_size: int
    payload_size: int
    built: int
    manifest_length: int
    records: bytes
    payload_offsets: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of chunks."""
        return len(self.payload_offsets)

    @property
    def record_size(self) -> int:
        """Bytes per index record."""
        return SHA_LEN + 4 + 4 * (self.chunk_size // self.block_size)

    @property
    def bundle_length(self) -> int:
        """Length of the whole bundle file this manifest describes."""
        return self.manifest_length + self.payload_size

    def chunk(self, index: int) -> Chunk:
        """Chunk ``index`` (0-based)."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        size = self.record_size
        rec = self.records[index * size : (index + 1) * size]
        offset = index * self.chunk_size
        length = min(self.chunk_size, self.image_size - offset)
        blocks = length // self.block_size
        hints = struct.unpack_from(f">{blocks}I", rec, SHA_LEN + 4)
        (clen,) = struct.unpack_from(">I", rec, SHA_LEN)
        return Chunk(index, offset, length, rec[:SHA_LEN], clen, self.payload_offsets[index], hints)

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in image order."""
        for i in range(self.count):
            yield self.chunk(i)

    def header(self) -> dict[str, Any]:
        """The header fields as written (for ``ota status`` and tests)."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "version": self.version,
            "board": self.board,
            "image_size": self.image_size,
            "image_sha256": self.image_sha256,
            "chunk_size": self.chunk_size,
            "block_size": self.block_size,
            "compression": "zstd",
            "chunks": self.count,
            "payload_size": self.payload_size,
            "built": self.built,
        }


def prefix_lengths(prefix: bytes) -> tuple[int, int]:
    """(header length, index length) from the first 16 bytes of a bundle."""
    if len(prefix) < PREFIX.size:
        raise BundleError(f"bundle is {len(prefix)} bytes long, shorter than its {PREFIX.size}-byte prefix")
    magic, hlen, ilen = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise BundleError(
            "not a fieldbox update bundle (wrong magic)", "give a .fbb file made by `fieldbox release`"
        )
    if not 2 <= hlen <= MAX_HEADER:
        raise BundleError(f"bundle header length {hlen} is out of bounds (at most {MAX_HEADER})")
    if not 1 <= ilen <= MAX_INDEX:
        raise BundleError(f"bundle index length {ilen} is out of bounds (at most {MAX_INDEX})")
    return hlen, ilen


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check a manifest (the bundle's bytes before the payload, exactly)."""
    hlen, ilen = prefix_lengths(data[: PREFIX.size])
    if len(data) != PREFIX.size + hlen + ilen:
        raise BundleError(f"manifest is {len(data)} bytes, its prefix says {PREFIX.size + hlen + ilen}")
    try:
        header = json.loads(data[PREFIX.size : PREFIX.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"bundle header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BundleError("bundle header is not a JSON object")
    if set(header) != HEADER_KEYS:
        missing, extra = sorted(HEADER_KEYS - set(header)), sorted(set(header) - HEADER_KEYS)
        raise BundleError(
            f"bundle header keys differ from format {FORMAT}: missing {missing}, unknown {extra}"
        )
    if header["format"] != FORMAT or isinstance(header["format"], bool):
        raise BundleError(
            f"bundle format {header['format']!r} is not supported (this device reads {FORMAT})",
            "update in steps through a release this device can read",
        )
    if header["compression"] != "zstd":
        raise BundleError(f"bundle compression {header['compression']!r} is not supported (zstd only)")
    kind = _text(header, "kind")
    if kind != KIND_ROOTFS:
        raise BundleError(f"bundle kind {kind!r} is not supported ({KIND_ROOTFS!r} only)")
    version = _text(header, "version")
    if not is_version(version):
        raise BundleError(f"bundle version {version!r} is not a release version")
    board = _text(header, "board")
    if not _is_hex(header["image_sha256"], 64):
        raise BundleError("bundle header: image_sha256 must be 64 lower-case hex digits")
    chunk_size = _int(header, "chunk_size", MIN_CHUNK, MAX_CHUNK)
    block_size = _int(header, "block_size", MIN_BLOCK, chunk_size)
    if not _is_pow2(chunk_size) or not _is_pow2(block_size):
        raise BundleError("bundle header: chunk_size and block_size must be powers of two")
    image_size = _int(header, "image_size", block_size, MAX_IMAGE)
    if image_size % block_size:
        raise BundleError(f"bundle header: image_size {image_size} is not a whole number of blocks")
    count = _int(header, "chunks", 1, MAX_IMAGE // MIN_CHUNK)
    if count != -(-image_size // chunk_size):
        raise BundleError(f"bundle header: {count} chunks cannot hold {image_size} bytes of {chunk_size}")
    payload_size = _int(header, "payload_size", 0, count * max_compressed(chunk_size))
    built = _int(header, "built", 0, 2**40)
    record = SHA_LEN + 4 + 4 * (chunk_size // block_size)
    want = count * record
    records = decompress_exact(data[PREFIX.size + hlen :], want)
    offsets: list[int] = []
    position = len(data)
    for i in range(count):
        (clen,) = struct.unpack_from(">I", records, i * record + SHA_LEN)
        length = min(chunk_size, image_size - i * chunk_size)
        if clen > max_compressed(length):
            raise BundleError(
                f"bundle chunk {i}: compressed length {clen} exceeds the bound for {length} bytes"
            )
        if clen == 0 and records[i * record : i * record + SHA_LEN] != _zero_sha(length):
            raise BundleError(f"bundle chunk {i}: marked all-zero but its sha256 is not that of zeros")
        offsets.append(position)
        position += clen
    if position - len(data) != payload_size:
        raise BundleError(f"bundle chunks add up to {position - len(data)} bytes, header says {payload_size}")
    return Manifest(
        version,
        board,
        kind,
        image_size,
        header["image_sha256"],
        chunk_size,
        block_size,
        payload_size,
        built,
        len(data),
        records,
        tuple(offsets),
    )


_ZERO_SHA: dict[int, bytes] = {}


def _zero_sha(length: int) -> bytes:
    digest = _ZERO_SHA.get(length)
    if digest is None:
        digest = _ZERO_SHA[length] = hashlib.sha256(bytes(length)).digest()
    return digest


def _decompressor() -> Any:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - the image and the venv both carry it
        from fieldbox.errors import DependencyError

        raise DependencyError("zstandard is not installed", "install python3-zstandard") from None
    return zstandard.ZstdDecompressor()


def decompress_exact(frame: bytes, length: int) -> bytes:
    """One zstd frame that must decompress to exactly ``length`` bytes.

    The frame must declare its content size, and it must be ``length``: the
    output buffer is never sized by untrusted bytes.
    """
    dctx = _decompressor()
    import zstandard

    try:
        declared = zstandard.frame_content_size(frame)
        if declared != length:
            what = "no size" if declared < 0 else f"{declared} bytes"
            raise BundleError(f"bundle data declares {what}, expected {length}")
        out: bytes = dctx.decompress(frame)
    except zstandard.ZstdError as exc:
        raise BundleError(f"bundle data does not decompress: {exc}") from None
    if len(out) != length:
        raise BundleError(f"bundle data decompresses to {len(out)} bytes, expected {length}")
    return out


def decode_chunk(chunk: Chunk, data: bytes) -> bytes:
    """The chunk's image bytes from its compressed bytes, checked against its sha256."""
    if chunk.zero:
        raw = bytes(chunk.length)
    else:
        if len(data) != chunk.compressed_length:
            raise BundleError(
                f"bundle chunk {chunk.index}: got {len(data)} compressed bytes, "
                f"expected {chunk.compressed_length}"
            )
        raw = decompress_exact(data, chunk.length)
    if hashlib.sha256(raw).digest() != chunk.sha256:
        raise BundleError(f"bundle chunk {chunk.index}: sha256 mismatch", "the download is corrupt; retry")
    return raw


def chunk_matches(chunk: Chunk, raw: bytes | bytearray | memoryview) -> bool:
    """Whether ``raw`` (e.g. assembled from local blocks) is exactly this chunk."""
    return len(raw) == chunk.length and hashlib.sha256(raw).digest() == chunk.sha256


# -- writing (the host's `fieldbox release`) ------------------------------------------


@dataclass(frozen=True)
class WrittenBundle:
    """What :func:`write_bundle` produced."""

    path: Path
    length: int
    sha256: str
    manifest_length: int
    manifest_sha256: str
    manifest: Manifest


Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a bundle is written."""


def write_bundle(
    source: BinaryIO,
    image_size: int,
    out: Path,
    *,
    version: str,
    board: str,
    built: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = 10,
    progress: Progress | None = None,
) -> WrittenBundle:
    """Write the bundle of ``image_size`` bytes read from ``source`` (at its current position) to ``out``.

    The payload goes to a temporary file beside ``out`` first (the header
    needs the image's sha256 and the payload size); ``out`` appears only
    complete, by rename.
    """
    import zstandard

    if image_size <= 0 or image_size % block_size:
        raise BundleError(
            f"slot image size {image_size} is not a positive number of {block_size}-byte blocks"
        )
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    image_hash = hashlib.sha256()
    records = bytearray()
    payload = out.with_name(f".{out.name}.payload-{os.getpid()}")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    payload_size = 0
    try:
        with open(payload, "wb") as pay:
            done = 0
            while done < image_size:
                length = min(chunk_size, image_size - done)
                raw = source.read(length)
                if len(raw) != length:
                    raise BundleError(f"slot image ended after {done + len(raw)} of {image_size} bytes")
                image_hash.update(raw)
                view = memoryview(raw)
                hints = [block_hint(view[b : b + block_size]) for b in range(0, length, block_size)]
                hints += [0] * (chunk_size // block_size - len(hints))
                if raw.count(0) == length:
                    packed = b""
                else:
                    packed = cctx.compress(raw)
                    pay.write(packed)
                records += hashlib.sha256(raw).digest()
                records += struct.pack(f">I{len(hints)}I", len(packed), *hints)
                payload_size += len(packed)
                done += length
                if progress is not None:
                    progress(done, image_size)
        count = -(-image_size // chunk_size)
        header = {
            "format": FORMAT,
            "kind": KIND_ROOTFS,
            "version": version,
            "board": board,
            "image_size": image_size,
            "image_sha256": image_hash.hexdigest(),
            "chunk_size": chunk_size,
            "block_size": block_size,
            "compression": "zstd",
            "chunks": count,
            "payload_size": payload_size,
            "built": built,
        }
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
        index = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(records))
        manifest_bytes = PREFIX.pack(MAGIC, len(head), len(index)) + head + index
        manifest = parse_manifest(manifest_bytes)  # the reader's own checks, before anything is published
        whole = hashlib.sha256(manifest_bytes)
        with open(partial, "wb") as dst, open(payload, "rb") as pay:
            dst.write(manifest_bytes)
            while block := pay.read(1 << 20):
                whole.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, out)
    finally:
        payload.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return WrittenBundle(
        out,
        len(manifest_bytes) + payload_size,
        whole.hexdigest(),
        len(manifest_bytes),
        hashlib.sha256(manifest_bytes).hexdigest(),
        manifest,
    )


def read_manifest(fh: BinaryIO) -> Manifest:
    """The manifest at the start of an open bundle file."""
    prefix = fh.read(PREFIX.size)
    hlen, ilen = prefix_lengths(prefix)
    rest = fh.read(hlen + ilen)
    return parse_manifest(prefix + rest)


def verify_bundle(path: Path) -> Manifest:
    """Read a whole bundle file and check every chunk and the image sha256 (host-side check)."""
    image_hash = hashlib.sha256()
    with open(path, "rb") as fh:
        manifest = read_manifest(fh)
        for chunk in manifest.chunks():
            data = fh.read(chunk.compressed_length) if not chunk.zero else b""
            image_hash.update(decode_chunk(chunk, data))
        if fh.read(1):
            raise BundleError(f"{path}: data after the last chunk", "the file is not a bundle as written")
    if image_hash.hexdigest() != manifest.image_sha256:
        raise BundleError(f"{path}: the chunks do not make the image the manifest names (sha256)")
    return manifest
