"""A small A/B test disk and a real U-Boot under QEMU, for fast tests of boot.scr.

The disk has the fieldbox layout in miniature -- p1 FAT with ``boot.scr`` and the
two slot-state files, p2/p3 ext4 roots whose ``/boot`` holds small stand-in
kernel and initramfs files -- built without root (sfdisk, mkfs.vfat, mcopy,
mke2fs -d, dd). The stand-in kernel cannot start, so a test reads U-Boot's
console up to the script's ``fieldbox: booting slot X`` line (printed after
every state write, right before ``booti``), stops QEMU and reads the state files
back from the disk image with mtools.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from fieldbox import bootenv
from fieldbox_host.bootfiles import build_boot_files

UBOOT_QEMU = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
DISK_ID = "46424f58"
SECTOR = 512
# p1 FAT 16 MiB at 1 MiB, p2/p3 ext4 8 MiB each.
PARTS = {1: (2048, 32768), 2: (34816, 16384), 3: (51200, 16384)}
DISK_SECTORS = 67584
TOOLS = ("qemu-system-aarch64", "mkimage", "mkenvimage", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs")

BOOTING = re.compile(rb"fieldbox: booting slot ([AB]) count ([0-9a-f]+)")
STATE_LINE = re.compile(
    rb"fieldbox: state fbstate\.(\S+) generation ([0-9a-f]+): slot ([AB]) trial ([01]) count ([0-9a-f]+)"
)


def missing_tools() -> list[str]:
    """Host programs these tests need that are not installed."""
    out = [t for t in TOOLS if shutil.which(t) is None]
    if not UBOOT_QEMU.exists():
        out.append(str(UBOOT_QEMU))
    return out


def _run(*cmd: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def make_disk(workdir: Path, *, slots: tuple[str, ...] = ("A", "B"), sd_card: bool = False) -> Path:
    """A test disk whose listed slots hold a stand-in ``/boot/vmlinuz`` and ``/boot/initrd.img``.

    ``sd_card``: pad it to 64 MiB, a power of two, as QEMU's raspi3b SD card needs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "disk.img"
    with open(disk, "wb") as handle:
        handle.truncate(DISK_SECTORS * SECTOR)
    table = f"label: dos\nlabel-id: 0x{DISK_ID}\n" + "".join(
        f"start={start}, size={size}, type={'c' if n == 1 else '83'}{', bootable' if n == 1 else ''}\n"
        for n, (start, size) in PARTS.items()
    )
    _run("sfdisk", "-q", str(disk), stdin=table.encode())
    boot_dir = workdir / "bootfiles"
    files = build_boot_files(
        boot_dir,
        root_a_partuuid=f"{DISK_ID}-02",
        root_b_partuuid=f"{DISK_ID}-03",
        board="qemu-arm64",
    )
    fat = workdir / "p1.img"
    fat.unlink(missing_ok=True)
    # 512-byte clusters: every file spans many clusters, as on a real card's FAT.
    _run("mkfs.vfat", "-s", "1", "-C", str(fat), str(PARTS[1][1] * SECTOR // 1024))
    _run("mcopy", "-i", str(fat), *(str(f) for f in files), "::")
    _dd(fat, disk, PARTS[1][0])
    for slot, number in (("A", 2), ("B", 3)):
        root = workdir / f"root{slot}"
        (root / "boot").mkdir(parents=True, exist_ok=True)
        if slot in slots:
            (root / "boot" / "vmlinuz").write_bytes(f"stand-in kernel of slot {slot}\n".encode() * 64)
            (root / "boot" / "initrd.img").write_bytes(f"stand-in initramfs {slot}\n".encode() * 64)
        part = workdir / f"p{number}.img"
        part.unlink(missing_ok=True)
        _run("mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(part), f"{PARTS[number][1] // 2}k")
        _dd(part, disk, PARTS[number][0])
    if sd_card:
        os.truncate(disk, 64 * 1024 * 1024)
    return disk


def _dd(src: Path, disk: Path, start_sector: int) -> None:
    _run("dd", f"if={src}", f"of={disk}", "bs=512", f"seek={start_sector}", "conv=notrunc", "status=none")


def _fat(disk: Path) -> str:
    return f"{disk}@@{PARTS[1][0] * SECTOR}"


def read_copies(disk: Path) -> list[bytes | None]:
    """Both state files as read from the disk image with mtools (None: missing)."""
    out: list[bytes | None] = []
    for name in bootenv.COPY_NAMES:
        proc = subprocess.run(["mcopy", "-n", "-i", _fat(disk), f"::{name}", "-"], capture_output=True)
        out.append(proc.stdout if proc.returncode == 0 else None)
    return out


def read_selection(disk: Path) -> bootenv.Selection:
    """The slot state as U-Boot would choose it, read from the host with mtools."""
    return bootenv.select(read_copies(disk))


def write_copy(disk: Path, index: int, data: bytes) -> None:
    """Replace one state file on the disk image (mcopy -o)."""
    src = disk.parent / f"put-{index}"
    src.write_bytes(data)
    _run("mcopy", "-o", "-i", _fat(disk), str(src), f"::{bootenv.COPY_NAMES[index]}")


def delete_copy(disk: Path, index: int) -> None:
    """Remove one state file from the disk image (mdel)."""
    _run("mdel", "-i", _fat(disk), f"::{bootenv.COPY_NAMES[index]}")


def fsck_fat(disk: Path) -> tuple[int, str]:
    """``fsck.vfat -n`` of p1 (read-only): its exit code (0: clean) and report."""
    fat = disk.parent / "p1-check.img"
    start, count = PARTS[1]
    _run("dd", f"if={disk}", f"of={fat}", "bs=512", f"skip={start}", f"count={count}", "status=none")
    proc = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


class UBoot:
    """``qemu-system-aarch64 -M virt`` running Debian's qemu_arm64 U-Boot on a disk image.

    The console is read into a buffer by a thread; :meth:`wait_for` searches it.
    ``iops_limit`` (disk requests per second, QEMU ``throttling.iops-total``)
    holds each request back for a while, so a kill lands while a given request
    is pending; ``trace_writes`` logs each guest write request (QEMU trace
    ``virtio_blk_handle_write``) so a test can kill QEMU while the N-th write of
    a boot is still pending, i.e. before it reached the disk.
    """

    def __init__(
        self,
        disk: Path,
        *,
        iops_limit: int | None = None,
        trace_writes: bool = False,
        rpi: tuple[Path, Path] | None = None,
    ) -> None:
        if rpi is not None:
            # Raspberry Pi 3: rpi_arm64 U-Boot as the kernel, the Pi's DT, the disk as SD card,
            # U-Boot's console on the second UART.
            uboot_rpi, dtb = rpi
            cmd = [
                "qemu-system-aarch64", "-M", "raspi3b", "-kernel", str(uboot_rpi), "-dtb", str(dtb),
                "-serial", "null", "-serial", "stdio", "-display", "none", "-monitor", "none",
                "-no-reboot", "-drive", f"if=sd,format=raw,file={disk}",
            ]  # fmt: skip
        else:
            drive = f"if=none,id=d0,format=raw,file={disk}"
            if iops_limit:
                drive += f",throttling.iops-total={iops_limit}"
            cmd = [
                "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "256M",
                "-nographic", "-monitor", "none", "-nic", "none", "-no-reboot",
                "-bios", str(UBOOT_QEMU),
                "-drive", drive, "-device", "virtio-blk-device,drive=d0",
            ]  # fmt: skip
        if trace_writes:
            cmd += ["-trace", "virtio_blk_handle_write"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.console = bytearray()
        self.trace = bytearray()
        self._lock = threading.Lock()
        self._cursor = 0
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.console), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.trace), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: object, sink: bytearray) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                sink += chunk

    def wait_for(self, pattern: re.Pattern[bytes], timeout: float = 30.0) -> re.Match[bytes]:
        """The next match of ``pattern`` in the console after the previous one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                match = pattern.search(self.console, self._cursor)
            if match:
                self._cursor = match.end()
                return match
            if self.proc.poll() is not None:
                time.sleep(0.1)
                with self._lock:
                    match = pattern.search(self.console, self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                raise AssertionError(f"QEMU exited before {pattern.pattern!r}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.005)

    def skip_autoboot_delay(self) -> None:
        """Interrupt the 2 s autoboot countdown and run the same ``distro_bootcmd`` at once."""
        self.wait_for(re.compile(rb"Hit any key to stop autoboot"))
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        self.wait_for(re.compile(rb"(?:=>|U-Boot>) "))  # qemu_arm64 / rpi_arm64 prompt
        self.proc.stdin.write(b"run distro_bootcmd\n")
        self.proc.stdin.flush()

    def writes_seen(self) -> int:
        """Guest write requests traced so far."""
        with self._lock:
            return self.trace.count(b"virtio_blk_handle_write")

    def text(self) -> str:
        """The console so far."""
        with self._lock:
            return self.console.decode(errors="replace")

    def kill(self) -> None:
        """Cut the power: SIGKILL, no flush, no clean shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def uboot(disk: Path, **kwargs: object) -> Iterator[UBoot]:
    """A running U-Boot on ``disk``, killed on exit."""
    machine = UBoot(disk, **kwargs)  # type: ignore[arg-type]
    try:
        yield machine
    finally:
        machine.kill()


def boot_once(disk: Path, rpi: tuple[Path, Path] | None = None) -> tuple[str, int, str]:
    """One boot up to ``booti``: (slot booted, count it printed, console)."""
    with uboot(disk, rpi=rpi) as machine:
        machine.skip_autoboot_delay()
        match = machine.wait_for(BOOTING, timeout=60)
        return match.group(1).decode(), int(match.group(2), 16), machine.text()


def expected_boot(state: bootenv.SlotState) -> tuple[str, int, bootenv.SlotState | None]:
    """What boot.cmd must do with ``state``: (slot it boots, count it prints, state it writes or None).

    The test oracle for the script, written from image/boot/README.md's rules.
    """
    if not state.trial:
        return state.slot, state.count, None
    count = state.count + 1
    new = replace(state, count=count, generation=state.generation + 1)
    if count > state.limit:
        new = replace(
            new.with_good(state.slot, False), slot=bootenv.other_slot(state.slot), trial=False, count=0
        )
    return new.slot, new.count, new


def set_state(disk: Path, transition: Callable[[bootenv.SlotState], bootenv.SlotState]) -> bootenv.SlotState:
    """Apply a userspace transition the way ``fieldbox bootctl`` does (write rule included),
    with mtools instead of a mounted partition: returns the state written."""
    sel = read_selection(disk)
    new = bootenv.next_state(sel, transition(sel.state))
    write_copy(disk, sel.target, new.encode())
    return new
