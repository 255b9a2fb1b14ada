"""Signed OTA updates of the release image under QEMU (512 MiB, TCG), end to end.

One device, one story, in order (the module shares the machine):

1. v1 boots; ``fieldbox release`` publishes v2 (an app change); the device finds
   it by itself, installs it into slot B, reboots into the trial, passes its
   health check and commits; after a power cycle it still runs v2 (and v2's
   download is cut four times by a TCP proxy on the way: the install resumes
   with Range requests and fetches no more than one chunk per cut beyond the
   bytes it needed);
2. v3 carries an agent whose self-test fails: trial boot, health fails, the
   device is back on v2 by itself, and both its console and the server say why;
3. v4 is installed while the power is cut ten times, from the download to
   just after the commit: every boot reaches a working slot, and the device
   ends on v4 committed (or v2 intact, had the trial used up its boots).

The images are release images (no shell on any console, as users flash
them), built with ``--repo`` (the fleet's root baked in) and reached only
through QEMU user networking with ``restrict=on`` and one ``guestfwd`` rule to
a loopback port: the guest can contact nothing else. Everything is observed the
way a user would: the serial console and the server's database.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_world import World, close_world, make_world, ready_line, wait_server, wait_text

from fieldbox_host.image.build import BuildResult
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(fieldbox_image: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_world(tmp_path_factory.mktemp("ota"))
    try:
        yield w
    finally:
        close_world(w)


@pytest.fixture(scope="module")
def device(world: World) -> Iterator[Machine]:
    v1 = world.build("0.1.0")
    assert v1.image is not None
    machine = Machine(v1.image, world.work / "vm", debug_shell=False, guestfwd_port=world.proxy.port)
    try:
        yield machine
    finally:
        machine.kill()
        print(f"console log: {machine.console_log}", file=sys.stderr)


def test_app_update_resumes_cut_downloads_commits_and_survives_a_power_cycle(
    world: World, device: Machine
) -> None:
    device.start()
    assert ready_line(device) == ("A", "0.1.0")
    v2 = world.build("0.2.0")
    world.proxy.hold()  # the device sees v2 only once the cuts are armed
    try:
        world.publish(v2, compatible_from="0.1.0", min_version="0.1.0")
        needed, biggest = world.expected_download(v2, running=world.builds["0.1.0"])
        cuts = world.proxy.cut_count
        world.proxy.cut_after([step * needed // 5 for step in range(1, 5)])
    finally:
        world.proxy.release()
    device.wait_for(r"fieldbox ota: installing 0\.2\.0 into slot B", 300)
    installed = device.wait_for(
        r"fieldbox ota: installed 0\.2\.0 in slot B in \d+ s \(([0-9.]+) of ([0-9.]+) MiB downloaded, "
        r"(\d+) bytes",
        900,
    )
    downloaded, whole = int(installed.group(3)), float(installed.group(2))
    print(
        f"\nv2: downloaded {downloaded} bytes, {needed} needed, 4 cuts, chunks up to {biggest}",
        file=sys.stderr,
    )
    assert world.proxy.cut_count - cuts == 4, "the download was cut four times"
    assert needed <= downloaded <= needed + 4 * biggest, "each cut may cost at most the chunk in flight"
    assert downloaded < 0.1 * whole * 2**20, "an app-only change must come mostly from the running slot"
    assert not world.server_events("ota.committed"), "success is reported only after the commit"
    device.wait_for(r"fieldbox ota: trial boot of 0\.2\.0 in slot B", 300)
    device.wait_for(r"fieldbox ota: committed 0\.2\.0 in slot B", 600)
    # power cut, power on: the committed slot boots, not on trial
    device.kill()
    device.start()
    assert ready_line(device) == ("B", "0.2.0")
    assert "trial boot" not in device.console_text()
    events = wait_server(lambda: world.server_events("ota.committed"), 240)
    assert events[0]["version"] == "0.2.0"


def test_a_failing_self_test_rolls_back_by_itself_and_says_why(world: World, device: Machine) -> None:
    broken = world.work / "overlay-v3"
    shutil.copytree(world.overlay, broken)
    manifest = (ROOT / "rootfs-overlay/etc/fieldbox/agents/digits-classifier.toml").read_text()
    assert 'expect_label = "3"' in manifest
    (broken / "etc/fieldbox/agents").mkdir(parents=True)
    (broken / "etc/fieldbox/agents/digits-classifier.toml").write_text(
        manifest.replace('expect_label = "3"', 'expect_label = "8"')
    )
    world.publish(world.build("0.3.0", overlay=broken))
    device.wait_for(r"fieldbox ota: installed 0\.3\.0 in slot A", 900)
    device.wait_for(r"fieldbox ota: trial boot of 0\.3\.0 in slot A", 300)
    why = device.wait_for(r"fieldbox ota: rolled back 0\.3\.0: ([^\n]*)", 600).group(1)
    assert "self-test failed" in why and "expected '8'" in why, why
    assert ready_line(device) == ("B", "0.2.0")
    events = wait_server(lambda: world.server_events("ota.rolled_back"), 240)
    assert "expected '8'" in str(events[0]["reason"])
    # it does not try 0.3.0 again: the next checks (every 10 s) leave the device on 0.2.0
    mark = len(device.console_text())
    time.sleep(30)
    assert not re.search(r"installing 0\.3\.0", device.console_text()[mark:])


POWER_CUTS = [
    # (console line of the phase, seconds after it, seconds to wait for it): five power cuts across the
    # whole update, one per phase that writes something durable. The install lines are progress, so a
    # cut lands in the phase it names whatever the emulator's speed; a phase already passed (the device
    # was quicker) is cut when the wait ends. More cuts, at random moments, are the long series
    # (test_ota_powercut_long.py, `make test-long`): each cut here costs a boot, ~50 s under TCG.
    (r"slot \w: [1-9]\d % written", 0, 300),  # writing the slot (resumed from the saved chunk next time)
    (r"slot \w written, reading it back", 1, 300),  # reading the slot back
    (r"rebooting: into 0\.4\.0", 1, 300),  # trial set, shutting down
    (r"trial boot of 0\.4\.0", 2, 120),  # the trial boot: the health check under way
    (r"committed 0\.4\.0", 0, 120),  # the moment after the commit
]


def test_power_cuts_across_the_whole_update_end_committed_or_intact(world: World, device: Machine) -> None:
    """Five power cuts from download to commit: every boot reaches a working slot (v2 or v4, never a
    degraded one), and once power stays on the device ends on v4 committed or on v2 intact."""
    overlay = world.work / "overlay-v4"
    shutil.copytree(world.overlay, overlay)
    (overlay / "etc/fieldbox/v4-note.txt").write_text("fieldbox 0.4.0\n")
    v4 = world.build("0.4.0", overlay=overlay)
    log_mark = len(device.console_log.read_text(errors="replace"))
    world.publish(v4)
    phases = []
    for pattern, delay, wait in POWER_CUTS:
        if device.alive():  # the first cut: the device is up and about to find v4
            mark = len(device.console_text())
        else:
            device.start()  # the console buffer starts again with this boot
            mark = 0
            slot, version = ready_line(device, 400)
            assert version in ("0.2.0", "0.4.0"), f"booted {version} in slot {slot}"
        found = wait_text(device, mark, pattern, wait)
        time.sleep(delay)
        device.kill()
        phases.append(f"{pattern} +{delay}s: {'cut' if found else 'phase not reached, cut anyway'}")
    print("\n" + "\n".join(phases), file=sys.stderr)
    # power stays on: the update finishes one way or the other (committed, or rolled back)
    device.start()
    deadline = time.monotonic() + 1200
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        history = device.console_log.read_text(errors="replace")[log_mark:]
        found = re.findall(r"fieldbox ota: (committed|rolled back) 0\.4\.0", history)
        outcome = found[-1] if found else None
        time.sleep(2)
    assert outcome is not None, "the update neither committed nor rolled back"
    ready_line(device)
    device.kill()
    device.start()
    slot, version = ready_line(device)
    assert version == ("0.4.0" if outcome == "committed" else "0.2.0"), (outcome, version)
    assert "trial boot" not in device.console_text(), "the final slot must be committed, not on trial"
    print(f"\nafter the power cuts: {outcome}; slot {slot}, version {version}", file=sys.stderr)
