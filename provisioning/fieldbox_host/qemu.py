"""Boot a fieldbox image under ``qemu-system-aarch64 -M virt`` and talk to it.

Used by ``fieldbox emulate`` and by the system tests. The machine is the small
device the image targets: ``-cpu cortex-a53 -m 512M -smp 2``, Debian's
``u-boot-qemu`` as firmware (``-bios``), the image on virtio-blk through a
qcow2 copy-on-write overlay (the built image is never written), a virtio RNG,
and a restricted user-mode NIC (DHCP works, nothing leaves the host).

Console: on the terminal (``-serial mon:stdio``, Ctrl-A X quits), or on a TCP
port with ``wait=on`` so a pyserial ``socket://`` client sees everything from
the U-Boot banner on. Debug images also run a root shell on a virtio console
(``/dev/hvc0`` in the guest, a Unix socket here) that :meth:`Machine.run`
drives with begin/end markers, so command output never mixes with kernel
messages on the serial console.

Typical use::

    m = Machine(Path("build/fieldbox-0.1.0-arm64.img"), workdir)
    m.start()
    m.wait_for(r"fieldbox ready", timeout=120)
    print(m.run("fieldbox store query").output)
    m.kill()            # power cut
    m.start()           # boots again from the same overlay
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from fieldbox.errors import FieldboxError

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
READY_PATTERN = r"fieldbox ready: (\d+) programs RUNNING, ([0-9.]+) s since kernel start, slot (\w+)"
"""What ``fieldbox-ready`` prints on the console once every supervisord program is RUNNING."""
DEGRADED_PATTERN = r"fieldbox degraded: [^\n]*"
UBOOT_PATTERN = r"U-Boot 20\d\d"
QEMU = "qemu-system-aarch64"
GUESTFWD_ADDR = "10.0.2.100"
"""The one address a guest may reach (port 80): forwarded to a loopback port of the host."""


class QemuError(FieldboxError):
    """QEMU could not start, the guest did not answer in time, or a guest command failed."""


@dataclass(frozen=True)
class CommandResult:
    """What a command run in the guest returned."""

    rc: int
    output: str

    def check(self, what: str = "guest command") -> str:
        """The output, or :class:`QemuError` if the exit code was not 0."""
        if self.rc != 0:
            raise QemuError(f"{what} exited {self.rc}: {self.output.strip()[-500:]}")
        return self.output


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def create_overlay(image: Path, overlay: Path, grow_mib: int = 0, power_of_two: bool = False) -> None:
    """A qcow2 overlay over the raw ``image`` (virtual size = image + ``grow_mib``).

    ``power_of_two`` rounds the size up to a power of two, which QEMU's SD card
    model (``-M raspi3b``) requires.
    """
    if not image.is_file():
        raise QemuError(f"image {image} does not exist", "run `make image` first")
    size = image.stat().st_size + grow_mib * 1024 * 1024
    if power_of_two:
        size = 1 << (size - 1).bit_length()
    overlay.unlink(missing_ok=True)
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.resolve()),
         str(overlay), str(size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise QemuError(f"qemu-img create failed: {proc.stderr.strip()}")


UBOOT_ENV_SIZE = 0x40000
"""qemu_arm64 U-Boot: environment in flash bank 1 at offset 0, 256 KiB, CRC32 header, no redundancy."""
FLASH_BANK_BYTES = 64 * 1024 * 1024
PRESET = {b"bootdelay": b"0", b"boot_targets": b"virtio0"}
"""What the preset environment changes: no 2 s autoboot countdown, no scan of absent
qfw/usb/scsi devices; the boot itself still runs U-Boot's distro boot and our boot.scr."""


def default_env(uboot_bin: Path = UBOOT_BIN) -> dict[bytes, bytes] | None:
    """U-Boot's built-in default environment, read out of ``u-boot.bin`` (None if not found)."""
    data = uboot_bin.read_bytes()
    start = data.find(b"\0bootcmd=")
    if start < 0:
        return None
    end = data.find(b"\0\0", start + 1)
    env: dict[bytes, bytes] = {}
    for entry in data[start + 1 : end].split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if not sep:
            return None
        env[key] = value
    return env if b"distro_bootcmd" in env and b"kernel_addr_r" in env else None


def write_env_flash(path: Path, uboot_bin: Path = UBOOT_BIN) -> bool:
    """Flash bank 1 holding U-Boot's default environment with :data:`PRESET` applied.

    QEMU's U-Boot cannot ``saveenv`` (QEMU 7.2 pflash), but it reads a valid
    environment from flash at start; this is the emulator's equivalent of a
    board whose environment was set once. Returns False (boot with U-Boot's
    defaults) if the default environment cannot be found in this u-boot.bin.
    """
    env = default_env(uboot_bin)
    if env is None:
        return False
    env.update(PRESET)
    body = b"".join(k + b"=" + v + b"\0" for k, v in env.items()) + b"\0"
    area = body.ljust(UBOOT_ENV_SIZE - 4, b"\0")
    with open(path, "wb") as fh:
        fh.write(zlib.crc32(area).to_bytes(4, "little") + area)
        fh.truncate(FLASH_BANK_BYTES)
    return True


BOOT_PARTITION_OFFSET = 4 * 1024 * 1024
"""Byte offset of p1 in a fieldbox image (``fieldbox_host.image.layout.FIRST_MIB``)."""
RASPI_DTB = "bcm2837-rpi-3-b.dtb"


def raspi_files(image: Path, workdir: Path) -> tuple[Path, Path]:
    """The Pi boot path's U-Boot (``kernel8.img``) and device tree, copied out of the image's p1.

    QEMU's ``-M raspi3b`` has no GPU firmware to run ``bootcode.bin``/``start.elf``,
    so it is given what that firmware would load: the image's own 64-bit U-Boot and DT.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = (workdir / "kernel8.img", workdir / RASPI_DTB)
    for path in out:
        proc = subprocess.run(
            ["mcopy", "-n", "-o", "-i", f"{image}@@{BOOT_PARTITION_OFFSET}", f"::/{path.name}", str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise QemuError(f"cannot read {path.name} from the image's boot partition: {proc.stderr.strip()}")
    return out


def raspi_command(
    overlay: Path, kernel8: Path, dtb: Path, serial_port: int, serial: str = "tcp"
) -> list[str]:
    """``-M raspi3b`` (1 GiB, fixed): the SD card is the overlay; console on the mini UART (2nd serial)."""
    tcp = f"tcp:127.0.0.1:{serial_port},server=on,wait=on"
    console = ["-serial", "mon:stdio"] if serial == "stdio" else ["-monitor", "none", "-serial", tcp]
    return [
        QEMU, "-M", "raspi3b", "-kernel", str(kernel8), "-dtb", str(dtb), "-display", "none",
        "-name", "fieldbox-raspi3b", "-serial", "null", *console,
        "-drive", f"if=sd,format=qcow2,file={overlay}",
    ]  # fmt: skip


def qemu_command(
    overlay: Path,
    *,
    memory_mib: int = 512,
    smp: int = 2,
    serial: str = "stdio",
    serial_port: int = 0,
    shell_socket: Path | None = None,
    network: bool = True,
    env_flash: Path | None = None,
    guestfwd_port: int | None = None,
) -> list[str]:
    """The qemu-system-aarch64 command line for one boot of the overlay."""
    cmd = [
        QEMU, "-M", "virt", "-cpu", "cortex-a53", "-m", f"{memory_mib}M", "-smp", str(smp),
        "-bios", str(UBOOT_BIN), "-display", "none", "-name", "fieldbox",
        "-drive", f"if=none,id=d0,format=qcow2,file={overlay}", "-device", "virtio-blk-device,drive=d0",
        "-device", "virtio-rng-device",
        # a hardware watchdog (PCI, Linux's i6300esb driver); QEMU resets the board when it fires
        "-device", "i6300esb",
    ]  # fmt: skip
    if env_flash is not None:
        cmd += ["-drive", f"if=pflash,unit=1,format=raw,file={env_flash}"]
    if serial == "stdio":
        cmd += ["-serial", "mon:stdio"]
    elif serial == "tcp":
        cmd += ["-serial", f"tcp:127.0.0.1:{serial_port},server=on,wait=on", "-monitor", "none"]
    else:
        raise QemuError(f"unknown serial mode {serial!r}", "use stdio or tcp")
    if shell_socket is not None:
        cmd += [
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=dbg,path={shell_socket},server=on,wait=off",
            "-device", "virtconsole,chardev=dbg",
        ]  # fmt: skip
    # virtio over MMIO like the disk (virtio-net-pci wants an iPXE ROM file we do not need)
    netdev = "user,id=n0,restrict=on"
    if guestfwd_port is not None:
        # restrict=on: no address but this one; each guest connection runs one nc to the host's loopback
        netdev += f",guestfwd=tcp:{GUESTFWD_ADDR}:80-cmd:nc 127.0.0.1 {guestfwd_port}"
    cmd += (["-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
            if network else ["-nic", "none"])  # fmt: skip
    return cmd


class Machine:
    """One emulated device: an overlay on an image, a QEMU process, its console and debug shell."""

    def __init__(
        self,
        image: Path,
        workdir: Path,
        *,
        memory_mib: int = 512,
        smp: int = 2,
        grow_mib: int = 512,
        debug_shell: bool = True,
        board: str = "virt",
        guestfwd_port: int | None = None,
    ) -> None:
        if board not in ("virt", "raspi3b"):
            raise QemuError(f"unknown QEMU machine {board!r}", "use virt or raspi3b")
        self.board = board
        self.image = image
        self.workdir = workdir
        self.memory_mib = memory_mib
        self.smp = smp
        self.grow_mib = grow_mib
        self.debug_shell = debug_shell
        self.guestfwd_port = guestfwd_port
        self.overlay = workdir / "overlay.qcow2"
        self.console_log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_seconds = 0.0
        self.boots = 0
        self._buf = ""
        self._cursor = 0
        self._cond = threading.Condition()
        self._serial: object | None = None
        self._reader: threading.Thread | None = None
        self._shell: socket.socket | None = None
        self._shell_buf = ""

    # -- lifecycle ---------------------------------------------------------------
    def start(self, fresh: bool = False) -> None:
        """Boot (the overlay is created on first start, or when ``fresh``)."""
        import serial  # pyserial: socket:// URLs

        if self.proc is not None:
            raise QemuError("the machine is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        raspi = self.board == "raspi3b"
        if fresh or not self.overlay.exists():
            create_overlay(self.image, self.overlay, self.grow_mib, power_of_two=raspi)
        port = free_port()
        if raspi:  # no virtio on the Pi: no debug shell, no preset environment
            self.debug_shell = False
            kernel8, dtb = raspi_files(self.image, self.workdir)
            cmd = raspi_command(self.overlay, kernel8, dtb, port)
        else:
            shell_sock = self.workdir / "hvc0.sock" if self.debug_shell else None
            if shell_sock is not None:
                shell_sock.unlink(missing_ok=True)
            flash = self.workdir / "uboot-env.flash"
            env_flash = flash if write_env_flash(flash) else None
            cmd = qemu_command(self.overlay, memory_mib=self.memory_mib, smp=self.smp, serial="tcp",
                               serial_port=port, shell_socket=shell_sock, env_flash=env_flash,
                               guestfwd_port=self.guestfwd_port)  # fmt: skip
        log = open(self.workdir / "qemu.stderr", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.started_at = time.monotonic()
        self.boots += 1
        deadline = time.monotonic() + 30
        while True:
            try:
                self._serial = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=0.2)
                break
            except serial.SerialException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise QemuError(f"QEMU did not start: {self._stderr_tail()}") from None
                time.sleep(0.05)
        with self._cond:
            self._buf = ""
            self._cursor = 0
        self._append_log(f"\n===== boot {self.boots} =====\n")
        self._reader = threading.Thread(target=self._read_console, name="qemu-console", daemon=True)
        self._reader.start()

    def written_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of every range the guest wrote, from the overlay's allocation map."""
        proc = subprocess.run(
            ["qemu-img", "map", "-U", "--output=json", str(self.overlay)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise QemuError(f"qemu-img map failed: {proc.stderr.strip()}")
        return [
            (int(r["start"]), int(r["length"]))
            for r in json.loads(proc.stdout)
            if r.get("depth") == 0 and r.get("data")
        ]

    def kill(self) -> None:
        """Cut the power: SIGKILL QEMU, no shutdown, no flush inside the guest."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None
        self._close_links()

    def restart(self) -> None:
        """Power cut, then boot again from the same overlay."""
        self.kill()
        self.start()

    def alive(self) -> bool:
        """Whether QEMU is still running."""
        return self.proc is not None and self.proc.poll() is None

    def elapsed(self) -> float:
        """Seconds since this boot's QEMU process started."""
        return time.monotonic() - self.started_at

    # -- serial console ----------------------------------------------------------
    def _append_log(self, text: str) -> None:
        with open(self.console_log, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)

    def _read_console(self) -> None:
        port = self._serial
        while port is not None and self._serial is port:
            try:
                data: bytes = port.read(4096)  # type: ignore[attr-defined]
            except Exception:
                break
            if data:
                text = data.decode("utf-8", errors="replace").replace("\r", "")
                self._append_log(text)
                with self._cond:
                    self._buf += text
                    self._cond.notify_all()
            elif self.proc is None or self.proc.poll() is not None:
                break

    def write_console(self, data: bytes) -> None:
        """Type ``data`` into the serial console (what someone holding the cable can do)."""
        if self._serial is None:
            raise QemuError("the machine is not running")
        self._serial.write(data)  # type: ignore[attr-defined]

    def console_text(self) -> str:
        """Everything the serial console printed during this boot."""
        with self._cond:
            return self._buf

    def wait_for(self, pattern: str, timeout: float, from_start: bool = False) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) on the console, after the last match unless ``from_start``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._buf, 0 if from_start else self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self._buf[-1500:]
                    raise QemuError(
                        f"no {pattern!r} on the console within {timeout:.0f} s; last output:\n{tail}"
                    )
                if self.proc is None or self.proc.poll() is not None:
                    raise QemuError(f"QEMU exited while waiting for {pattern!r}: {self._stderr_tail()}")
                self._cond.wait(min(left, 0.5))

    # -- debug shell on hvc0 -----------------------------------------------------
    def _connect_shell(self, timeout: float) -> socket.socket:
        if self._shell is not None:
            return self._shell
        if not self.debug_shell:
            raise QemuError("this machine has no debug shell", "build the image with the debug shell")
        path = str(self.workdir / "hvc0.sock")
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise QemuError("cannot connect to the debug shell socket") from None
                time.sleep(0.1)
        self._shell = s
        self._shell_buf = ""
        # the guest shell may not be listening yet: knock until it answers
        token = secrets.token_hex(4)
        s.settimeout(1.0)
        while True:
            # quoted so that an echo of the input (tty echo on) can never match the answer
            s.sendall(f"echo '__FB_HELLO_'{token}'__'\n".encode())
            try:
                wait = min(2.0, max(0.1, deadline - time.monotonic()))
                self._read_shell_until(f"__FB_HELLO_{token}__", wait)
                return s
            except QemuError:
                if time.monotonic() > deadline:
                    self._close_links()
                    raise QemuError(f"the debug shell did not answer within {timeout:.0f} s") from None

    def _read_shell_until(self, marker: str, timeout: float) -> str:
        assert self._shell is not None
        deadline = time.monotonic() + timeout
        while marker not in self._shell_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuError(f"no answer from the debug shell within {timeout:.0f} s")
            self._shell.settimeout(min(left, 1.0))
            try:
                data = self._shell.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self._close_shell()
                raise QemuError("the debug shell connection closed")
            self._shell_buf += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        head, _, rest = self._shell_buf.partition(marker)
        self._shell_buf = rest
        return head

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run ``command`` with ``sh`` in the guest; return its exit code and output (stdout+stderr)."""
        self._connect_shell(timeout=max(timeout, 30.0))
        assert self._shell is not None
        token = secrets.token_hex(6)
        begin, end = f"__FB_BEGIN_{token}__", f"__FB_END_{token}__"
        script = (
            f"echo '__FB_BEGIN_'{token}'__'; ( {command}\n) </dev/null 2>&1; "
            f"printf '\\n__FB_END_%s__ %d\\n' {token} $?\n"
        )
        self._shell.sendall(script.encode())
        self._read_shell_until(begin + "\n", timeout)
        output = self._read_shell_until(f"\n{end} ", timeout)
        tail = self._read_shell_until("\n", 5.0)
        try:
            rc = int(tail.strip())
        except ValueError:
            raise QemuError(f"unreadable exit code from the debug shell: {tail!r}") from None
        return CommandResult(rc, output)

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Wait for the ready line (a degraded line fails at once); return seconds since QEMU started."""
        match = self.wait_for(f"{READY_PATTERN}|{DEGRADED_PATTERN}", timeout)
        if match.group(0).startswith("fieldbox degraded"):
            raise QemuError(f"the device came up degraded: {match.group(0)}")
        self.ready_seconds = self.elapsed()
        return self.ready_seconds

    def put_file(self, data: bytes, remote: str, timeout: float = 300.0) -> None:
        """Write ``data`` to ``remote`` in the guest (through ``remote.part`` and a rename)."""
        part = remote + ".part"
        b64 = base64.encodebytes(data).decode("ascii")
        script = (
            f"base64 -d > {shlex.quote(part)} <<'__FB_EOF__'\n{b64}__FB_EOF__\n"
            f"sync {shlex.quote(part)} && mv {shlex.quote(part)} {shlex.quote(remote)}"
        )
        self.run(script, timeout=timeout).check(f"writing {remote}")

    def supervisor_states(self, timeout: float = 60.0) -> dict[str, str]:
        """Program name -> supervisord state name, asked over supervisord's XML-RPC in the guest."""
        code = (
            "import json; from supervisor.options import ClientOptions; o = ClientOptions(); "
            "o.realize(args=['-c', '/etc/supervisor/supervisord.conf'], doc=''); "
            "print(json.dumps({i['name']: i['statename'] for i in "
            "o.getServerProxy().supervisor.getAllProcessInfo()}))"
        )
        out = self.run(f"python3 -c {shlex.quote(code)}", timeout=timeout).check("asking supervisord")
        states: dict[str, str] = json.loads(out.strip().splitlines()[-1])
        return states

    def reboot(self, timeout: float = 120.0) -> None:
        """Clean reboot (``fieldbox-reboot`` in the guest); returns when U-Boot starts again."""
        self._connect_shell(timeout=30.0)
        assert self._shell is not None
        self._shell.sendall(b"fieldbox-reboot\n")
        self.wait_for(UBOOT_PATTERN, timeout)
        self._close_shell()
        self.started_at = time.monotonic()
        self.boots += 1

    # -- teardown ----------------------------------------------------------------
    def _close_shell(self) -> None:
        if self._shell is not None:
            with contextlib.suppress(OSError):
                self._shell.close()
            self._shell = None

    def _close_links(self) -> None:
        self._close_shell()
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()  # type: ignore[attr-defined]
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def _stderr_tail(self) -> str:
        try:
            text = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        except OSError:
            return "no output"
        return text.splitlines()[-1] if text else "no output"

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_interactive(image: Path, workdir: Path, *, memory_mib: int = 512, smp: int = 2,
                    serial: str = "stdio", port: int = 4321, keep_state: bool = False,
                    debug_shell: bool = False, board: str = "virt") -> int:
    """``fieldbox emulate``: boot, console on this terminal (or a TCP port); return QEMU's exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    raspi = board == "raspi3b"
    if not keep_state or not overlay.exists():
        create_overlay(image, overlay, grow_mib=512, power_of_two=raspi)
    shell_sock = workdir / "hvc0.sock" if debug_shell and not raspi else None
    if raspi:
        kernel8, dtb = raspi_files(image, workdir)
        cmd = raspi_command(overlay, kernel8, dtb, port, serial)
    else:
        flash = workdir / "uboot-env.flash"
        env_flash = flash if write_env_flash(flash) else None
        cmd = qemu_command(overlay, memory_mib=memory_mib, smp=smp, serial=serial, serial_port=port,
                           shell_socket=shell_sock, env_flash=env_flash)  # fmt: skip
    if serial == "tcp":
        print(f"fieldbox emulate: waiting for a console client on 127.0.0.1:{port} "
              f"(e.g. `fieldbox provision socket://127.0.0.1:{port}` or `nc 127.0.0.1 {port}`)", flush=True)
    if shell_sock is not None:
        print(f"fieldbox emulate: debug shell on {shell_sock} (socat - UNIX-CONNECT:{shell_sock})",
              flush=True)
    proc = subprocess.Popen(cmd, env=dict(os.environ))

    def stop(signum: int, frame: object) -> None:  # SIGTERM/SIGHUP: take QEMU down with us
        proc.terminate()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
