"""The appliance's root filesystem tree: cached Debian + wheels + fieldbox + overlay + models.

Only the device package (``app/fieldbox``) goes in, never the host tools.
The root is mounted read-only on the device, so the paths that programs write
are pointed at tmpfs or the data partition here (``/var/log`` -> ``/data/log``,
``/var/tmp`` -> ``/tmp``, ``/etc/resolv.conf`` -> ``/run/resolv.conf``), and
Python's byte code is compiled at build time (it could not be written later).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fieldbox_host.image import kmods, wheels
from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.proc import run

log = logging.getLogger("fieldbox.image")

MODELS_DIR = "usr/share/fieldbox/models"
FIELDBOX_ENTRY = """#!/usr/bin/python3
# The device's fieldbox command (agents, store, workflows, bootctl, ...).
from fieldbox.cli import entry

entry()
"""

SYMLINKS = {
    # path in the rootfs -> target; what the read-only root redirects
    "var/log": "/data/log",
    "var/tmp": "/tmp",  # noqa: S108 - a symlink in the image, not a temp file here
    "etc/resolv.conf": "/run/resolv.conf",
    "etc/mtab": "/proc/self/mounts",
}


@dataclass(frozen=True)
class RootOptions:
    """Choices that change the root filesystem's content."""

    version: str
    debug_shell: bool = False
    board: str = "qemu-arm64"
    epoch: int = 0
    """SOURCE_DATE_EPOCH: file times are clamped to it, and the device's clock never starts before it."""


def copy_overlay(overlay: Path, root: Path) -> int:
    """Copy ``overlay`` onto ``root`` file by file; return the number of files.

    A directory of the overlay that lands on a symlink in the root (``sbin``,
    ``lib`` with merged /usr) is an error naming the place it belongs.
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(overlay):
        rel = Path(dirpath).relative_to(overlay)
        target_dir = root / rel
        if target_dir.is_symlink():
            raise ImageError(
                f"rootfs-overlay/{rel} lands on a symlink in the root filesystem (merged /usr)",
                f"move it under rootfs-overlay/usr/{rel}",
            )
        target_dir.mkdir(parents=True, exist_ok=True)
        dirnames.sort()
        for name in sorted(filenames):
            src = Path(dirpath) / name
            dst = target_dir / name
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            shutil.copy2(src, dst, follow_symlinks=False)
            count += 1
    return count


def install_fieldbox(source: Path, root: Path) -> None:
    """The device package, its command and nothing of the host package."""
    site = root / wheels.SITE
    dest = site / "fieldbox"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(
        source / "app/fieldbox", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    entry = root / "usr/bin/fieldbox"
    entry.write_text(FIELDBOX_ENTRY, encoding="utf-8")
    entry.chmod(0o755)


def install_models(models: list[tuple[Path, str]], root: Path) -> list[str]:
    """Copy (source, relative name) pairs into ``/usr/share/fieldbox/models``; return the names."""
    dest = root / MODELS_DIR
    names: list[str] = []
    for src, name in models:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        names.append(name)
    return names


def redirect_writable(root: Path) -> None:
    """Point the paths programs write at tmpfs or /data (the root is read-only)."""
    for rel, target in SYMLINKS.items():
        path = root / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        path.symlink_to(target)
    for rel in ("data", "boot/firmware", "run", "tmp", "proc", "sys", "dev"):
        (root / rel).mkdir(parents=True, exist_ok=True)


def place_kernel(root: Path) -> str:
    """``/boot/vmlinuz`` (fixed name the boot script loads); return the kernel version."""
    kver = kmods.kernel_version(root)
    boot = root / "boot"
    real = boot / f"vmlinuz-{kver}"
    if not real.is_file():
        raise ImageError(f"the rootfs has no kernel {real.name}")
    fixed = boot / "vmlinuz"
    fixed.unlink(missing_ok=True)
    os.link(real, fixed)
    for stale in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        link = root / stale
        if link.is_symlink():
            link.unlink()
    return kver


def write_identity(root: Path, opts: RootOptions) -> None:
    """Hostname, hosts, build info and the debug-shell switch."""
    (root / "etc/hostname").write_text("fieldbox\n", encoding="ascii")
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tfieldbox\n::1\tlocalhost\n"
    (root / "etc/hosts").write_text(hosts, encoding="ascii")
    etc = root / "etc/fieldbox"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "build-info").write_text(
        f"FIELDBOX_VERSION={opts.version}\nFIELDBOX_BOARD={opts.board}\nFIELDBOX_BUILD_EPOCH={opts.epoch}\n"
        f"FIELDBOX_DEBUG_SHELL={int(opts.debug_shell)}\n",
        encoding="ascii",
    )
    flag = etc / "debug-shell"
    if opts.debug_shell:
        flag.write_text(
            "# present: fieldbox-init starts a root shell on /dev/hvc0 (virtio console).\n"
            "# Only images built with `fieldbox build --debug-shell` (named *-debug.img) have it.\n",
            encoding="ascii",
        )
    else:
        flag.unlink(missing_ok=True)


def compile_python(root: Path) -> None:
    """Byte-compile what we laid in, plain and ``-OO`` (the services run with
    ``PYTHONOPTIMIZE=2``); the read-only root could not cache it later.

    ``unchecked-hash`` byte code: it records no source time (reproducible), and
    on a read-only root there is nothing to check it against at import."""
    site = root / wheels.SITE
    levels = ["-o", "0", "-o", "2", "--invalidation-mode", "unchecked-hash"]
    if sys.version_info[:2] == (3, 11):
        cmd: list[str | Path] = [sys.executable, "-m", "compileall", "-q", "-j", "0", *levels, site]
        # paths inside .pyc files should read as on the device
        cmd[3:3] = ["-s", str(root), "-p", "/"]
    else:  # compile with the device's own interpreter, through qemu-user
        cmd = ["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q", *levels, "/" + wheels.SITE]
    run(cmd, what="compiling python byte code")


def configure_updates(root: Path, trusted_root: bytes | None, update_url: str) -> None:
    """Bake the fleet's trusted TUF root (read-only from then on) and the repository URL."""
    if trusted_root is not None:
        target = root / "etc/fieldbox/update/root.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(trusted_root)
    if update_url:
        set_toml_key(root / "etc/fieldbox/ota.toml", "repository_url", update_url)


def set_toml_key(path: Path, key: str, value: str) -> None:
    """Replace the top-level ``key = "..."`` line of a shipped TOML file (the line must exist)."""
    import json
    import re

    text = path.read_text(encoding="utf-8")
    line = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    if not line.search(text):
        raise ImageError(f"{path.name} has no {key} line to set")
    path.write_text(line.sub(lambda _: f"{key} = {json.dumps(value)}", text, count=1), encoding="utf-8")


def clamp_times(root: Path, epoch: int) -> int:
    """No file newer than ``epoch`` (SOURCE_DATE_EPOCH): what we laid in gets the build's time,
    Debian's files keep their package times. Returns the number of files changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = Path(dirpath) if name is None else Path(dirpath) / name
            st = os.lstat(path)
            if st.st_mtime > epoch or st.st_atime != st.st_mtime:
                t = min(int(st.st_mtime), epoch)
                os.utime(path, (t, t), follow_symlinks=False)
                changed += 1
    return changed


def smoke_import(root: Path) -> None:
    """Import the wheels and fieldbox with the device's python (qemu-user): catches ABI mistakes."""
    code = (
        "import tflite_runtime.interpreter, sqlcipher3, numpy, supervisor.supervisord, fieldbox.cli; "
        "import tuf.ngclient, fieldbox.ota.client, requests; "
        "from securesystemslib.signer import _key; assert _key.CRYPTO_IMPORT_ERROR is None; "
        "print('ok')"
    )
    try:
        out = subprocess.run(
            ["chroot", str(root), "/usr/bin/python3", "-c", code],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ImageError("importing the wheels in the arm64 rootfs timed out") from None
    if out.returncode != 0 or "ok" not in out.stdout:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageError(f"the arm64 rootfs cannot import its python packages: {last}")


READAHEAD_LIST = "usr/share/fieldbox/readahead.list"
BOOT_IMPORTS = (
    ("supervisor.supervisord", "supervisor.rpcinterface", "supervisor.process"),
    ("fieldbox.services.runner", "fieldbox.agents.image", "fieldbox.agents.classifier",
     "fieldbox.agents.detector", "fieldbox.agents.text", "fieldbox.agents.tensor",
     "tflite_runtime.interpreter", "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin"),
    ("fieldbox.services.store", "fieldbox.services.workflows", "fieldbox.services.sync",
     "fieldbox.services.monitor"),
)  # fmt: skip
"""What the boot imports, in the order it needs it: supervisord, the runner (the
longest start), then the other services."""

_LIST_FILES = """
import sys, importlib
seen = dict()
for group in GROUPS:
    for name in group:
        importlib.import_module(name)
    for mod in list(sys.modules.values()):
        for attr in ("__cached__", "__file__"):
            path = getattr(mod, attr, None)
            if isinstance(path, str) and path.startswith("/"):
                seen.setdefault(path, None)
                break
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/"):
                seen.setdefault(parts[5], None)
print("\\n".join(seen))
"""


def write_readahead_list(root: Path) -> int:
    """List the files the boot reads (byte code, extension modules, shared libraries,
    models), in the order it needs them, for fieldbox-init's readahead.

    Cold, a file costs several emulated I/O round trips (directory, inode, data):
    supervisord's own imports take 3.2 s from a cold page cache and 1.7 s from a
    warm one under QEMU TCG. fieldbox-init reads this list in the background from
    its first step, on the CPU the serial part of boot leaves idle. The list is
    taken from the device's own python (qemu-user) importing what the services
    import, with ``PYTHONOPTIMIZE=2`` like the device. Returns the number of files.
    """
    code = "GROUPS = " + repr(BOOT_IMPORTS) + "\n" + _LIST_FILES
    try:
        out = subprocess.run(
            ["chroot", str(root), "/usr/bin/python3", "-c", code],
            capture_output=True, text=True, timeout=600, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONOPTIMIZE": "2",
                 "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ImageError("listing the boot's files in the arm64 rootfs timed out") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageError(f"the arm64 rootfs cannot import what its services import: {last}")
    files = [p for p in out.stdout.splitlines() if p and (root / p.lstrip("/")).is_file()]
    models = sorted("/" + str(p.relative_to(root)) for p in (root / MODELS_DIR).glob("*") if p.is_file())
    files += [m for m in models if m not in files]
    (root / READAHEAD_LIST).parent.mkdir(parents=True, exist_ok=True)
    (root / READAHEAD_LIST).write_text("\n".join(files) + "\n", encoding="utf-8")
    return len(files)
