"""The A/B slot state on the boot partition: the ONE definition of its bytes and rules.

U-Boot's ``boot.scr`` (``image/boot/boot.cmd``), ``fieldbox bootctl`` on the
device and the host's tests all read and write the same two files on the FAT
boot partition, ``fbstate.0`` and ``fbstate.1``. Each is a U-Boot environment
image of exactly :data:`ENV_SIZE` bytes, as ``mkenvimage -s 16384 -p 0`` makes
it and as U-Boot's ``env export -c -s 0x4000`` / ``env import -c`` write and
check it::

    offset 0   CRC-32 (zlib/IEEE) of bytes 4..end, little-endian
    offset 4   "key=value\\0key=value\\0...\\0" (keys sorted, as U-Boot exports them)
    ...        zero padding up to ENV_SIZE (covered by the CRC)

Variables (numbers are lowercase hexadecimal without ``0x``, because U-Boot's
``setexpr`` writes them that way):

==========  ======================================================================
fb_format   ``1``: the version of this layout
fb_gen      generation, +1 on every write; the valid copy with the higher one wins
fb_slot     ``A`` or ``B``: the slot U-Boot boots
fb_trial    ``1`` while ``fb_slot`` is on trial (boots are counted), else ``0``
fb_count    boots tried so far in this trial (U-Boot adds 1 before each trial boot)
fb_limit    boots allowed in a trial; when ``fb_count`` would exceed it, U-Boot
            switches ``fb_slot`` to the other slot and ends the trial
fb_good_A   ``1`` once slot A was marked good, ``0`` after it failed or was marked bad
fb_good_B   the same for slot B
==========  ======================================================================

Rules, identical in ``boot.cmd`` and here:

* A copy is *valid* when it has exactly ENV_SIZE bytes, its CRC matches and
  every variable above is present and well formed.
* Reading: of the valid copies take the one with the higher generation; on a
  tie, copy 0. No valid copy: :data:`FALLBACK_STATE` -- slot A *on trial*, so
  that if A does not come up and get marked good, the boot counter moves the
  device to B.
* Writing: generation + 1, written in place into the copy that was NOT read
  (copy 0 when none was valid). The copy in use is never touched, so a power
  cut during the write leaves it intact; a torn write shows up as a bad CRC and
  the older copy wins, exactly as before the write began.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fieldbox import durable
from fieldbox.errors import BootStateError

ENV_SIZE = 16384
"""Size of each state file in bytes (``mkenvimage -s``, ``env export -s``)."""

COPY_NAMES: tuple[str, str] = ("fbstate.0", "fbstate.1")
"""The two state files in the root of the FAT boot partition. Not ``uboot.env``:
the Pi's U-Boot reads that name as its whole environment."""

SLOTS: tuple[str, str] = ("A", "B")
FORMAT_VERSION = 1
DEFAULT_LIMIT = 3
MAX_GENERATION = 0xFFFF_FFF0
"""U-Boot's ``itest`` compares 32-bit values; refuse to write past this (never reached in practice)."""

VARIABLES: tuple[str, ...] = (
    "fb_count",
    "fb_format",
    "fb_gen",
    "fb_good_A",
    "fb_good_B",
    "fb_limit",
    "fb_slot",
    "fb_trial",
)
"""Every variable of the state, in U-Boot's export (sorted) order."""

_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{1,8}")
_CRC_BYTES = 4


def other_slot(slot: str) -> str:
    """The slot that is not ``slot``."""
    check_slot(slot)
    return "B" if slot == "A" else "A"


def check_slot(slot: str) -> str:
    """``slot`` if it names a slot, else a BootStateError."""
    if slot not in SLOTS:
        raise BootStateError(f"unknown slot {slot!r}", "a slot is A or B")
    return slot


# -- the byte layout -------------------------------------------------------------


def encode_env(variables: Mapping[str, str], size: int = ENV_SIZE) -> bytes:
    """A U-Boot env image of ``size`` bytes holding ``variables`` (sorted, zero-padded).

    Byte for byte what ``env export -c -s <size>`` and ``mkenvimage -s <size> -p 0``
    (given the lines in sorted order) produce.
    """
    body = bytearray()
    for key in sorted(variables):
        value = variables[key]
        if not key or "=" in key or "\0" in key or "\n" in key:
            raise BootStateError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise BootStateError(f"value of {key} contains a NUL byte")
        body += f"{key}={value}".encode() + b"\0"
    body += b"\0"  # an empty entry ends the list
    room = size - _CRC_BYTES
    if len(body) > room:
        raise BootStateError(f"environment needs {len(body)} bytes but only {room} fit in {size}")
    data = bytes(body) + bytes(room - len(body))
    return zlib.crc32(data).to_bytes(_CRC_BYTES, "little") + data


def decode_env(image: bytes, size: int = ENV_SIZE) -> dict[str, str]:
    """The variables of a U-Boot env image; BootStateError when its size or CRC is wrong.

    Accepts any padding byte (``mkenvimage`` pads with 0xff by default, U-Boot with 0).
    """
    if len(image) != size:
        raise BootStateError(f"wrong size: {len(image)} bytes, expected {size}")
    stored = int.from_bytes(image[:_CRC_BYTES], "little")
    data = image[_CRC_BYTES:]
    if zlib.crc32(data) != stored:
        raise BootStateError("bad CRC (torn or corrupted write)")
    variables: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.find(b"\0", pos)
        if end < 0:
            raise BootStateError("environment is not NUL-terminated")
        entry = data[pos:end].decode("utf-8", errors="replace")
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise BootStateError(f"malformed entry {entry[:40]!r}")
        variables[key] = value
        pos = end + 1
    return variables


# -- the state -------------------------------------------------------------------


@dataclass(frozen=True)
class SlotState:
    """What U-Boot decides from: which slot to boot, and whether that boot is counted."""

    generation: int
    slot: str
    trial: bool
    count: int
    limit: int
    good_a: bool
    good_b: bool

    def is_good(self, slot: str) -> bool:
        """Whether ``slot`` is marked good."""
        return self.good_a if check_slot(slot) == "A" else self.good_b

    def with_good(self, slot: str, good: bool) -> SlotState:
        """This state with ``slot``'s good flag set to ``good``."""
        if check_slot(slot) == "A":
            return replace(self, good_a=good)
        return replace(self, good_b=good)

    def to_env(self) -> dict[str, str]:
        """The U-Boot variables of this state (numbers in lowercase hex, as ``setexpr``)."""
        return {
            "fb_count": f"{self.count:x}",
            "fb_format": str(FORMAT_VERSION),
            "fb_gen": f"{self.generation:x}",
            "fb_good_A": "1" if self.good_a else "0",
            "fb_good_B": "1" if self.good_b else "0",
            "fb_limit": f"{self.limit:x}",
            "fb_slot": self.slot,
            "fb_trial": "1" if self.trial else "0",
        }

    def encode(self) -> bytes:
        """The state file's bytes."""
        return encode_env(self.to_env())

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SlotState:
        """Parse the variables strictly (the same checks ``boot.cmd`` makes, and the numbers)."""
        missing = [k for k in VARIABLES if k not in env]
        if missing:
            raise BootStateError(f"missing {', '.join(missing)}")
        if env["fb_format"] != str(FORMAT_VERSION):
            raise BootStateError(f"fb_format={env['fb_format']!r}, expected {FORMAT_VERSION}")
        if env["fb_slot"] not in SLOTS:
            raise BootStateError(f"fb_slot={env['fb_slot']!r} is not A or B")
        flags = {}
        for key in ("fb_trial", "fb_good_A", "fb_good_B"):
            if env[key] not in ("0", "1"):
                raise BootStateError(f"{key}={env[key]!r} is not 0 or 1")
            flags[key] = env[key] == "1"
        numbers = {}
        for key in ("fb_gen", "fb_count", "fb_limit"):
            if not _HEX.fullmatch(env[key]):
                raise BootStateError(f"{key}={env[key]!r} is not a 32-bit hexadecimal number")
            numbers[key] = int(env[key], 16)
        return cls(
            generation=numbers["fb_gen"],
            slot=env["fb_slot"],
            trial=flags["fb_trial"],
            count=numbers["fb_count"],
            limit=numbers["fb_limit"],
            good_a=flags["fb_good_A"],
            good_b=flags["fb_good_B"],
        )

    @classmethod
    def decode(cls, image: bytes) -> SlotState:
        """Parse a state file's bytes; BootStateError says what is wrong with them."""
        return cls.from_env(decode_env(image))


FALLBACK_STATE = SlotState(
    generation=0, slot="A", trial=True, count=0, limit=DEFAULT_LIMIT, good_a=False, good_b=False
)
"""Used when neither copy is valid (the same values as in ``boot.cmd``)."""


def initial_state(slot: str = "A", limit: int = DEFAULT_LIMIT) -> SlotState:
    """The state a freshly built image starts with: ``slot`` committed and good."""
    check_slot(slot)
    if not 1 <= limit <= 0xFF:
        raise BootStateError(f"boot limit {limit} out of range", "use 1..255")
    state = SlotState(
        generation=1, slot=slot, trial=False, count=0, limit=limit, good_a=False, good_b=False
    )
    return state.with_good(slot, True)


def initial_files(slot: str = "A", limit: int = DEFAULT_LIMIT) -> tuple[bytes, bytes]:
    """Contents of ``fbstate.0`` and ``fbstate.1`` for a new image.

    Both files exist at full size from the start, so every later write only
    overwrites allocated clusters and never changes the FAT. Copy 0 holds
    generation 1, copy 1 the same state at generation 0.
    """
    state = initial_state(slot, limit)
    return state.encode(), replace(state, generation=0).encode()


# -- choosing between the two copies ------------------------------------------------


@dataclass(frozen=True)
class CopyStatus:
    """One of the two files as read: its state, or why it cannot be used."""

    index: int
    state: SlotState | None
    error: str | None

    @property
    def name(self) -> str:
        """File name on the boot partition."""
        return COPY_NAMES[self.index]

    @property
    def valid(self) -> bool:
        """Whether this copy can be used."""
        return self.state is not None


@dataclass(frozen=True)
class Selection:
    """Both copies and the decision taken from them."""

    copies: tuple[CopyStatus, CopyStatus]
    current: int | None
    """Index of the copy in use, or None when neither is valid."""

    @property
    def state(self) -> SlotState:
        """The state in force (FALLBACK_STATE when no copy is valid)."""
        if self.current is None:
            return FALLBACK_STATE
        state = self.copies[self.current].state
        assert state is not None
        return state

    @property
    def target(self) -> int:
        """The copy the next write goes to: never the one in use."""
        return 0 if self.current is None else 1 - self.current


def inspect_copy(index: int, image: bytes | None) -> CopyStatus:
    """Classify one copy's bytes (None: the file is missing)."""
    if image is None:
        return CopyStatus(index, None, "missing")
    try:
        return CopyStatus(index, SlotState.decode(image), None)
    except BootStateError as exc:
        return CopyStatus(index, None, str(exc))


def select(images: Sequence[bytes | None]) -> Selection:
    """Apply the reading rule to the bytes of copy 0 and copy 1 (None = missing)."""
    if len(images) != 2:
        raise ValueError("exactly two copies")
    copies = (inspect_copy(0, images[0]), inspect_copy(1, images[1]))
    current: int | None = None
    for copy in copies:
        if copy.state is None:
            continue
        best = None if current is None else copies[current].state
        if best is None or copy.state.generation > best.generation:
            current = copy.index
    return Selection(copies, current)


def next_state(selection: Selection, new: SlotState) -> SlotState:
    """``new`` with the generation that follows the one in force."""
    generation = selection.state.generation + 1
    if generation > MAX_GENERATION:
        raise BootStateError(
            f"slot state generation {generation:#x} is at its limit",
            "reflash the boot partition's fbstate.0 and fbstate.1",
        )
    return replace(new, generation=generation)


# -- files on the mounted boot partition ------------------------------------------------


def read_copies(bootfs: Path) -> list[bytes | None]:
    """The raw bytes of both copies in ``bootfs`` (None where a file is missing)."""
    if not bootfs.is_dir():
        raise BootStateError(
            f"boot partition not found at {bootfs}",
            "mount it there or set FIELDBOX_BOOTFS to where it is mounted",
        )
    out: list[bytes | None] = []
    for name in COPY_NAMES:
        try:
            with open(bootfs / name, "rb") as handle:
                # Read one byte more than a valid copy has, to tell "too long" apart.
                out.append(handle.read(ENV_SIZE + 1))
        except FileNotFoundError:
            out.append(None)
        except OSError as exc:
            raise BootStateError(f"cannot read {bootfs / name}: {exc.strerror}") from exc
    return out


def read_state(bootfs: Path) -> Selection:
    """Read both copies in ``bootfs`` and choose as U-Boot does."""
    return select(read_copies(bootfs))


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` in place and make it durable.

    On FAT this is safer than temp-file + rename: a file of unchanged size keeps
    its clusters, so the write touches only its own data clusters and its
    directory entry (whose other bytes are rewritten unchanged); no FAT chain is
    freed or allocated. vfat has no journal and its rename is not atomic (a cut
    can leave both names, neither, or lost clusters), and a rename also rewrites
    the directory sector the *other* copy's entry shares. A torn in-place write
    only breaks this copy's CRC, which the reading rule tolerates. Only when the
    file is missing or has the wrong size (never after a build) is it created
    with :func:`fieldbox.durable.atomic_write`.
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        durable.atomic_write(path, data)
        return
    try:
        if os.fstat(fd).st_size != len(data):
            os.close(fd)
            fd = -1
            durable.atomic_write(path, data)
            return
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    durable.fsync_dir(path.parent)


@contextlib.contextmanager
def locked(bootfs: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``bootfs`` so two writers on the device do not interleave."""
    try:
        fd = os.open(bootfs, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BootStateError(
            f"boot partition not found at {bootfs}: {exc.strerror}",
            "mount it there or set FIELDBOX_BOOTFS to where it is mounted",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


MOUNTS = Path("/proc/self/mounts")


def mounted_read_only(bootfs: Path, mounts: Path = MOUNTS) -> bool:
    """Is ``bootfs`` a mount point mounted ``ro``? (False for a plain directory: tests, hosts.)"""
    try:
        target = str(bootfs.resolve())
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    found = False
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1].replace("\\040", " ") == target:
            found = "ro" in fields[3].split(",")  # the last mount on a point is the one in force
    return found


def _remount(bootfs: Path, mode: str) -> None:
    import subprocess  # only on the device's rare state writes

    proc = subprocess.run(["mount", "-o", f"remount,{mode}", str(bootfs)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise BootStateError(
            f"cannot remount {bootfs} {mode}: {proc.stderr.strip() or f'exit {proc.returncode}'}",
            "run as root; check the boot partition with fsck.vfat",
        )


@contextlib.contextmanager
def writable(bootfs: Path, mounts: Path = MOUNTS) -> Iterator[None]:
    """Make a read-only boot partition writable for the block's duration, then read-only again.

    The boot partition is mounted read-only while the system runs (a power cut
    cannot leave a half-written FAT behind from anything but a state write);
    only a slot-state write opens it, under :func:`locked`, for as long as the
    write and its fsync take.
    """
    if not mounted_read_only(bootfs, mounts):
        yield
        return
    _remount(bootfs, "rw")
    try:
        yield
    finally:
        _remount(bootfs, "ro")


def write_state(bootfs: Path, selection: Selection, new: SlotState) -> tuple[int, SlotState]:
    """Write ``new`` (generation = in force + 1) into the copy not in use.

    Returns the index written and the state as written. ``selection`` must be
    what was read under the same :func:`locked` block.
    """
    state = next_state(selection, new)
    index = selection.target
    path = bootfs / COPY_NAMES[index]
    try:
        write_in_place(path, state.encode())
    except OSError as exc:
        hint = None
        if exc.errno == errno.EROFS:
            hint = f"remount it read-write: mount -o remount,rw {bootfs}"
        elif exc.errno == errno.ENOSPC:
            hint = "free space on the boot partition"
        raise BootStateError(f"cannot write {path}: {exc.strerror}", hint) from exc
    return index, state
