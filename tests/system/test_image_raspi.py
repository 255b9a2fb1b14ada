"""The same image's Raspberry Pi boot path under ``qemu-system-aarch64 -M raspi3b``.

QEMU has no VideoCore to run the Pi's GPU firmware, so it is given what that
firmware would load from p1 — the image's own ``kernel8.img`` (u-boot-rpi's
rpi_arm64 build) and ``bcm2837-rpi-3-b.dtb`` — and the image as the SD card.
From there everything is the Pi's: U-Boot rpi_arm64 runs our ``boot.scr`` from
the SD card, the kernel finds the root by PARTUUID on ``mmcblk0p2`` through the
initramfs' SD modules, and the device comes up to the same ready line. The card is
the release image, as a user would write it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox_host.image.build import BuildResult
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_pi_boot_path_reaches_ready_from_the_sd_card(release_image: BuildResult, tmp_path: Path) -> None:
    assert release_image.image is not None
    pi = Machine(release_image.image, tmp_path / "pi", board="raspi3b", debug_shell=False)
    try:
        _boot(pi)
    finally:
        pi.kill()


def _boot(pi: Machine) -> None:
    pi.start()
    pi.wait_for(r"Scanning mmc 0:1", timeout=120)  # rpi_arm64 U-Boot reads the SD card
    pi.wait_for(r"fieldbox: booting slot A", timeout=180)
    seconds = pi.wait_ready(timeout=600)
    assert "slot A" in pi.console_text()[pi.console_text().rfind("fieldbox ready") :]
    print(f"\nraspi3b: ready {seconds:.0f} s after QEMU start (emulated SD card: slow)")
