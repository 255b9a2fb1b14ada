"""What goes on the FAT boot partition (p1).

- The U-Boot boot script and the two slot-state copies, made by the A/B boot
  work's :func:`fieldbox_host.bootfiles.build_boot_files` (``image/boot/boot.cmd``).
- For the Raspberry Pi: the GPU firmware from ``raspi-firmware``
  (bootcode.bin, start*.elf, fixup*.dat), ``u-boot-rpi``'s rpi_arm64 U-Boot as
  ``kernel8.img``, ``config.txt`` and the Pi device trees from the kernel package.
QEMU needs nothing more there: its U-Boot (``u-boot-qemu``) is given with ``-bios``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fieldbox_host.image import kmods, layout
from fieldbox_host.image.errors import ImageError

log = logging.getLogger("fieldbox.image")

PI_DTBS = (
    "bcm2837-rpi-3-b.dtb",
    "bcm2837-rpi-3-b-plus.dtb",
    "bcm2837-rpi-3-a-plus.dtb",
    "bcm2837-rpi-cm3-io3.dtb",
    "bcm2711-rpi-4-b.dtb",
    "bcm2711-rpi-400.dtb",
    "bcm2711-rpi-cm4-io.dtb",
)

EXTRA_BOOTARGS = "quiet panic=5"
"""Kernel arguments after the boot script's own: no kernel chatter on the console
(it slows TCG boots), and reboot 5 s after a panic (PID 1 died) so U-Boot's
boot counter can roll a bad slot back instead of the device hanging."""


def slot_files(out: Path, board: str) -> dict[str, Path]:
    """Boot script + the two slot-state copies for p1: name on the FAT -> file in ``out``.

    Made by :func:`fieldbox_host.bootfiles.build_boot_files` (the A/B boot work,
    ``image/boot/boot.cmd``); the roots are this layout's p2 and p3, slot A first.
    """
    from fieldbox_host.bootfiles import build_boot_files

    paths = build_boot_files(
        out,
        root_a_partuuid=layout.partuuid(layout.SLOTS["A"]),
        root_b_partuuid=layout.partuuid(layout.SLOTS["B"]),
        board="rpi" if board == "rpi" else "qemu-arm64",
        extra_bootargs=EXTRA_BOOTARGS,
    )
    return {p.name: p for p in paths}


def pi_files(source: Path, root: Path, firmware: Path, uboot_rpi: Path) -> dict[str, Path]:
    """The Raspberry Pi's boot files: firmware, U-Boot as kernel8.img, config.txt, device trees.

    ``firmware`` and ``uboot_rpi`` are the unpacked raspi-firmware and u-boot-rpi packages.
    """
    files: dict[str, Path] = {}
    fw_dir = firmware / "usr/lib/raspi-firmware"
    for pattern in ("bootcode.bin", "start*.elf", "fixup*.dat", "LICENCE.broadcom"):
        for p in sorted(fw_dir.glob(pattern)):
            files[p.name] = p
    if "bootcode.bin" not in files or "start4.elf" not in files:
        raise ImageError(f"raspi-firmware lacks bootcode.bin/start4.elf under {fw_dir}")
    uboot = uboot_rpi / "usr/lib/u-boot/rpi_arm64/u-boot.bin"
    if not uboot.is_file():
        raise ImageError("u-boot-rpi has no rpi_arm64/u-boot.bin")
    files["kernel8.img"] = uboot
    files["config.txt"] = source / "image/rpi/config.txt"
    kver = kmods.kernel_version(root)
    dtb_dir = root / f"usr/lib/linux-image-{kver}/broadcom"
    for name in PI_DTBS:
        p = dtb_dir / name
        if p.is_file():
            files[name] = p
    if "bcm2711-rpi-4-b.dtb" not in files:
        raise ImageError(f"the kernel package has no Pi device trees under {dtb_dir}")
    return files


def copy_named(files: dict[str, Path], dest: Path) -> None:
    """Copy the files into ``dest`` under their FAT names (for the Jetson/debug bundles)."""
    for name, src in files.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
