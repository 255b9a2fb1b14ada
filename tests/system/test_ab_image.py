"""A/B boot on the built image under QEMU: trial boots, rollback, mark-good, state seen from the host.

Every boot here is a full boot of the real image (U-Boot, kernel, our initramfs,
PID 1, supervisord) on a qcow2 overlay, about 10-15 s under TCG. The slot state
is read back from the host by copying p1 out of the overlay (``qemu-img dd``)
and reading the two files with mtools, parsed by the same
:mod:`fieldbox.bootenv` the device uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from fieldbox import bootenv
from fieldbox_host.image import layout
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

BOOTING = r"fieldbox: booting slot ([AB]) count ([0-9a-f]+)"
READY_SLOT = r"fieldbox ready: \d+ programs RUNNING, [0-9.]+ s since kernel start, slot (\w+)"


def host_state(machine: Machine) -> bootenv.Selection:
    """The slot state as U-Boot would read it, from the (stopped) machine's disk, with mtools."""
    assert not machine.alive(), "read the disk only while QEMU is not running"
    boot = layout.partitions()[0]
    raw = machine.workdir / "p1.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M",
         f"skip={boot.start_mib}", f"count={boot.size_mib}", f"if={machine.overlay}", f"of={raw}"],
        check=True, capture_output=True,
    )  # fmt: skip
    images: list[bytes | None] = []
    for name in bootenv.COPY_NAMES:
        proc = subprocess.run(["mcopy", "-n", "-i", str(raw), f"::{name}", "-"], capture_output=True)
        images.append(proc.stdout if proc.returncode == 0 else None)
    raw.unlink()
    return bootenv.select(images)


def guest_status(machine: Machine) -> dict[str, object]:
    """``fieldbox bootctl status --json`` in the guest."""
    out = machine.run("fieldbox bootctl status --json").check("bootctl status")
    data: dict[str, object] = json.loads(out[out.index("{") :])
    return data


def boot_and_wait(machine: Machine) -> tuple[str, int, str]:
    """After a (re)boot began: the slot and count U-Boot chose, and the slot the ready line names."""
    booting = machine.wait_for(BOOTING, timeout=60)
    ready = machine.wait_for(READY_SLOT, timeout=240)
    return booting.group(1), int(booting.group(2), 16), ready.group(1)


def test_trial_boots_roll_back_on_the_fourth_and_mark_good_resets_the_count(
    make_machine: Callable[..., Machine],
) -> None:
    machine = make_machine()
    machine.start()
    assert boot_and_wait(machine) == ("A", 0, "A")
    status = guest_status(machine)
    assert (status["booted"], status["slot"], status["trial"]) == ("A", "A", False)

    # An update was written to B: try it. It is marked good after two boots.
    machine.run("fieldbox bootctl set-trial B").check()
    seen = []
    for _ in range(2):
        machine.reboot()
        seen.append(boot_and_wait(machine))
    assert seen == [("B", 1, "B"), ("B", 2, "B")]
    assert guest_status(machine)["count"] == 2
    machine.run("fieldbox bootctl mark-good").check()
    status = guest_status(machine)
    assert (status["slot"], status["trial"], status["count"]) == ("B", False, 0)
    machine.reboot()
    assert boot_and_wait(machine) == ("B", 0, "B")

    # Another update, into A, never marked good: three trial boots, the fourth goes back to B.
    machine.run("fieldbox bootctl set-trial other").check()
    seen = []
    for _ in range(4):
        machine.reboot()
        seen.append(boot_and_wait(machine))
    assert seen == [("A", 1, "A"), ("A", 2, "A"), ("A", 3, "A"), ("B", 0, "B")]
    status = guest_status(machine)
    assert (status["booted"], status["slot"], status["trial"]) == ("B", "B", False)
    assert status["good"] == {"A": False, "B": True}

    # The state read from the host with mtools agrees with what the device said.
    machine.kill()
    host = host_state(machine)
    assert host.current == status["current_copy"]
    assert host.state.generation == status["generation"]
    assert (host.state.slot, host.state.trial, host.state.count) == ("B", False, 0)
    assert (host.state.good_a, host.state.good_b) == (False, True)
    assert all(copy.valid for copy in host.copies)


# Rewrites the state as fast as it can: set-trial/mark-good on both slots in turn.
WRITER = (
    "python3 -c 'from pathlib import Path\n"
    "from fieldbox import bootctl\n"
    "fs = Path(\"/boot/firmware\")\n"
    "n = 0\n"
    "while True:\n"
    "    for s in \"BA\":\n"
    "        bootctl.set_trial(fs, s); bootctl.mark_good(fs, s); n += 2\n"
    "        print(\"writes\", n, flush=True)\n"
    "' > /dev/console 2>&1 &"
)


# Three full-image cuts (about a minute each under TCG); the fast U-Boot tests
# (test_powercut_uboot.py) carry the twenty cuts of the boot script's writes.
@pytest.mark.parametrize("delay", [0.4, 3.5])  # each delay is two boots; CI time is bounded
def test_power_cut_while_userspace_writes_the_state(
    make_machine: Callable[..., Machine], delay: float
) -> None:
    machine = make_machine()
    machine.start()
    boot_and_wait(machine)
    machine.run(WRITER).check("starting the state writer")
    machine.wait_for(r"writes \d+", timeout=60)  # it is writing
    time.sleep(delay)
    machine.kill()  # power cut in the middle of the write loop

    cut = host_state(machine)
    assert cut.current is not None, f"no valid slot state after the cut: {cut.copies}"
    writes = re.findall(r"writes (\d+)", machine.console_text())
    print(f"\ncut after {writes[-1] if writes else 0} userspace writes: fbstate.{cut.current} in force, "
          f"generation {cut.state.generation}, {[c.error or 'valid' for c in cut.copies]}")
    expected_slot = cut.state.slot
    if cut.state.trial and cut.state.count + 1 > cut.state.limit:
        expected_slot = bootenv.other_slot(cut.state.slot)

    machine.start()
    slot, count, ready_slot = boot_and_wait(machine)
    assert slot == ready_slot == expected_slot
    assert count == (cut.state.count + 1 if cut.state.trial else cut.state.count)
    status = guest_status(machine)
    assert status["booted"] == slot
    assert re.fullmatch(r"[AB]", str(status["slot"]))
