"""System-test fixtures: the built image (once per run) and QEMU machines booting it.

The image is built by the same code as ``make image`` (``fieldbox build``), into
``build/``; the Debian root filesystem comes from the cache when its inputs are
unchanged, so a rerun costs about a minute. Machines run the real image under
``qemu-system-aarch64 -M virt -m 512M`` on a throwaway qcow2 overlay each.

Fixtures other system tests (A/B rollback, power cuts) reuse:

- ``fieldbox_image`` (session): the :class:`~fieldbox_host.image.build.BuildResult`.
- ``make_machine`` (function): ``make_machine(**kwargs) -> Machine`` (not started;
  killed at the end of the test). kwargs go to :class:`fieldbox_host.qemu.Machine`.
- ``booted`` (function): a machine already at the "fieldbox ready" line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldbox_host.image.build import BuildOptions, BuildResult, build_image, summary
from fieldbox_host.qemu import Machine

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


def _ensure_models() -> None:
    """The image carries build/models/*.tflite (the agents' manifests name them)."""
    if (BUILD / "models/.stamp").exists() or not (ROOT / "provisioning/fieldbox_host/models").is_dir():
        return
    subprocess.run(
        [sys.executable, "-m", "fieldbox_host.models", str(BUILD / "models"),
         "--assets", str(BUILD / "assets")],
        cwd=ROOT, check=True,
    )  # fmt: skip
    (BUILD / "models/.stamp").touch()


@pytest.fixture(scope="session")
def fieldbox_image(assets_dir: Path) -> BuildResult:
    """The debug image (a root shell on hvc0 for the tests that need to look inside), built (or
    rebuilt from cache) once per test session."""
    _ensure_models()
    result = build_image(BuildOptions(build_dir=BUILD, debug_shell=True))
    print("\n" + summary(result), file=sys.stderr)
    assert result.image is not None and result.image.is_file()
    return result


@pytest.fixture
def make_machine(fieldbox_image: BuildResult, tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    """A factory of machines on fresh overlays; every machine is killed after the test."""
    machines: list[Machine] = []

    def make(**kwargs: object) -> Machine:
        assert fieldbox_image.image is not None
        workdir = tmp_path / f"vm{len(machines)}"
        machine = Machine(fieldbox_image.image, workdir, **kwargs)  # type: ignore[arg-type]
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.kill()
        if os.environ.get("FIELDBOX_KEEP_CONSOLE"):
            print(f"console log: {machine.console_log}", file=sys.stderr)


@pytest.fixture
def booted(make_machine: Callable[..., Machine]) -> Machine:
    """A 512 MiB machine booted to "fieldbox ready"."""
    machine = make_machine()
    machine.start()
    machine.wait_ready()
    return machine
