"""System-test fixtures: the built image (once per run) and QEMU machines booting it.

The image is built by the same code as ``make image`` (``fieldbox build``), into
``build/``; the Debian root filesystem comes from the cache when its inputs are
unchanged, so a rerun costs about a minute. Machines run the real image under
``qemu-system-aarch64 -M virt -m 512M`` on a throwaway qcow2 overlay each.

Fixtures other system tests (A/B rollback, power cuts) reuse:

- ``fieldbox_image`` (session): the debug image's :class:`~fieldbox_host.image.build.BuildResult`.
- ``release_image`` (session): the release image's (what users flash: no shell).
- ``make_machine`` (function): ``make_machine(**kwargs) -> Machine`` (not started;
  killed at the end of the test). kwargs go to :class:`fieldbox_host.qemu.Machine`.
- ``booted`` (function): a machine already at the "fieldbox ready" line.
"""

from __future__ import annotations

import contextlib
import logging
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


@contextlib.contextmanager
def live_build_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """The image build's progress on the terminal as it happens (not minutes of captured silence)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    logger = logging.getLogger("fieldbox.image")
    level = logger.level
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        handler = logging.StreamHandler(sys.stderr)  # the terminal's, now that capture is off
        handler.setFormatter(logging.Formatter("  build: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture(scope="session")
def fieldbox_image(assets_dir: Path, request: pytest.FixtureRequest) -> BuildResult:
    """The debug image (a root shell on hvc0 for the tests that need to look inside), built (or
    rebuilt from cache) once per test session."""
    _ensure_models()
    with live_build_log(request):
        result = build_image(BuildOptions(build_dir=BUILD, debug_shell=True))
    print("\n" + summary(result), file=sys.stderr)
    assert result.image is not None and result.image.is_file()
    return result


@pytest.fixture(scope="session")
def release_image(assets_dir: Path, request: pytest.FixtureRequest) -> BuildResult:
    """The release image, as ``make image`` makes it (no shell on any console), built once per session."""
    _ensure_models()
    with live_build_log(request):
        result = build_image(BuildOptions(build_dir=BUILD))
    assert result.image is not None and "debug" not in result.image.name
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
