"""Kernel module selection: keep-list globs plus the dependency closure, in load order."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox_host.image import kmods
from fieldbox_host.image.errors import ImageError

DEPS = {
    "kernel/fs/ext4/ext4.ko": ["kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko"],
    "kernel/fs/jbd2/jbd2.ko": [],
    "kernel/fs/mbcache.ko": [],
    "kernel/lib/crc16.ko": [],
    "kernel/drivers/block/virtio_blk.ko": [],
    "kernel/drivers/gpu/drm/huge.ko": ["kernel/lib/crc16.ko"],
    "kernel/sound/core/snd.ko.xz": [],
}


def test_directory_pattern_keeps_dependencies() -> None:
    keep = kmods.select(DEPS, ["fs/ext4/"])
    assert keep == {
        "kernel/fs/ext4/ext4.ko", "kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko",
    }  # fmt: skip


def test_glob_matches_compressed_module_names() -> None:
    assert kmods.matches("kernel/sound/core/snd.ko.xz", "sound/core/snd.ko")
    assert not kmods.matches("kernel/drivers/gpu/drm/huge.ko", "drivers/block/*")


def test_closure_orders_dependencies_first() -> None:
    order = kmods.closure(DEPS, ["virtio_blk", "ext4"])
    assert order[0] == "kernel/drivers/block/virtio_blk.ko"
    assert order.index("kernel/fs/jbd2/jbd2.ko") < order.index("kernel/fs/ext4/ext4.ko")
    assert order[-1] == "kernel/fs/ext4/ext4.ko"


def test_closure_names_a_missing_module() -> None:
    with pytest.raises(ImageError, match="'nosuch'"):
        kmods.closure(DEPS, ["nosuch"])


def test_trim_deletes_unselected_files(tmp_path: Path) -> None:
    kdir = tmp_path / "usr/lib/modules/6.1.0-test"
    for mod in DEPS:
        (kdir / mod).parent.mkdir(parents=True, exist_ok=True)
        (kdir / mod).write_bytes(b"\x7fELF")
    (kdir / "modules.dep").write_text("".join(f"{m}: {' '.join(d)}\n" for m, d in DEPS.items()))
    kept, removed = kmods.trim(tmp_path, ["fs/ext4/", "drivers/block/virtio_blk.ko"])
    assert (kept, removed) == (5, 2)
    assert not (kdir / "kernel/drivers/gpu").exists()
    assert not (kdir / "kernel/sound").exists()
    assert (kdir / "kernel/fs/ext4/ext4.ko").exists()


def test_repository_keep_list_parses() -> None:
    patterns = kmods.read_patterns(Path(__file__).parents[2] / "image/kernel-modules.txt")
    assert "fs/ext4/" in patterns and "drivers/virtio/" in patterns
    assert all(not p.startswith("#") for p in patterns)
