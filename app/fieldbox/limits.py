"""Input limits scaled to the device's memory (``$FIELDBOX_ETC/limits.toml``, optional).

A 512 MiB board has about 380 MiB left once the system and the services are
up (``make bench``: idle memory). What one input may cost is therefore a
share of the memory, not a constant, and each limit can be set in the file
(0 keeps the scaled value):

==================  ==============================  ===========================
limit               scaled value                    at 512 MiB / 2 GiB / 8 GiB
==================  ==============================  ===========================
max_item_bytes      memory / 32, 4 .. 64 MiB        16 MiB / 64 MiB / 64 MiB
max_decoded_pixels  memory / 48 bytes, 4 .. 64 Mpx  11 Mpx / 44 Mpx / 64 Mpx
decode_slots        one per 256 MiB, 1 .. CPUs      2 / min(8, CPUs) / CPUs
==================  ==============================  ===========================

``max_item_bytes`` is checked by the workflows before an input is read (a
larger file goes to ``failed/`` with the reason). ``max_decoded_pixels`` caps
every agent's ``preprocess.max_pixels`` in the runner; it counts the pixels
actually decoded, and a JPEG is decoded at 1/2, 1/4 or 1/8 scale when the
model needs no more (:func:`fieldbox.agents.image.decode_image`), so camera
photos of any size pass. ``decode_slots`` is how many requests the runner
works on at once, whatever the workflows' ``queue.workers`` ask for (an
RGB image costs about 7 bytes per pixel while it is decoded and fitted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fieldbox.ipc import MAX_PAYLOAD
from fieldbox.paths import etc_dir
from fieldbox.schema import doc_field, load, non_negative

MiB = 1024 * 1024


@dataclass(frozen=True)
class LimitsFile:
    """``limits.toml``: 0 means "scaled to this device's memory" (the module's table)."""

    max_item_bytes: int = doc_field(
        "largest input file taken, bytes (0: scaled)", default=0, check=non_negative
    )
    max_decoded_pixels: int = doc_field(
        "largest image decoded, in pixels after JPEG scaling (0: scaled)", default=0, check=non_negative
    )
    decode_slots: int = doc_field(
        "requests the runner works on at once (0: scaled)", default=0, check=non_negative
    )


@dataclass(frozen=True)
class Limits:
    """The limits in force."""

    max_item_bytes: int
    max_decoded_pixels: int
    decode_slots: int


def memory_bytes() -> int:
    """This machine's memory (``MemTotal``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def for_memory(total: int, cpus: int, settings: LimitsFile | None = None) -> Limits:
    """The limits for a machine of ``total`` bytes and ``cpus`` CPUs; the file's non-zero values win."""
    settings = settings or LimitsFile()
    item = _clamp(total // 32, 4 * MiB, MAX_PAYLOAD)
    pixels = _clamp(total // 48, 4_000_000, 64_000_000)
    slots = _clamp(total // (256 * MiB), 1, max(1, cpus))
    return Limits(
        max_item_bytes=min(settings.max_item_bytes or item, MAX_PAYLOAD),
        max_decoded_pixels=settings.max_decoded_pixels or pixels,
        decode_slots=settings.decode_slots or slots,
    )


def load_limits(path: Path | None = None) -> Limits:
    """The limits for this machine, with ``limits.toml`` applied (a missing file: all scaled)."""
    path = etc_dir() / "limits.toml" if path is None else path
    settings = load(LimitsFile, path) if path.exists() else LimitsFile()
    return for_memory(memory_bytes(), os.cpu_count() or 1, settings)
