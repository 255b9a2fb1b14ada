"""The A/B boot files laid onto the FAT boot partition: ``boot.scr``, ``fbstate.0``, ``fbstate.1``.

For the image build (call this once, copy the returned files to the root of p1)::

    from fieldbox_host.bootfiles import build_boot_files
    files = build_boot_files(out_dir, root_a_partuuid="46424f58-02",
                             root_b_partuuid="46424f58-03", board="qemu-arm64")
    # -> [out_dir/boot.scr, out_dir/fbstate.0, out_dir/fbstate.1]

Contract with the root filesystems: each slot's root holds ``/boot/vmlinuz``
and ``/boot/initrd.img`` (files or symlinks; U-Boot's ext4 follows them). The
kernel command line gets ``root=PARTUUID=<uuid> ro rootwait fieldbox.slot=A|B``
plus a console (``ttyAMA0`` under QEMU, ``ttyS1``/``tty1`` on the Pi) and
``extra_bootargs``. The script (``image/boot/boot.cmd``) is the same for the
QEMU and Raspberry Pi U-Boot builds; the state files' format is
:mod:`fieldbox.bootenv`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fieldbox import bootenv
from fieldbox.errors import ConfigError, DependencyError

BOOT_CMD = Path(__file__).resolve().parents[2] / "image" / "boot" / "boot.cmd"
"""The boot script's source in the repository."""

BOARDS_WITH_BOOT_SCRIPT = ("qemu-arm64", "rpi")
"""Boards whose U-Boot runs ``boot.scr`` (Jetson boots through NVIDIA's L4T tools instead)."""

_PARTUUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{2}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_SAFE_ARGS = re.compile(r"[A-Za-z0-9_.,:=/+ -]*")


def render_boot_cmd(*, root_a_partuuid: str, root_b_partuuid: str, extra_bootargs: str = "") -> str:
    """The boot script's text with this image's values filled in."""
    for name, value in (("root_a_partuuid", root_a_partuuid), ("root_b_partuuid", root_b_partuuid)):
        if not _PARTUUID.fullmatch(value):
            raise ConfigError(
                f"{name}={value!r} is not a PARTUUID",
                "MBR: 8 lowercase hex digits, '-', 2 digits (46424f58-02); GPT: a lowercase UUID",
            )
    if not _SAFE_ARGS.fullmatch(extra_bootargs):
        raise ConfigError(
            f"extra_bootargs={extra_bootargs!r} has characters the boot script cannot quote",
            "use letters, digits, spaces and _.,:=/+-",
        )
    try:
        text = BOOT_CMD.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the boot script source {BOOT_CMD}: {exc.strerror}") from exc
    return (
        text.replace("@FB_PARTUUID_A@", root_a_partuuid)
        .replace("@FB_PARTUUID_B@", root_b_partuuid)
        .replace("@FB_EXTRA_ARGS@", extra_bootargs.strip())
    )


def compile_script(source: Path, output: Path) -> None:
    """``mkimage -A arm64 -T script -C none``: the legacy script image U-Boot's ``source`` runs."""
    mkimage = shutil.which("mkimage")
    if mkimage is None:
        raise DependencyError("mkimage not found", "install u-boot-tools (apt-get install u-boot-tools)")
    proc = subprocess.run(
        [mkimage, "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
         "-n", "fieldbox boot", "-d", str(source), str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(f"mkimage failed on {source}: {proc.stderr.strip() or proc.stdout.strip()}")


def build_boot_files(
    out_dir: Path,
    *,
    root_a_partuuid: str,
    root_b_partuuid: str,
    board: str,
    initial_slot: str = "A",
    boot_limit: int = bootenv.DEFAULT_LIMIT,
    extra_bootargs: str = "",
) -> list[Path]:
    """Write ``boot.scr``, ``fbstate.0`` and ``fbstate.1`` into ``out_dir``; return their paths.

    The image starts on ``initial_slot``, committed and marked good; a trial
    (set by ``fieldbox bootctl set-trial``) may take ``boot_limit`` boots
    before U-Boot rolls back.
    """
    if board not in BOARDS_WITH_BOOT_SCRIPT:
        raise ConfigError(
            f"board {board!r} does not boot through U-Boot's boot.scr",
            f"boot files are made for: {', '.join(BOARDS_WITH_BOOT_SCRIPT)}",
        )
    text = render_boot_cmd(
        root_a_partuuid=root_a_partuuid, root_b_partuuid=root_b_partuuid, extra_bootargs=extra_bootargs
    )
    state0, state1 = bootenv.initial_files(initial_slot, boot_limit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "boot.cmd"
    source.write_text(text)
    script = out_dir / "boot.scr"
    compile_script(source, script)
    source.unlink()
    paths = [script]
    for name, data in zip(bootenv.COPY_NAMES, (state0, state1), strict=True):
        path = out_dir / name
        path.write_bytes(data)
        paths.append(path)
    return paths
