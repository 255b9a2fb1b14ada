"""A slot-state write opens a read-only boot partition for its own duration only."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox import bootenv
from fieldbox.errors import BootStateError


def _mounts(tmp_path: Path, bootfs: Path, options: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text(
        "/dev/vda2 / ext4 ro,relatime 0 0\n"
        f"/dev/vda1 {bootfs} vfat {options},noatime,fmask=0022 0 0\n"
        "tmpfs /run tmpfs rw,nosuid 0 0\n"
    )
    return path


def test_read_only_mount_is_opened_then_closed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bootfs = tmp_path / "boot"
    bootfs.mkdir()
    calls: list[str] = []
    monkeypatch.setattr(bootenv, "_remount", lambda path, mode: calls.append(f"{path}:{mode}"))
    with bootenv.writable(bootfs, _mounts(tmp_path, bootfs, "ro")):
        assert calls == [f"{bootfs}:rw"]
    assert calls == [f"{bootfs}:rw", f"{bootfs}:ro"]
    calls.clear()
    with pytest.raises(RuntimeError), bootenv.writable(bootfs, _mounts(tmp_path, bootfs, "ro")):
        raise RuntimeError("the write failed")
    assert calls == [f"{bootfs}:rw", f"{bootfs}:ro"], "read-only again even when the write fails"


def test_read_write_mount_or_plain_directory_is_left_alone(tmp_path: Path) -> None:
    bootfs = tmp_path / "boot"
    bootfs.mkdir()
    assert not bootenv.mounted_read_only(bootfs, _mounts(tmp_path, bootfs, "rw"))
    assert not bootenv.mounted_read_only(bootfs, tmp_path / "no-such-mounts")
    assert not bootenv.mounted_read_only(tmp_path, _mounts(tmp_path, bootfs, "ro"))
    with bootenv.writable(bootfs, _mounts(tmp_path, bootfs, "rw")):
        pass  # no remount attempted (it would fail here: not root, not a mount point)


def test_a_failed_remount_names_the_partition(tmp_path: Path) -> None:
    with pytest.raises(BootStateError, match="cannot remount .* rw"):
        bootenv._remount(tmp_path, "rw")  # a plain directory is not a mount point
