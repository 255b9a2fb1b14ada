"""Reading a QEMU machine's disk after the power is cut: partitions as files, ext4 read with debugfs.

Nothing is mounted: what the device wrote is read back as it is on the disk.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path


def _table(raw: Path) -> list[dict[str, int]]:
    """The partitions of a raw disk image, as ``sfdisk -J`` reads them (the one parser of the table here)."""
    out = subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, text=True, check=True).stdout
    parts: list[dict[str, int]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


def partition(overlay: Path, number: int, work: Path, replay: bool = True) -> Path:
    """Partition ``number`` of a QEMU overlay, as a file debugfs can read.

    ``replay``: apply the ext4 journal to the copy first, as the next mount would
    (debugfs reads only the main filesystem; after a power cut the newest metadata is
    in the journal). ``replay=False`` gives the bytes exactly as the device left them.
    """
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "disk.raw"
    if not raw.exists() or raw.stat().st_mtime < overlay.stat().st_mtime:
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], check=True)
    part = _table(raw)[number - 1]
    out = work / f"p{number}.img"
    subprocess.run(
        ["dd", f"if={raw}", f"of={out}", "bs=1M", f"skip={part['start'] * 512}",
         f"count={part['size'] * 512}", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"],
        check=True,
    )  # fmt: skip
    if replay:
        done = subprocess.run(["e2fsck", "-E", "journal_only", "-p", str(out)], capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode < 4, f"p{number}: journal replay failed: {done.stdout}{done.stderr}"
    return out


def stat(fs: Path, path: str) -> tuple[int, int, int]:
    """(mode bits, uid, gid) of ``path`` in an ext4 image, read with debugfs (no mount)."""
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    mode = re.search(r"Mode:\s+(\d+)", out)
    uid = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert mode and uid, f"{path}: {out[-400:]}"
    return int(mode.group(1), 8), int(uid.group(1)), int(uid.group(2))


def cat(fs: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True, check=True).stdout


def ls(fs: Path, path: str) -> list[str]:
    out = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(fs)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    names = [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]
    return [name for name in names if name not in (".", "..")]


def partition_start(image: Path, number: int) -> int:
    """Byte offset of partition ``number`` in a raw image (a device's growth keeps the starts)."""
    return int(_table(image)[number - 1]["start"]) * 512


def overwrite(overlay: Path, offset: int, length: int) -> None:
    """Zero ``length`` bytes at ``offset`` of the disk behind a QEMU overlay (the machine must be off)."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -z {offset} {length}", str(overlay)],
                   check=True, capture_output=True)  # fmt: skip
