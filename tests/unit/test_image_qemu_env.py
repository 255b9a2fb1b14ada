"""The QEMU runner's preset U-Boot environment and the wheel installer's console scripts."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from fieldbox_host.image.wheels import console_scripts
from fieldbox_host.qemu import FLASH_BANK_BYTES, UBOOT_BIN, UBOOT_ENV_SIZE, default_env, write_env_flash


def _fake_uboot(tmp_path: Path) -> Path:
    env = b"bootcmd=run distro_bootcmd\0bootdelay=2\0kernel_addr_r=0x40400000\0distro_bootcmd=x=y; boot\0\0"
    path = tmp_path / "u-boot.bin"
    path.write_bytes(b"\x00code\x01\x02" + b"\0" + env + b"tail")
    return path


def test_env_flash_has_valid_crc_and_presets(tmp_path: Path) -> None:
    flash = tmp_path / "env.flash"
    assert write_env_flash(flash, _fake_uboot(tmp_path))
    data = flash.read_bytes()
    assert len(data) == FLASH_BANK_BYTES
    crc, area = int.from_bytes(data[:4], "little"), data[4:UBOOT_ENV_SIZE]
    assert crc == zlib.crc32(area)
    entries = dict(e.split(b"=", 1) for e in area.rstrip(b"\0").split(b"\0"))
    assert entries[b"bootdelay"] == b"0"
    assert entries[b"boot_targets"] == b"virtio0"
    assert entries[b"distro_bootcmd"] == b"x=y; boot", "values containing '=' must survive"


def test_unrecognised_uboot_binary_means_no_preset(tmp_path: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"\0" * 1000)
    assert default_env(other) is None
    assert not write_env_flash(tmp_path / "env.flash", other)


@pytest.mark.skipif(not UBOOT_BIN.is_file(), reason="u-boot-qemu not installed (make host-deps)")
def test_debian_uboot_default_env_is_found() -> None:
    env = default_env()
    assert env is not None
    assert env[b"bootcmd"] == b"run distro_bootcmd"


def test_console_scripts_parsed_from_entry_points() -> None:
    text = "[console_scripts]\nsupervisord = supervisor.supervisord:main\n\n[gui_scripts]\nx = y:z\n"
    assert console_scripts(text) == {"supervisord": ("supervisor.supervisord", "main")}


def test_wheel_install_merges_data_dirs_and_writes_scripts(tmp_path: Path) -> None:
    import zipfile

    from fieldbox_host.image.errors import ImageError
    from fieldbox_host.image.wheels import SITE, Wheel, install

    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("demo/__init__.py", "X = 1\n")
        zf.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        zf.writestr("demo-1.0.data/scripts/ignored", "#!/bin/sh\n")
        zf.writestr("demo-1.0.dist-info/entry_points.txt", "[console_scripts]\ndemo = demo.cli:main\n")
    root = tmp_path / "root"
    install([Wheel("demo", "1.0", whl)], root)
    assert (root / SITE / "demo/__init__.py").read_text() == "X = 1\n"
    assert (root / SITE / "demo_extra.py").exists()
    script = (root / "usr/local/bin/demo").read_text()
    assert script.startswith("#!/usr/bin/python3") and "from demo.cli import main" in script

    evil = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/passwd", "x")
    with pytest.raises(ImageError, match="escapes site-packages"):
        install([Wheel("evil", "1.0", evil)], root)
