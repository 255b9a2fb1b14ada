"""The long power-cut series: many cuts at random moments while a release image updates itself.

Not part of ``make test`` (marked ``long``; ``make test-long`` runs it): the CI
series of five targeted cuts is in test_ota_image.py. Here the power is cut at
a random moment of each boot, seeded, ``FIELDBOX_LONG_CUTS`` times (default
30); whenever a release commits, the next one is published, so the cuts keep
landing in updates. After every cut the device must boot a working slot (one
of the published versions, never degraded), and once the power stays on it
must end committed, not on trial.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest
from ota_world import close_world, make_world, ready_line, wait_text

from fieldbox_host.image.build import BuildResult
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.long]

CUTS = int(os.environ.get("FIELDBOX_LONG_CUTS", "30"))
SEED = 20261202


def test_many_power_cuts_at_random_moments_of_updates(fieldbox_image: BuildResult, tmp_path: Path) -> None:
    world = make_world(tmp_path)
    versions = ["0.1.0", "0.2.0", "0.3.0", "0.4.0"]
    builds = [world.build(v) for v in versions]
    assert builds[0].image is not None
    machine = Machine(builds[0].image, tmp_path / "vm", debug_shell=False, guestfwd_port=world.proxy.port)
    rng = random.Random(SEED)
    published = 1
    try:
        machine.start()
        assert ready_line(machine) == ("A", "0.1.0")
        world.publish(builds[published])
        for n in range(CUTS):
            time.sleep(rng.uniform(0, 90))
            log = machine.console_log.read_text(errors="replace")
            if f"committed {versions[published]}" in log and published + 1 < len(versions):
                published += 1
                world.publish(builds[published])
            machine.kill()
            machine.start()
            slot, version = ready_line(machine, 400)
            assert version in versions[: published + 1], f"cut {n}: booted {version} in slot {slot}"
            print(f"cut {n}: back up on slot {slot}, {version}", file=sys.stderr)
        # power stays on: whatever was under way ends committed (or rolled back), never on trial
        found = wait_text(
            machine, 0, rf"committed {versions[published]}|rolled back {versions[published]}", 900
        )
        assert found is not None or f"committed {versions[published]}" in machine.console_log.read_text()
        time.sleep(20)
        machine.kill()
        machine.start()
        ready_line(machine)
        assert "trial boot" not in machine.console_text()
    finally:
        machine.kill()
        close_world(world)
