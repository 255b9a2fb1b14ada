"""The same boot.scr under the Raspberry Pi's U-Boot (rpi_arm64) on QEMU's raspi3b.

U-Boot (``kernel8.img``) and the Pi 3 device tree are taken from the built
image's boot partition, so this checks what the image ships: the Pi flavour
finds boot.scr on the SD card (``mmc 0:1``), reads and writes the slot state
with the same rules (``fatwrite`` on mmc), keeps its own ``uboot.env`` apart,
and passes the firmware's device tree (``${fdt_addr}``) to the kernel.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import abdisk
import pytest

from fieldbox import bootctl
from fieldbox_host.image import layout
from fieldbox_host.image.build import BuildResult

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture(scope="module")
def rpi_firmware(fieldbox_image: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(rpi_arm64 U-Boot, bcm2837-rpi-3-b.dtb) copied out of the image's p1 with mtools."""
    assert fieldbox_image.image is not None
    out = tmp_path_factory.mktemp("rpi")
    fat = f"{fieldbox_image.image}@@{layout.partitions()[0].start_bytes}"
    for name in ("kernel8.img", "bcm2837-rpi-3-b.dtb"):
        subprocess.run(["mcopy", "-n", "-i", fat, f"::{name}", str(out / name)], check=True)
    return out / "kernel8.img", out / "bcm2837-rpi-3-b.dtb"


def test_rpi_uboot_counts_trials_and_rolls_back(tmp_path: Path, rpi_firmware: tuple[Path, Path]) -> None:
    disk = abdisk.make_disk(tmp_path, sd_card=True)
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B"))
    seen = []
    for _ in range(4):
        before = abdisk.read_selection(disk).state
        slot, count, text = abdisk.boot_once(disk, rpi=rpi_firmware)
        assert (slot, count) == abdisk.expected_boot(before)[:2]
        assert "Scanning mmc 0:1" in text
        assert f"root=PARTUUID=46424f58-0{2 if slot == 'A' else 3} ro rootwait fieldbox.slot={slot} " in text
        seen.append((slot, count))
    assert seen == [("B", 1), ("B", 2), ("B", 3), ("A", 0)]
    state = abdisk.read_selection(disk).state
    assert (state.slot, state.trial, state.good_b) == ("A", False, False)
