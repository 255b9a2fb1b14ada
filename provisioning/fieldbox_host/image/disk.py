"""Writing the disk image without loop mounts or root-only mounts.

``sfdisk`` writes the MBR into the image file; each filesystem is made in its
own file (``mkfs.vfat -C`` + ``mcopy`` for p1, ``mke2fs -d`` for the roots)
and copied in at its offset, skipping zero blocks so the image stays sparse.
The data partition (p4) is left blank but for :data:`~fieldbox_host.image.layout.BLANK_DATA_MARK`:
the device creates its filesystem on first boot (only where it finds the mark) and
grows it to the size of the card.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fieldbox_host.image import layout
from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.proc import run

BLOCK = 1 << 20


def make_fat(path: Path, size_mib: int, files: dict[str, Path], label: str = "FIELDBOX") -> None:
    """A FAT32 filesystem file holding ``files`` (name in the filesystem -> host file)."""
    path.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", label, "-i", f"{layout.DISK_ID:08x}",
         "-C", path, str(size_mib * 1024)],
        what="mkfs.vfat")  # fmt: skip
    dirs = sorted({str(Path(name).parent) for name in files if str(Path(name).parent) != "."})
    for d in dirs:
        run(["mmd", "-i", path, f"::/{d}"], what=f"mmd {d}")
    for name, src in sorted(files.items()):
        run(["mcopy", "-i", path, "-o", src, f"::/{name}"], what=f"mcopy {name}")


ROOT_UUID = "46424f58-726f-4f74-8000-000000000001"
"""Fixed filesystem UUID and directory-hash seed of the root slots: with the file times and
the build time fixed too, the same tree always gives the same bytes (reproducible root slots,
so an update bundle's chunks stay the same where the files did)."""
ROOT_HASH_SEED = "46424f58-6861-4f73-8000-000000000001"


def make_ext4(path: Path, size_mib: int, tree: Path, label: str, epoch: int = 0) -> None:
    """An ext4 filesystem file of ``size_mib`` filled from the directory ``tree``.

    No journal: a root slot is mounted read-only and written only whole (by an update).
    Reproducible: fixed UUID and hash seed, superblock times from ``epoch``
    (``E2FSPROGS_FAKE_TIME``), and every inode's ctime set to its mtime afterwards
    (``mke2fs -d`` copies the build host's ctimes, which no one can set).
    """
    path.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size_mib * layout.MIB)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch else None
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", label, "-m", "0",
         "-U", ROOT_UUID, "-E", f"root_owner=0:0,hash_seed={ROOT_HASH_SEED}", "-d", tree, path],
        what=f"mke2fs of {label}", env=env)  # fmt: skip
    _set_ctimes(path, tree, epoch)
    run(["e2fsck", "-fn", path], what=f"e2fsck of {label}")


def _set_ctimes(image: Path, tree: Path, epoch: int) -> None:
    """Set each inode's ctime to its mtime with one ``debugfs -w`` script."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(tree):
        base = Path(dirpath)
        names: list[str | None] = [*sorted(dirnames), *sorted(filenames)]
        if base == tree:
            names.insert(0, None)
        for name in names:
            p = base if name is None else base / name
            rel = "/" + str(p.relative_to(tree)) if p != tree else "/"
            if '"' in rel or "\n" in rel or "\\" in rel:
                raise ImageError(f"{rel!r}: a file name debugfs cannot quote is in the root filesystem")
            lines.append(f'sif "{rel}" ctime @{int(os.lstat(p).st_mtime)}\n')
    script = image.with_name(image.name + ".ctimes")
    script.write_text("".join(lines), encoding="utf-8")
    try:
        fake = {"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch else {}
        proc = subprocess.run(["debugfs", "-w", "-f", str(script), str(image)], capture_output=True,
                              text=True, check=False, env={**os.environ, **fake})  # fmt: skip
    finally:
        script.unlink(missing_ok=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise ImageError(f"debugfs could not set the ctime of every file: {(errors or ['failed'])[0]}")


def used_bytes_ext4(path: Path) -> int:
    """Used bytes of an ext4 filesystem file, from its superblock (``dumpe2fs -h``)."""
    out = run(["dumpe2fs", "-h", path], what="dumpe2fs")
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    block = int(fields["Block size"])
    return (int(fields["Block count"]) - int(fields["Free blocks"])) * block


def copy_into(image: Path, part: layout.Partition, fs_file: Path) -> None:
    """Copy ``fs_file`` into the image at the partition's offset, leaving zero blocks as holes."""
    size = fs_file.stat().st_size
    if size > part.size_bytes:
        raise ImageError(f"{fs_file.name} ({size} bytes) does not fit partition {part.name}")
    with open(fs_file, "rb") as src, open(image, "r+b") as dst:
        offset = 0
        while True:
            block = src.read(BLOCK)
            if not block:
                break
            if block.count(0) != len(block):
                dst.seek(part.start_bytes + offset)
                dst.write(block)
            offset += len(block)
        dst.flush()
        os.fsync(dst.fileno())


def assemble(image: Path, parts: list[layout.Partition], contents: dict[int, Path]) -> None:
    """Create the sparse image file, write the partition table, copy each filesystem in."""
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(layout.disk_size_bytes(parts))
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", image], what="sfdisk",
        input_text=layout.sfdisk_script(parts))  # fmt: skip
    for part in parts:
        if part.number in contents:
            copy_into(image, part, contents[part.number])
        if part.number == layout.DATA_PARTITION:
            with open(image, "r+b") as fh:
                fh.seek(part.start_bytes)
                fh.write(layout.BLANK_DATA_MARK)


def read_table(image: Path, name: str) -> str:
    """The image's partition table as ``sfdisk --dump`` prints it, the file called ``name``
    (the manifest names the final image, not the build host's temporary path)."""
    return run(["sfdisk", "--dump", image], what="sfdisk --dump").replace(str(image), name)
