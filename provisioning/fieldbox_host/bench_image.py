"""Benchmark section "image": the appliance image's size, boot time, memory and rebuild time.

Measured in one run on the built image (``make image``):

* compressed image size: ``build/fieldbox-<version>-arm64.img.zst`` (target ≤ 250 MB);
* one root slot's used size, from the ext4 superblock recorded in the build
  manifest (target ≤ 500 MB);
* boot to "fieldbox ready" under QEMU TCG, ``-M virt -cpu cortex-a53 -m 512M
  -smp 2``, seconds from QEMU's start (target ≤ 12 s), of a device's everyday
  boot: the second one, after a clean shutdown. The baseline is when the same
  boot reached the initramfs (kernel + U-Boot alone). The first boot, which
  also creates the data filesystem and the store key and probes the models
  once, is its own row;
* guest memory used (MemTotal - MemAvailable) with every program idle, after
  that boot (target ≤ 120 MiB of 512), read through the debug image's shell;
* the same figure for the release image, as its own "fieldbox ready" line
  reports it on the serial console at ready (no shell to ask), on its second
  boot (target ≤ 120 MiB);
* time to rebuild the image after an app-only change (the Debian cache hits);
  needs root, like ``make image``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fieldbox import __version__
from fieldbox_host.bench import Row, Skip

SECTION = "image"
BUILD = Path("build")


def _image() -> tuple[Path, dict[str, object]]:
    name = f"fieldbox-{__version__}-arm64-debug"  # the boot rows read guest memory through the debug shell
    img = BUILD / f"{name}.img"
    man = BUILD / f"{name}.manifest.json"
    if not img.is_file() or not man.is_file():
        raise Skip("no debug image (run `fieldbox build --debug-shell`; make test builds it)")
    manifest: dict[str, object] = json.loads(man.read_text())
    return img, manifest


@dataclass
class Boots:
    """One device's first two boots on a fresh overlay (seconds from QEMU's start)."""

    first_ready: float
    ready: float
    to_initramfs: float
    used_mib: float


def _boot(img: Path) -> Boots:
    """Boot once (first boot: creates /data, probes the models), shut down cleanly,
    start QEMU again and time that boot, the one a device makes every day."""
    from fieldbox_host.qemu import Machine

    with tempfile.TemporaryDirectory(prefix="fieldbox-bench-") as tmp, Machine(img, Path(tmp)) as machine:
        machine.start()
        first = machine.wait_ready(timeout=300)
        machine.reboot()  # clean: services stopped, filesystems unmounted; U-Boot starts again
        machine.kill()
        machine.restart()
        machine.wait_for(r"fieldbox-initramfs: root", timeout=120)
        to_initramfs = machine.elapsed()
        ready = machine.wait_ready(timeout=300)
        time.sleep(5)  # let the programs settle into idle
        meminfo = machine.run("cat /proc/meminfo").check()
        fields = {m[0]: int(m[1]) for m in re.findall(r"^(\w+):\s+(\d+)", meminfo, re.M)}
        used = (fields["MemTotal"] - fields["MemAvailable"]) / 1024
    return Boots(first, ready, to_initramfs, used)


def _release_ready_mib() -> float:
    """The release image's memory at ready, from its console line, on its second (everyday) boot."""
    from fieldbox_host.qemu import Machine

    img = BUILD / f"fieldbox-{__version__}-arm64.img"
    if not img.is_file():
        raise Skip("no release image (run `make image`; make test builds it)")
    with tempfile.TemporaryDirectory(prefix="fieldbox-bench-") as tmp, \
            Machine(img, Path(tmp), debug_shell=False) as machine:  # fmt: skip
        machine.start()
        machine.wait_ready(timeout=300)
        time.sleep(5)  # the first boot's own work (model probes, key) is done; its writes settle
        machine.kill()
        machine.restart()
        machine.wait_ready(timeout=300)
        found = re.findall(r"fieldbox ready: .*, (\d+) MiB used", machine.console_text())
    if not found:  # console_text() is this (second) boot's
        raise Skip("the release image's ready line carries no memory figure (rebuild the image)")
    return float(found[-1])


def _rebuild() -> float:
    from fieldbox_host.image.build import BuildOptions, build_image

    started = time.monotonic()
    build_image(BuildOptions(build_dir=BUILD, debug_shell=True))
    return time.monotonic() - started


def run() -> list[Row]:
    """The image rows (see the module docstring)."""
    img, manifest = _image()
    rows: list[Row] = []
    zst = img.with_name(img.name + ".zst")
    if zst.is_file():
        mb = zst.stat().st_size / 1e6
        rows.append(Row(SECTION, "compressed image (.img.zst)", mb, "MB", target="≤ 250 MB", met=mb <= 250))
    used = int(str(manifest.get("root_used_bytes", 0))) / 1e6
    rows.append(Row(SECTION, "one root slot, used", used, "MB", target="≤ 500 MB", met=used <= 500))
    boots = _boot(img)
    rows.append(Row(SECTION, "boot to ready, QEMU TCG 512 MiB", boots.ready, "s", baseline=boots.to_initramfs,
                    baseline_name="same boot, initramfs reached", target="≤ 12 s",
                    met=boots.ready <= 12))  # fmt: skip
    rows.append(Row(SECTION, "first boot to ready (creates /data)", boots.first_ready, "s",
                    note="once per device: data filesystem, store key, model probes"))  # fmt: skip
    rows.append(Row(SECTION, "guest memory used, programs idle", boots.used_mib, "MiB", target="≤ 120 MiB",
                    met=boots.used_mib <= 120))  # fmt: skip
    try:
        release = _release_ready_mib()
        rows.append(Row(SECTION, "release image: guest memory used at ready (its console line)", release,
                        "MiB", target="≤ 120 MiB", met=release <= 120))  # fmt: skip
    except Skip as skip:
        rows.append(Row(SECTION, "release image: guest memory used at ready", float("nan"), "MiB",
                        note=str(skip)))  # fmt: skip
    if os.geteuid() == 0:
        secs = _rebuild()
        rows.append(Row(SECTION, "rebuild after an app-only change", secs, "s", target="~60 s",
                        met=secs <= 90))  # fmt: skip
    else:
        rows.append(Row(SECTION, "rebuild after an app-only change", float("nan"), "s", note="needs root"))
    return rows
