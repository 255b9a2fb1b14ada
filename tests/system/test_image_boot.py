"""The built image under QEMU (512 MiB, TCG): boot to ready, the demo workflow, reboot, read-only roots."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldbox_host.image import layout
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def configured_programs() -> set[str]:
    """Program names declared in the image's supervisord program files."""
    names: set[str] = set()
    for conf in (ROOT / "rootfs-overlay/etc/supervisor/conf.d").glob("*.conf"):
        names |= set(re.findall(r"^\[(?:program|eventlistener):([^\]]+)\]", conf.read_text(), re.M))
    return names


def used_memory_mib(machine: Machine) -> float:
    """MemTotal - MemAvailable in the guest, in MiB."""
    meminfo = machine.run("cat /proc/meminfo").check()
    fields = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in meminfo.splitlines() if ":" in ln)}
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


def test_boots_to_ready_with_every_program_running(
    booted: Machine, record_property: Callable[..., None]
) -> None:
    states = booted.supervisor_states()
    assert set(states) == configured_programs(), "supervisord must run exactly the configured programs"
    assert all(s == "RUNNING" for s in states.values()), states
    ready = re.search(r"fieldbox ready: (\d+) programs RUNNING", booted.console_text())
    assert ready and int(ready.group(1)) == len(states)
    mounts = booted.run("cat /proc/mounts").check()
    assert re.search(r"^/dev/vda2 / ext4 ro[,\s]", mounts, re.M), mounts
    assert re.search(r"^/dev/vda4 /data ext4 rw[,\s]", mounts, re.M), mounts
    assert re.search(r"^/dev/vda1 /boot/firmware vfat ro[,\s]", mounts, re.M), mounts  # rw only to write
    # first boot made the data filesystem and grew p4 to the end of the (larger) disk
    p4_sectors = int(booted.run("cat /sys/class/block/vda4/size").check())
    assert p4_sectors * 512 > layout.DATA_MIB * layout.MIB
    # "ready" means the services answer, not only that supervisord shows them RUNNING: the runner
    # serves every shipped agent (models, labels and self-test samples are all in the image).
    agents = booted.run("fieldbox agent status", timeout=120)
    assert agents.rc == 0, agents.output
    for manifest in (ROOT / "rootfs-overlay/etc/fieldbox/agents").glob("*.toml"):
        assert re.search(rf"^{re.escape(manifest.stem)}\s", agents.output, re.M), agents.output
    memory = used_memory_mib(booted)
    record_property("ready_seconds", round(booted.ready_seconds, 1))
    record_property("used_memory_mib", round(memory, 1))
    print(f"\nboot to ready: {booted.ready_seconds:.1f} s from QEMU start; guest memory {memory:.0f} MiB")


def _wait_for_result(machine: Machine, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = machine.run("fieldbox store query", timeout=120)
        last = result.output
        if result.rc == 0 and needle in result.output:
            return result.output
        time.sleep(2)
    raise AssertionError(f"no result for {needle!r} in the store after {timeout:.0f} s; last query:\n{last}")


def test_demo_workflow_result_survives_reboot_and_roots_stay_unchanged(
    booted: Machine, assets_dir: Path
) -> None:
    booted.put_file((assets_dir / "astronaut.png").read_bytes(), "/data/inbox/astronaut.png")
    first = _wait_for_result(booted, "astronaut.png", timeout=300)
    assert "face-inbox" in first

    # the root is read-only: nothing can change it from userspace
    touch = booted.run("touch /usr/share/fieldbox/rw-probe")
    assert touch.rc != 0 and "Read-only file system" in touch.output

    booted.reboot()
    booted.wait_ready()
    again = _wait_for_result(booted, "astronaut.png", timeout=60)
    assert again.count("astronaut.png") == first.count("astronaut.png"), "the file must be processed once"

    booted.kill()
    parts = {p.number: p for p in layout.partitions()}
    for number in (layout.SLOTS["A"], layout.SLOTS["B"]):
        p = parts[number]
        touched = [
            (off, n) for off, n in booted.written_ranges()
            if off < p.start_bytes + p.size_bytes and off + n > p.start_bytes
        ]  # fmt: skip
        assert not touched, f"root partition p{number} was written: {touched[:5]}"
