"""The initramfs cpio writer: a real cpio reader (busybox) lists what we wrote."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldbox_host.image.initramfs import Cpio


def test_newc_header_and_alignment() -> None:
    c = Cpio()
    c.file("init", b"#!/bin/sh\n", 0o755)
    data = c.finish()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!" in data


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed (make host-deps)")
def test_busybox_cpio_reads_the_archive(tmp_path: Path) -> None:
    c = Cpio()
    c.dir("bin")
    c.dir("dev")
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", b"x" * 1001, 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    raw = gzip.decompress(gzip.compress(c.finish()))
    listing = subprocess.run(
        ["busybox", "cpio", "-t", "-v"], input=raw, capture_output=True, check=True
    ).stdout.decode()
    assert "bin/busybox" in listing and "bin/sh -> busybox" in listing
    assert "crw" in listing and "dev/console" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["busybox", "cpio", "-i", "-d"], input=raw, cwd=out, check=True, capture_output=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/busybox").stat().st_size == 1001
    assert (out / "bin/sh").is_symlink()
