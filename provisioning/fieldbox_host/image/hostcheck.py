"""Check the build host before any long work: root, tools, binfmt, disk space.

Every failure is one line saying what is missing and the command that fixes it
(``make host-deps`` installs the Debian packages and enables binfmt).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fieldbox_host.image.errors import HostError

FIX = "run `make host-deps` (as root) to install it"

TOOLS: dict[str, str] = {
    # tool -> Debian package that provides it
    "mmdebstrap": "mmdebstrap",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "zstd": "zstd",
    "busybox": "busybox",
    "mkimage": "u-boot-tools",
    "mkenvimage": "u-boot-tools",
    "qemu-aarch64-static": "qemu-user-static",
    "tar": "tar",
}

QEMU_TOOLS: dict[str, str] = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
}

UBOOT_QEMU_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")

MIN_FREE_BYTES = 5 * 1024**3
"""A full build from scratch needs ~3.5 GiB (cache, staging tree, sparse image, zst)."""


def check_root() -> None:
    """mmdebstrap in root mode, device nodes and chroot need root."""
    if os.geteuid() != 0:
        raise HostError("building the image needs root (device nodes, chroot)", "run it with sudo")


def check_tools(tools: dict[str, str]) -> None:
    """Every tool is on PATH, or one line names the first missing one and its package."""
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            raise HostError(f"host tool {tool!r} is missing (Debian package {package})", FIX)


def check_binfmt() -> None:
    """arm64 programs must run through qemu-user (binfmt_misc) for the chroot steps."""
    try:
        state = BINFMT.read_text(encoding="ascii")
    except OSError:
        raise HostError("binfmt_misc has no qemu-aarch64 handler: arm64 programs cannot run", FIX) from None
    if not state.startswith("enabled"):
        raise HostError(
            "the qemu-aarch64 binfmt handler is disabled", "run `update-binfmts --enable qemu-aarch64`"
        )


def check_space(path: Path, need: int = MIN_FREE_BYTES) -> None:
    """Enough free space under ``path`` (created if missing) for a build."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need:
        raise HostError(
            f"only {free / 1024**3:.1f} GiB free under {path}, the build needs {need / 1024**3:.1f} GiB",
            "free some space or point --build-dir elsewhere",
        )


def check_qemu() -> None:
    """What ``fieldbox emulate`` and the system tests need."""
    check_tools(QEMU_TOOLS)
    if not UBOOT_QEMU_BIN.is_file():
        raise HostError(f"{UBOOT_QEMU_BIN} is missing (Debian package u-boot-qemu)", FIX)


def check_build_host(build_dir: Path, need_space: int = MIN_FREE_BYTES) -> None:
    """All checks for ``fieldbox build``, cheapest first."""
    check_root()
    check_tools(TOOLS)
    check_binfmt()
    check_space(build_dir, need_space)
