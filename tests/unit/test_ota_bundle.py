"""The update bundle format: round trip, every bound, and a fuzzed manifest parser (hypothesis)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbox.errors import BundleError
from fieldbox.ota import bundle


def slot_image(size: int = 1 << 20, seed: int = 1) -> bytes:
    """A slot-like image: random files, repeated blocks and zero stretches."""
    rng = random.Random(seed)
    out = bytearray(size)
    for start in range(0, size, 64 * 1024):
        kind = rng.choice(("random", "zero", "text"))
        n = rng.randrange(4096, 64 * 1024, 4096)
        if kind == "random":
            out[start : start + n] = rng.randbytes(n)
        elif kind == "text":
            out[start : start + n] = (b"fieldbox " * (n // 9 + 1))[:n]
    return bytes(out)


def write(tmp_path: Path, image: bytes, **kw: object) -> bundle.WrittenBundle:
    out = tmp_path / "b.fbb"
    return bundle.write_bundle(io.BytesIO(image), len(image), out, version="0.2.0", board="qemu-arm64", **kw)  # type: ignore[arg-type]


def test_round_trip_rebuilds_the_image_exactly(tmp_path: Path) -> None:
    image = slot_image()
    written = write(tmp_path, image, chunk_size=16 * 1024)
    m = bundle.verify_bundle(written.path)
    assert (m.version, m.board, m.image_size, m.count) == ("0.2.0", "qemu-arm64", len(image), 64)
    assert m.image_sha256 == hashlib.sha256(image).hexdigest()
    data = written.path.read_bytes()
    assert len(data) == written.length == m.bundle_length
    assert hashlib.sha256(data[: m.manifest_length]).hexdigest() == written.manifest_sha256
    rebuilt = b"".join(
        bundle.decode_chunk(c, data[c.payload_offset : c.payload_offset + c.compressed_length])
        for c in m.chunks()
    )
    assert rebuilt == image
    zero = [c for c in m.chunks() if c.zero]
    assert zero, "the image has zero chunks; they carry no payload"
    assert all(c.hints[0] == bundle.block_hint(image[c.offset : c.offset + 4096]) for c in m.chunks())


def test_same_input_same_bytes(tmp_path: Path) -> None:
    image = slot_image(seed=7)
    a = write(tmp_path, image).sha256
    b = write(tmp_path, image).sha256
    assert a == b


def test_a_flipped_payload_byte_fails_that_chunk(tmp_path: Path) -> None:
    written = write(tmp_path, slot_image())
    data = bytearray(written.path.read_bytes())
    chunk = next(c for c in written.manifest.chunks() if not c.zero)
    data[chunk.payload_offset + chunk.compressed_length // 2] ^= 0x40
    with pytest.raises(BundleError, match=f"chunk {chunk.index}"):
        bundle.decode_chunk(
            chunk, bytes(data[chunk.payload_offset : chunk.payload_offset + chunk.compressed_length])
        )


def test_decompression_is_bounded_by_the_chunk_length(tmp_path: Path) -> None:
    written = write(tmp_path, slot_image())
    chunk = next(c for c in written.manifest.chunks() if not c.zero)
    bomb = zstandard.ZstdCompressor().compress(bytes(chunk.length * 64))
    with pytest.raises(BundleError, match="declares"):
        bundle.decode_chunk(
            bundle.Chunk(
                chunk.index,
                chunk.offset,
                chunk.length,
                chunk.sha256,
                len(bomb),
                chunk.payload_offset,
                chunk.hints,
            ),
            bomb,
        )
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(chunk.length))
    with pytest.raises(BundleError, match="no size"):
        bundle.decompress_exact(no_size, chunk.length)


def _manifest(written: bundle.WrittenBundle) -> bytes:
    return written.path.read_bytes()[: written.manifest_length]


def _rebuild(header: dict[str, object], index: bytes) -> bytes:
    head = json.dumps(header).encode()
    return bundle.PREFIX.pack(bundle.MAGIC, len(head), len(index)) + head + index


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "format 2 is not supported"),
        ({"board": "x" * 100}, "board must be short"),
        ({"version": "1.0-rc1"}, "not a release version"),
        ({"image_size": 12345}, "whole number of blocks"),
        ({"chunk_size": 3 * 4096}, "powers of two"),
        ({"chunks": 1}, "cannot hold"),
        ({"payload_size": 1}, "add up to"),
        ({"compression": "xz"}, "zstd only"),
        ({"kind": "app"}, "rootfs"),
        ({"extra": 1}, "unknown"),
        ({"image_sha256": "ab"}, "64 lower-case hex"),
    ],
)
def test_header_checks(tmp_path: Path, change: dict[str, object], message: str) -> None:
    written = write(tmp_path, slot_image())
    raw = _manifest(written)
    hlen, ilen = bundle.prefix_lengths(raw)
    header = json.loads(raw[16 : 16 + hlen])
    header.update(change)
    with pytest.raises(BundleError, match=message):
        bundle.parse_manifest(_rebuild(header, raw[16 + hlen :]))


def test_a_zero_chunk_must_hash_as_zeros(tmp_path: Path) -> None:
    written = write(tmp_path, slot_image())
    raw = _manifest(written)
    hlen, _ = bundle.prefix_lengths(raw)
    m = written.manifest
    records = bytearray(m.records)
    z = next(c for c in m.chunks() if c.zero)
    records[z.index * m.record_size] ^= 1
    index = zstandard.ZstdCompressor().compress(bytes(records))
    header = json.loads(raw[16 : 16 + hlen])
    with pytest.raises(BundleError, match="marked all-zero"):
        bundle.parse_manifest(_rebuild(header, index))


def test_compressed_length_beyond_the_bound_is_refused(tmp_path: Path) -> None:
    written = write(tmp_path, slot_image())
    raw = _manifest(written)
    hlen, _ = bundle.prefix_lengths(raw)
    m = written.manifest
    records = bytearray(m.records)
    struct.pack_into(">I", records, bundle.SHA_LEN, 10**9)
    header = json.loads(raw[16 : 16 + hlen])
    with pytest.raises(BundleError, match="exceeds the bound"):
        bundle.parse_manifest(_rebuild(header, zstandard.ZstdCompressor().compress(bytes(records))))


def test_wrong_magic_and_short_prefix() -> None:
    with pytest.raises(BundleError, match="wrong magic"):
        bundle.parse_manifest(b"GIF89a" + b"\0" * 30)
    with pytest.raises(BundleError, match="shorter than"):
        bundle.parse_manifest(b"FBX")


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    written = write(tmp_path_factory.mktemp("m"), slot_image(256 * 1024), chunk_size=16 * 1024)
    return _manifest(written)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_give_only_our_error(sample_manifest: bytes, data: st.DataObject) -> None:
    """Random bytes, truncations and byte flips of a real manifest: BundleError or a valid manifest."""
    mode = data.draw(st.sampled_from(["random", "truncate", "flip", "splice"]))
    raw = bytearray(sample_manifest)
    if mode == "random":
        blob = data.draw(st.binary(max_size=4096))
        raw = bytearray(bundle.MAGIC + blob) if data.draw(st.booleans()) else bytearray(blob)
    elif mode == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif mode == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(max_size=64))
    try:
        m = bundle.parse_manifest(bytes(raw))
    except BundleError:
        return
    assert m.count >= 1 and m.image_size > 0 and len(m.payload_offsets) == m.count
