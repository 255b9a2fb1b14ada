"""A trial boot that never settles is reset by the hardware watchdog, and U-Boot falls back by itself.

The machine has QEMU's emulated i6300esb; nothing in the test touches the guest
after the trial boot starts. The trial is made with the debug image's shell (set
a counted trial of slot B, and provisioned update settings under which the update
client's health check can never finish: the stand-in for a client or a system
that hangs); everything after that is the image's own doing: boot.scr marks the
boot as a trial, fieldbox-watchdog stops feeding at ``trial_deadline_s``, the
board resets, U-Boot counts past the limit and boots slot A again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 40


def _never_settling_settings() -> bytes:
    text = (ROOT / "rootfs-overlay/etc/fieldbox/ota.toml").read_text()
    for key, value in (("health_stable_s", "100000.0"), ("health_timeout_s", "100000.0"),
                       ("trial_deadline_s", f"{DEADLINE_S}.0")):  # fmt: skip
        text, n = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
        assert n == 1, key
    return text.encode()


def test_a_trial_boot_that_never_settles_is_reset_and_falls_back(booted: Machine) -> None:
    assert "fieldbox-watchdog: feeding /dev/watchdog" in booted.console_text(), "the watchdog must be fed"
    booted.run("mkdir -p /data/config").check()
    booted.put_file(_never_settling_settings(), "/data/config/ota.toml")
    booted.run("fieldbox bootctl set-trial B --limit 1").check()
    booted.reboot()
    booted.wait_for(r"fieldbox: booting slot B count 1", 60)
    assert re.search(r"bootargs [^\n]*fieldbox\.slot=B [^\n]*fieldbox\.trial=1", booted.console_text())
    booted.wait_for(rf"fieldbox-watchdog: trial boot: feeding /dev/watchdog for {DEADLINE_S} s", 120)
    booted.wait_for(r"trial boot not settled within \d+ s: stopping the watchdog feed", DEADLINE_S + 120)
    # No one resets the machine but its watchdog: U-Boot starts again, counts, rolls back.
    booted.wait_for(r"fieldbox: slot B was not marked good within 1 boots: rolling back", 120)
    booted.wait_for(r"fieldbox: booting slot A", 30)
    match = booted.wait_for(r"fieldbox ready: .* slot (\w)", 300)
    assert match.group(1) == "A"
