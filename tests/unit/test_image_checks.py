"""Bad input is refused with one clear line before any long work."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox_host.image import boards, debian, hostcheck, rootfs, wheels
from fieldbox_host.image.errors import HostError, ImageError


def test_unknown_board_lists_the_valid_ones() -> None:
    with pytest.raises(ImageError) as err:
        boards.board("pi5")
    assert "unknown board 'pi5'" in str(err.value)
    assert "qemu-arm64, rpi, jetson" in str(err.value)


def test_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(HostError, match=r"'mmdebstrap' is missing \(Debian package mmdebstrap\)"):
        hostcheck.check_tools({"mmdebstrap": "mmdebstrap"})


def test_missing_binfmt_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hostcheck, "BINFMT", tmp_path / "qemu-aarch64")
    with pytest.raises(HostError, match="binfmt_misc has no qemu-aarch64"):
        hostcheck.check_binfmt()
    (tmp_path / "qemu-aarch64").write_text("disabled\n")
    with pytest.raises(HostError, match="disabled"):
        hostcheck.check_binfmt()


def test_no_disk_space_is_reported(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="GiB free under"):
        hostcheck.check_space(tmp_path, need=1 << 60)


def test_cache_key_changes_with_inputs() -> None:
    a = debian.DebianInputs(("python3",), ("fs/ext4/",), "mmdebstrap 1.3.5")
    assert a.key() == debian.DebianInputs(("python3",), ("fs/ext4/",), "mmdebstrap 1.3.5").key()
    assert a.key() != debian.DebianInputs(("python3", "vim"), ("fs/ext4/",), "mmdebstrap 1.3.5").key()
    assert a.key() != debian.DebianInputs(("python3",), ("fs/",), "mmdebstrap 1.3.5").key()
    assert a.key() != debian.DebianInputs(("python3",), ("fs/ext4/",), "mmdebstrap 1.3.6").key()


def test_corrupt_cache_is_detected_and_removed(tmp_path: Path) -> None:
    key = "0123456789abcdef"
    tar = tmp_path / f"debian-{key}.tar"
    tar.write_bytes(b"rootfs" * 1000)
    from fieldbox_host.image.proc import sha256_file

    (tmp_path / f"debian-{key}.sha256").write_text(f"{sha256_file(tar)}  {tar.name}\n")
    (tmp_path / f"debian-{key}.packages").write_text("python3\t3.11.2-1+b1\tarm64\n")
    assert debian.lookup(tmp_path, key) is not None
    with open(tar, "r+b") as fh:  # one flipped byte
        fh.seek(100)
        fh.write(b"X")
    assert debian.lookup(tmp_path, key) is None
    assert not tar.exists(), "a corrupt cache entry must be removed so it is rebuilt"


def test_overlay_onto_merged_usr_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    overlay = tmp_path / "overlay"
    (overlay / "sbin").mkdir(parents=True)
    (overlay / "sbin/init").write_text("#!/bin/sh\n")
    with pytest.raises(ImageError, match="move it under rootfs-overlay/usr/sbin"):
        rootfs.copy_overlay(overlay, root)


def test_overlay_files_are_copied(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("debian\n")
    overlay = tmp_path / "overlay"
    (overlay / "etc/fieldbox").mkdir(parents=True)
    (overlay / "etc/hostname").write_text("fieldbox\n")
    (overlay / "etc/fieldbox/x.toml").write_text("a = 1\n")
    assert rootfs.copy_overlay(overlay, root) == 2
    assert (root / "etc/hostname").read_text() == "fieldbox\n"


def test_unpinned_wheel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "image/wheels.txt").write_text("# comment\ntflite-runtime>=2\n")
    with pytest.raises(ImageError, match="is not pinned"):
        wheels.requirements(tmp_path)


def test_non_root_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostcheck.os, "geteuid", lambda: 1000)
    with pytest.raises(HostError, match="needs root"):
        hostcheck.check_root()
