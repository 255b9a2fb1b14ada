"""The disk layout: one definition used by the image build, the boot files and the tests.

An MBR table with a fixed disk identifier, so every partition has a stable
``PARTUUID`` (``<disk id>-<nn>``) and the same image finds its root on virtio
(QEMU) and on an SD card (Raspberry Pi)::

    p1  boot    FAT32   U-Boot script, slot state, Pi firmware and U-Boot, device trees
    p2  rootA   ext4    read-only root filesystem, slot A
    p3  rootB   ext4    read-only root filesystem, slot B
    p4  data    ext4    /data; left blank in the image, created and grown on first boot
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
SECTOR = 512

DISK_ID = 0x46424F58
"""MBR disk identifier ("FBOX"): partition n is ``PARTUUID=46424f58-0n``."""


@dataclass(frozen=True)
class Partition:
    """One MBR partition of the image."""

    number: int
    name: str
    start_mib: int
    size_mib: int
    type_hex: str  # MBR partition type: "c" FAT32 LBA, "83" Linux

    @property
    def start_bytes(self) -> int:
        """Byte offset of the partition in the image."""
        return self.start_mib * MIB

    @property
    def size_bytes(self) -> int:
        """Size of the partition in bytes."""
        return self.size_mib * MIB

    @property
    def partuuid(self) -> str:
        """The kernel's ``PARTUUID`` of this partition (``root=PARTUUID=...``)."""
        return partuuid(self.number)


def partuuid(number: int) -> str:
    """``PARTUUID`` of partition ``number`` (1-based) on a fieldbox disk."""
    return f"{DISK_ID:08x}-{number:02d}"


BOOT_MIB = 128
ROOT_MIB = 768
DATA_MIB = 64
FIRST_MIB = 4  # room for the MBR and alignment; the Pi's firmware does not care

SLOTS = {"A": 2, "B": 3}
"""Root slot name -> partition number."""
DATA_PARTITION = 4

BLANK_DATA_MARK = b"FIELDBOX-BLANK-DATA-1\n"
"""The first bytes of a data partition that has never held a filesystem (the build writes them).

The device creates the data filesystem only where it reads this mark (``fieldbox-init``),
never because a superblock could not be read: a damaged filesystem is checked and
repaired, or the boot is reported degraded, but it is never formatted over. The mark
stays until the new filesystem has mounted once, so a power cut during the first
``mkfs`` is retried at the next boot."""


def partitions(
    root_mib: int = ROOT_MIB, boot_mib: int = BOOT_MIB, data_mib: int = DATA_MIB
) -> list[Partition]:
    """The four partitions, packed one after the other from ``FIRST_MIB``."""
    out: list[Partition] = []
    start = FIRST_MIB
    for number, name, size, ptype in (
        (1, "boot", boot_mib, "c"),
        (2, "rootA", root_mib, "83"),
        (3, "rootB", root_mib, "83"),
        (4, "data", data_mib, "83"),
    ):
        out.append(Partition(number, name, start, size, ptype))
        start += size
    return out


def disk_size_bytes(parts: list[Partition]) -> int:
    """Size of the whole image: the end of the last partition."""
    last = parts[-1]
    return last.start_bytes + last.size_bytes


def sfdisk_script(parts: list[Partition]) -> str:
    """Input for ``sfdisk`` that writes this table."""
    lines = ["label: dos", f"label-id: 0x{DISK_ID:08x}", "unit: sectors", ""]
    for p in parts:
        boot = ", bootable" if p.number == 1 else ""
        lines.append(
            f"start={p.start_bytes // SECTOR}, size={p.size_bytes // SECTOR}, type={p.type_hex}{boot}"
        )
    return "\n".join(lines) + "\n"
