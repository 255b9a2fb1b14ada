"""Power cuts while boot.scr writes the slot state: 20 kills of QEMU at varied moments.

Each round sets a trial (so the script must write), starts the real qemu_arm64
U-Boot on the small test disk and SIGKILLs QEMU at one moment from a spread:
while a traced guest write request is pending (the disk is throttled to 20
requests per second, so a request waits ~50 ms before it reaches the image),
at delays after the script's ``writing fbstate.N`` line, or at fixed times
after ``run distro_bootcmd``. fatwrite of a same-size file makes two write
requests: the file's 16 KiB of data, then its directory entry.
Then, reading the disk with mtools: at least one copy is valid and the state
is either the one before the write or the one the write carried; the FAT is
clean; and an uninterrupted boot picks exactly the slot the rules predict.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import abdisk
import pytest

from fieldbox import bootctl, bootenv

pytestmark = [pytest.mark.system, pytest.mark.slow]

if abdisk.missing_tools():
    pytest.skip(
        f"missing host tools {abdisk.missing_tools()} (make host-deps installs them)", allow_module_level=True
    )

WRITING = re.compile(rb"fieldbox: writing fbstate\.[01]")

# (how, value): "write" = kill once the N-th guest write request is seen (still pending);
# "marker" = kill this many seconds after "writing fbstate.N";
# "start" = kill this many seconds after the boot command was typed.
MOMENTS: list[tuple[str, float]] = [
    ("write", 1), ("write", 2), ("marker", 0.0), ("start", 0.05),
    ("write", 2), ("marker", 0.002), ("write", 1), ("start", 0.2),
    ("marker", 0.01), ("write", 2), ("marker", 0.03), ("start", 0.35),
    ("write", 1), ("marker", 0.1), ("write", 2), ("start", 0.5),
    ("marker", 0.3), ("write", 2), ("marker", 0.6), ("start", 0.8),
]


def _cut(disk: Path, how: str, value: float) -> None:
    with abdisk.uboot(disk, iops_limit=20, trace_writes=True) as machine:
        machine.skip_autoboot_delay()
        typed = time.monotonic()
        if how == "write":
            deadline = typed + 20
            while machine.writes_seen() < value:
                assert time.monotonic() < deadline, machine.text()[-2000:]
                time.sleep(0.001)
        elif how == "marker":
            machine.wait_for(WRITING)
            time.sleep(value)
        else:
            time.sleep(value)
        # leaving the block kills QEMU (SIGKILL): the power cut


def test_twenty_power_cuts_during_boot_script_writes(tmp_path: Path) -> None:
    disk = abdisk.make_disk(tmp_path)
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B"))
    outcomes = {"before": 0, "after": 0}
    for round_no, (how, value) in enumerate(MOMENTS, 1):
        before = abdisk.read_selection(disk)
        assert before.state.trial
        _, _, written = abdisk.expected_boot(before.state)
        assert written is not None

        _cut(disk, how, value)

        cut = abdisk.read_selection(disk)
        where = f"round {round_no} ({how} {value}): {cut.copies}"
        assert cut.current is not None, f"no valid copy left after the cut, {where}"
        assert cut.state in (before.state, written), where
        outcomes["before" if cut.state == before.state else "after"] += 1
        code, report = abdisk.fsck_fat(disk)
        assert code == 0, f"{where}\n{report}"

        # Power back on: the next boot must choose the slot the rules predict from what is on disk.
        slot, count, text = abdisk.boot_once(disk)
        want_slot, want_count, want_state = abdisk.expected_boot(cut.state)
        assert (slot, count) == (want_slot, want_count), f"{where}\n{text[-1500:]}"
        after = abdisk.read_selection(disk)
        assert after.state == (want_state or cut.state), where

        if not after.state.trial:  # rolled back: arm a new trial so the next round writes again
            abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, bootenv.other_slot(s.slot)))
    print(f"power cuts: {outcomes['before']} left the old state, {outcomes['after']} the new one")
    # The spread of moments really landed on both sides of the write.
    assert outcomes["before"] >= 3 and outcomes["after"] >= 3, outcomes


def test_power_cut_during_fatwrite_keeps_the_file_system_and_older_copy(tmp_path: Path) -> None:
    """Kill while each write request of fatwrite is held back (throttled): before data, before dir entry."""
    disk = abdisk.make_disk(tmp_path)
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B", limit=0xFF))
    pristine = tmp_path / "before.img"
    shutil.copyfile(disk, pristine)
    before = abdisk.read_selection(disk)
    # First learn how many write requests one fatwrite makes, then cut while each is pending.
    with abdisk.uboot(disk, trace_writes=True) as machine:
        machine.skip_autoboot_delay()
        machine.wait_for(abdisk.BOOTING)
        requests = [
            (int(m.group(1)), int(m.group(2)))
            for m in re.finditer(rb"sector (\d+) nsectors (\d+)", bytes(machine.trace))
        ]
    assert len(requests) >= 2, requests  # file data, then its directory entry
    for pending in range(1, len(requests) + 1):
        shutil.copyfile(pristine, disk)
        _cut(disk, "write", pending)
        cut = abdisk.read_selection(disk)
        assert cut.current is not None
        assert cut.copies[before.current or 0].state == before.state  # the copy in use is untouched
        if pending == 1:  # the data never reached the disk: the old state is in force
            assert cut.state == before.state
        assert abdisk.fsck_fat(disk)[0] == 0
        slot, count, _ = abdisk.boot_once(disk)
        assert (slot, count) == abdisk.expected_boot(cut.state)[:2]
