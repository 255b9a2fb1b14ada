"""Board profiles: what ``fieldbox build --board NAME`` produces.

``qemu-arm64`` and ``rpi`` name the same disk image: its boot partition carries
what both need (the QEMU path boots through Debian's ``u-boot-qemu`` given with
``-bios``; the Pi's firmware loads ``u-boot-rpi``'s rpi_arm64 build as
``kernel8.img``), and the root is found by ``PARTUUID`` on either disk.
``jetson`` produces a root filesystem tarball for NVIDIA's L4T flash tools,
because the L4T board support package (kernel, bootloader, flash tools) is not
available from any registry we can build from.
"""

from __future__ import annotations

from dataclasses import dataclass

from fieldbox_host.image.errors import ImageError


@dataclass(frozen=True)
class Board:
    """One target of the build."""

    name: str
    output: str  # "disk" (bootable .img) or "tarball" (rootfs .tar.zst)
    description: str


BOARDS: dict[str, Board] = {
    "qemu-arm64": Board("qemu-arm64", "disk", "QEMU -M virt (U-Boot qemu_arm64); same image as rpi"),
    "rpi": Board("rpi", "disk", "Raspberry Pi 3/4 (64-bit U-Boot); same image as qemu-arm64"),
    "jetson": Board("jetson", "tarball", "NVIDIA Jetson: rootfs tarball for L4T's flash tools"),
}


def board(name: str) -> Board:
    """The board called ``name``, or a one-line error listing the valid names."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ImageError(
            f"unknown board {name!r}", f"choose one of: {', '.join(BOARDS)}"
        ) from None
