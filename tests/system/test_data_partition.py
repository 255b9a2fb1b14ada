"""The data partition is never formatted over: a damaged one is repaired from a backup superblock, or the
boot is degraded and the partition left byte for byte as it was.

On the release image, watched through its serial console, its disk read back after the power is cut.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from diskread import cat, overwrite, partition, partition_start

from fieldbox_host.image.build import BuildResult
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

BLOCK = 4096
"""The data filesystem's block size on a disk this size (mke2fs's default above 512 MiB)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_a_damaged_data_partition_is_repaired_or_left_untouched_never_formatted(
    release_image: BuildResult, tmp_path: Path
) -> None:
    assert release_image.image is not None
    machine = Machine(release_image.image, tmp_path / "vm", debug_shell=False)
    p4 = partition_start(release_image.image, 4)
    try:
        machine.start()
        machine.wait_for(r"first boot: creating the data filesystem", 120)
        machine.wait_ready(timeout=300)
        machine.kill()
        first = partition(machine.overlay, 4, tmp_path / "first")
        kek, owners = cat(first, "/keys/kek"), cat(first, "/.owners")
        assert len(kek) == 32 and owners == b"users-1\n"

        # 1. The primary superblock is gone (its whole block zeroed): a backup one repairs it.
        overwrite(machine.overlay, p4, BLOCK)
        machine.start()
        machine.wait_for(r"does not mount: checking it", 120)
        machine.wait_for(r"trying the backup superblock at block 32768", 60)
        machine.wait_ready(timeout=300)
        assert "creating the data filesystem" not in machine.console_text()
        machine.kill()
        repaired = partition(machine.overlay, 4, tmp_path / "repaired")
        assert cat(repaired, "/keys/kek") == kek, "the store's key must survive"
        assert cat(repaired, "/.owners") == owners
        assert len(cat(repaired, "/store/fieldbox.db")) > 0

        # 2. The primary and every backup superblock gone: degraded, and not one byte written.
        for block in (0, 32768, 98304):
            overwrite(machine.overlay, p4 + block * BLOCK, BLOCK)
        before = _sha256(partition(machine.overlay, 4, tmp_path / "broken", replay=False))
        machine.start()
        line = machine.wait_for(r"fieldbox degraded: [^\n]*", 400).group(0)
        assert "e2fsck -p could not repair it" in line and "left untouched" in line, line
        assert "creating the data filesystem" not in machine.console_text()
        machine.kill()
        assert _sha256(partition(machine.overlay, 4, tmp_path / "after", replay=False)) == before
    finally:
        machine.kill()
