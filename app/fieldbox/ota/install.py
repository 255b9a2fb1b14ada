"""Streaming a bundle into the inactive root slot, chunk by chunk, each verified before it is written.

For every chunk of the manifest, in image order:

- all zeros: written as zeros (``BLKZEROOUT`` on a block device), nothing fetched;
- every block already in the running slot (its hint is in the local index):
  assembled from local disk, kept only if the chunk's sha256 matches;
- otherwise: fetched with an HTTP Range request covering the whole run of
  such chunks, decompressed with a bound, sha256-checked, then written.

Nothing of the bundle is kept on ``/data``: bytes go from the socket to the
slot. Every :data:`SYNC_BYTES` (64 MiB) of image the slot is synced and the position
saved (``progress.json``), so a power cut resumes at the first chunk not yet
synced, and a dropped connection resumes with a Range request from the first
chunk not yet written (at most one chunk's bytes are fetched twice). When the
last chunk is written the page cache is dropped and the whole slot is read
back against the manifest's image sha256; only a slot that passes is ever
handed to ``bootctl set-trial``.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox.errors import BundleError, UpdateError, UpdateRefusedError
from fieldbox.ota import bundle
from fieldbox.ota.bundle import Chunk, Manifest
from fieldbox.ota.client import Candidate
from fieldbox.ota.http import Http
from fieldbox.ota.state import Progress

log = logging.getLogger("fieldbox.ota")

SYNC_BYTES = 64 * 1024 * 1024
WRITE_BYTES = 1024 * 1024
READ_SIZE = 1024 * 1024
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272


def device_size(fd: int) -> int:
    """Size of an open block device or file."""
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    except OSError:
        return os.fstat(fd).st_size


def ext4_size(fd: int) -> int | None:
    """The size of the ext4 filesystem at the start of ``fd`` (from its superblock), or None."""
    sb = os.pread(fd, 1024, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        return None
    lo, log_block = struct.unpack_from("<I", sb, 0x04)[0], struct.unpack_from("<I", sb, 0x18)[0]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & 0x80 else 0
    return int(((hi << 32) | lo) * (1024 << log_block))


class LocalIndex:
    """Where the running slot holds each block: block hint -> block number, sorted for lookup.

    Zero blocks are not indexed (zeros are never read from disk). Two arrays of
    4-byte numbers: 1.6 MB for a 768 MiB slot.
    """

    ZERO = -2
    MISSING = -1

    def __init__(self, path: Path, block_size: int) -> None:
        import numpy as np

        self.path = path
        self.block_size = block_size
        self.zero_hint = bundle.block_hint(bytes(block_size))
        hints = array.array("I")
        blocks = array.array("I")
        self.fd = os.open(path, os.O_RDONLY)
        size = ext4_size(self.fd) or device_size(self.fd)
        self.size = size - size % block_size
        started = time.monotonic()
        pos = 0
        words = block_size // 8
        while pos < self.size:
            data = os.pread(self.fd, min(READ_SIZE, self.size - pos), pos)
            usable = len(data) - len(data) % block_size
            if not usable:
                break
            nonzero = np.frombuffer(data, dtype=np.uint64, count=usable // 8).reshape(-1, words).any(axis=1)
            view = memoryview(data)
            first = pos // block_size
            for b in np.flatnonzero(nonzero).tolist():
                hints.append(bundle.block_hint(view[b * block_size : (b + 1) * block_size]))
                blocks.append(first + b)
            pos += usable
        h = np.frombuffer(hints, dtype=np.uint32) if hints else np.zeros(0, dtype=np.uint32)
        order = np.argsort(h, kind="stable")
        self._hints = h[order]
        self._blocks = (np.frombuffer(blocks, dtype=np.uint32) if blocks else np.zeros(0, np.uint32))[order]
        self._steps = np.arange(4096, dtype=np.int64)
        self.seconds = time.monotonic() - started
        log.info(
            "indexed %d blocks of the running slot (%d MiB) in %.1f s", len(h), self.size >> 20, self.seconds
        )

    def locate(self, manifest: Manifest) -> Any:
        """For every chunk and block of ``manifest``: the byte offset of a local block with the same
        hint, :data:`ZERO` for a zero block, :data:`MISSING` if there is none (shape chunks x blocks)."""
        import numpy as np

        per = manifest.chunk_size // manifest.block_size
        table = np.frombuffer(manifest.records, dtype=np.uint8).reshape(manifest.count, manifest.record_size)
        wanted = (
            table[:, bundle.SHA_LEN + 4 :].copy().view(">u4").astype(np.uint32).reshape(manifest.count, per)
        )
        pos = np.searchsorted(self._hints, wanted)
        pos_clipped = np.minimum(pos, max(len(self._hints) - 1, 0))
        found = (
            (len(self._hints) > 0) & (self._hints[pos_clipped] == wanted)
            if len(self._hints)
            else (np.zeros_like(wanted, dtype=bool))
        )
        out = np.full(wanted.shape, self.MISSING, dtype=np.int64)
        if len(self._hints):
            out[found] = self._blocks[pos_clipped[found]].astype(np.int64) * self.block_size
        out[wanted == self.zero_hint] = self.ZERO
        return out

    def assemble(self, chunk: Chunk, offsets: Any) -> bytes | None:
        """The chunk from local blocks at ``offsets`` (a row of :meth:`locate`), if its sha256 matches.

        Blocks that lie one after the other on disk (an unchanged region: the usual case) are
        read with one ``pread``."""
        row = offsets.tolist()
        blocks = chunk.length // self.block_size
        zero = bytes(self.block_size)
        parts = []
        b = 0
        while b < blocks:
            start = row[b]
            if start == self.MISSING:
                return None
            if start == self.ZERO:
                parts.append(zero)
                b += 1
                continue
            end = b + 1
            while end < blocks and row[end] == start + (end - b) * self.block_size:
                end += 1
            parts.append(os.pread(self.fd, (end - b) * self.block_size, start))
            b = end
        raw = b"".join(parts)
        return raw if bundle.chunk_matches(chunk, raw) else None

    def extent(self, chunk: Chunk, offsets: Any) -> int | None:
        """Where the running slot holds the whole chunk in one piece (its blocks one after the other),
        or None."""
        import numpy as np

        first = int(offsets[0])
        blocks = chunk.length // self.block_size
        if first < 0:
            return None
        if blocks > len(self._steps):
            self._steps = np.arange(blocks, dtype=np.int64)
        expected = first + self.block_size * self._steps[:blocks]
        return first if bool((offsets[:blocks] == expected).all()) else None

    def close(self) -> None:
        """Close the slot device."""
        os.close(self.fd)


@dataclass
class InstallReport:
    """What an install did (for ``ota history``, the bench and the tests)."""

    version: str
    slot: str
    image_bytes: int
    bundle_bytes: int
    downloaded: int = 0
    """Bytes received over HTTP for the bundle (manifest and chunks)."""
    chunks_local: int = 0
    chunks_remote: int = 0
    chunks_zero: int = 0
    chunks_resumed: int = 0
    """Chunks skipped because a previous, interrupted install had written and synced them."""
    retries: int = 0
    index_s: float = 0.0
    write_s: float = 0.0
    verify_s: float = 0.0


def fetch_manifest(
    http: Http, cand: Candidate, retries: int = 8, sleep: Callable[[float], None] = time.sleep
) -> Manifest:
    """The bundle's manifest, checked against the signed target metadata."""
    info = cand.info
    data = b"".join(http.fetch(cand.url, 0, info.manifest_length, retries, sleep))
    if hashlib.sha256(data).hexdigest() != info.manifest_sha256:
        raise UpdateRefusedError(
            f"release {info.version}: the manifest does not match its signed sha256",
            "the repository or the connection altered it",
        )
    manifest = bundle.parse_manifest(data)
    if manifest.version != info.version or manifest.board != info.board:
        raise UpdateRefusedError(
            f"release {info.version}: the manifest says {manifest.board} "
            f"{manifest.version}, the signed metadata {info.board} {info.version}"
        )
    if manifest.bundle_length != cand.length:
        bigger = "larger" if manifest.bundle_length > cand.length else "smaller"
        raise UpdateRefusedError(
            f"release {info.version}: the bundle is {bigger} ({manifest.bundle_length} "
            f"bytes) than its signed metadata says ({cand.length})"
        )
    return manifest


class Installer:
    """Writes one release into one slot device."""

    def __init__(
        self,
        http: Http,
        target: Path,
        running: Path | None,
        slot: str,
        retries: int = 8,
        progress: Callable[[int, int], None] | None = None,
        state_dir: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = http
        self.target = target
        self.running = running
        self.slot = slot
        self.retries = retries
        self.progress = progress
        self.state_dir = state_dir
        self.sleep = sleep

    def install(self, cand: Candidate) -> InstallReport:
        """Write and verify the slot; :class:`UpdateError` (and an untouched running slot) on failure."""
        received0 = self.http.received
        resumes = self.http.resumes
        manifest = fetch_manifest(self.http, cand, self.retries, self.sleep)
        report = InstallReport(cand.info.version, self.slot, manifest.image_size, cand.length)
        report.retries = self.http.resumes - resumes
        try:
            fd = os.open(self.target, os.O_RDWR)
        except OSError as exc:
            raise UpdateError(f"cannot open slot {self.slot} ({self.target}): {exc.strerror}") from None
        try:
            capacity = device_size(fd)
            if capacity < manifest.image_size:
                raise UpdateRefusedError(
                    f"release {cand.info.version} needs {manifest.image_size} bytes, slot "
                    f"{self.slot} holds {capacity}"
                )
            start = self._resume_point(cand)
            report.chunks_resumed = start
            index = None
            if self.running is not None and any(not c.zero for c in manifest.chunks()):
                index = LocalIndex(self.running, manifest.block_size)
                report.index_s = index.seconds
            try:
                t0 = time.monotonic()
                self._write(fd, cand, manifest, start, index, report)
                report.write_s = time.monotonic() - t0
            finally:
                if index is not None:
                    index.close()
            t0 = time.monotonic()
            self._read_back(fd, manifest)
            report.verify_s = time.monotonic() - t0
        finally:
            os.close(fd)
        Progress.clear(self.state_dir)
        report.downloaded = self.http.received - received0
        return report

    def _resume_point(self, cand: Candidate) -> int:
        saved = Progress.load(self.state_dir)
        if saved is not None and saved.bundle_sha256 == cand.sha256 and saved.slot == self.slot:
            log.info("resuming the write of %s at chunk %d", cand.info.version, saved.next_chunk)
            return saved.next_chunk
        Progress(cand.sha256, self.slot, 0).save(self.state_dir)
        return 0

    def _write(
        self,
        fd: int,
        cand: Candidate,
        manifest: Manifest,
        start: int,
        index: LocalIndex | None,
        report: InstallReport,
    ) -> None:
        located = index.locate(manifest) if index is not None else None

        def local(c: Chunk) -> bool:
            """Every block of ``c`` has a hint match in the running slot (cheap: no disk read)."""
            blocks = c.length // manifest.block_size
            return located is not None and not (located[c.index, :blocks] == LocalIndex.MISSING).any()

        unsynced = 0
        i = start
        count = manifest.count
        held: list[bytes] = []  # local chunks assembled, not yet written: one pwrite per MiB
        held_at = 0

        def flush() -> None:
            if held:
                os.pwrite(fd, b"".join(held), held_at)
                held.clear()

        while i < count:
            chunk = manifest.chunk(i)
            ready: list[tuple[Chunk, bytes]] = []
            if not chunk.zero and index is not None and located is not None and local(chunk):
                ready = self._local_run(index, located, manifest, chunk, local)
            if ready:
                if not held:
                    held_at = chunk.offset
                held.extend(raw for _, raw in ready)
                if len(held) * manifest.chunk_size >= WRITE_BYTES:
                    flush()
                report.chunks_local += len(ready)
                done = [c for c, _ in ready]
            else:
                flush()
                run = [chunk]  # this chunk and the run after it of the same kind (zeros, or to fetch)
                while i + len(run) < count:
                    nxt = manifest.chunk(i + len(run))
                    if nxt.zero != chunk.zero or (not nxt.zero and local(nxt)):
                        break
                    run.append(nxt)
                if chunk.zero:
                    self._zero(fd, chunk.offset, run[-1].offset + run[-1].length - chunk.offset)
                    report.chunks_zero += len(run)
                    done = run
                else:
                    done = self._fetch_run(fd, cand, run, report)
            for c in done:
                unsynced += c.length
            i = done[-1].index + 1
            if unsynced >= SYNC_BYTES or i == count:
                flush()
                os.fdatasync(fd)
                Progress(cand.sha256, self.slot, i).save(self.state_dir)
                unsynced = 0
            if self.progress is not None:
                self.progress(min(i * manifest.chunk_size, manifest.image_size), manifest.image_size)

    @staticmethod
    def _local_run(
        index: LocalIndex, located: Any, manifest: Manifest, chunk: Chunk, local: Callable[[Chunk], bool]
    ) -> list[tuple[Chunk, bytes]]:
        """``chunk`` (and the local chunks after it that continue it on disk, up to 1 MiB: one
        ``pread`` for all) from the running slot, each checked against its sha256; the verified
        ones from the start, so an empty list means ``chunk`` itself must be fetched."""
        start = index.extent(chunk, located[chunk.index])
        if start is None:
            raw = index.assemble(chunk, located[chunk.index])
            return [(chunk, raw)] if raw is not None else []
        run = [chunk]
        while (len(run) + 1) * manifest.chunk_size <= WRITE_BYTES and chunk.index + len(run) < manifest.count:
            nxt = manifest.chunk(chunk.index + len(run))
            if (
                nxt.zero
                or not local(nxt)
                or index.extent(nxt, located[nxt.index]) != start + nxt.offset - chunk.offset
            ):
                break
            run.append(nxt)
        data = os.pread(index.fd, run[-1].offset + run[-1].length - chunk.offset, start)
        out = []
        for c in run:
            raw = data[c.offset - chunk.offset : c.offset - chunk.offset + c.length]
            if not bundle.chunk_matches(c, raw):
                break
            out.append((c, raw))
        return out

    def _zero(self, fd: int, offset: int, length: int) -> None:
        """Zeros over ``[offset, offset + length)``: one ``BLKZEROOUT`` (the device may just discard),
        or written in 1 MiB pieces where that is not available (a file)."""
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError:
            zeros = bytes(min(length, WRITE_BYTES))
            for at in range(offset, offset + length, len(zeros)):
                os.pwrite(fd, zeros[: offset + length - at], at)

    def _fetch_run(self, fd: int, cand: Candidate, run: list[Chunk], report: InstallReport) -> list[Chunk]:
        """Fetch, verify and write a run of consecutive chunks (broken transfers resume in ``Http.fetch``;
        a chunk that fails its sha256 is fetched once more, then the install fails)."""
        written: list[Chunk] = []
        bad = 0
        while len(written) < len(run):
            todo = run[len(written) :]
            start = todo[0].payload_offset
            end = todo[-1].payload_offset + todo[-1].compressed_length
            buf = bytearray()
            pos = 0
            resumes = self.http.resumes
            try:
                for piece in self.http.fetch(cand.url, start, end, self.retries, self.sleep):
                    buf += piece
                    while pos < len(todo) and len(buf) >= todo[pos].compressed_length:
                        c = todo[pos]
                        raw = bundle.decode_chunk(c, bytes(buf[: c.compressed_length]))
                        del buf[: c.compressed_length]
                        os.pwrite(fd, raw, c.offset)
                        written.append(c)
                        report.chunks_remote += 1
                        pos += 1
                        bad = 0
            except BundleError as exc:
                bad += 1
                if bad >= 2:
                    raise BundleError(
                        f"release {cand.info.version}: {exc.message} twice",
                        "the repository's bundle is corrupt or was altered in transit",
                    ) from None
                log.warning("%s; fetching it again", exc)
            finally:
                report.retries += self.http.resumes - resumes
        return written

    def _read_back(self, fd: int, manifest: Manifest) -> None:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, manifest.image_size, os.POSIX_FADV_DONTNEED)
        digest = hashlib.sha256()
        pos = 0
        while pos < manifest.image_size:
            data = os.pread(fd, min(READ_SIZE, manifest.image_size - pos), pos)
            if not data:
                break
            digest.update(data)
            pos += len(data)
        if pos != manifest.image_size or digest.hexdigest() != manifest.image_sha256:
            Progress.clear(self.state_dir)
            raise UpdateError(
                f"slot {self.slot} does not read back as written (sha256 of {pos} bytes)",
                "the storage may be failing; the slot is not used",
            )
