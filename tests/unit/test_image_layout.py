"""The partition layout: stable PARTUUIDs, no overlaps, and a table sfdisk writes as declared."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldbox_host.image import layout


def test_partitions_are_contiguous_aligned_and_named() -> None:
    parts = layout.partitions()
    assert [p.name for p in parts] == ["boot", "rootA", "rootB", "data"]
    assert parts[0].start_mib == layout.FIRST_MIB
    for a, b in itertools.pairwise(parts):
        assert a.start_mib + a.size_mib == b.start_mib
    assert parts[1].size_mib == parts[2].size_mib, "both root slots must hold the same root"
    assert layout.disk_size_bytes(parts) == (parts[-1].start_mib + parts[-1].size_mib) * layout.MIB


def test_partuuid_format_matches_kernel() -> None:
    assert layout.partuuid(2) == "46424f58-02"
    assert layout.partitions()[3].partuuid == "46424f58-04"


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk not installed (make host-deps)")
def test_sfdisk_writes_the_declared_table(tmp_path: Path) -> None:
    parts = layout.partitions(root_mib=8, boot_mib=8, data_mib=4)
    img = tmp_path / "disk.img"
    with open(img, "wb") as fh:
        fh.truncate(layout.disk_size_bytes(parts))
    subprocess.run(["sfdisk", "-q", str(img)], input=layout.sfdisk_script(parts), text=True, check=True)
    dump = subprocess.run(["sfdisk", "--dump", str(img)], capture_output=True, text=True, check=True).stdout
    assert "label-id: 0x46424f58" in dump
    raw = img.read_bytes()[:512]
    assert raw[440:444] == layout.DISK_ID.to_bytes(4, "little")
    for p in parts:
        assert f"start={p.start_bytes // 512:>12}, size={p.size_bytes // 512:>12}" in dump.replace("  ", "  ")
