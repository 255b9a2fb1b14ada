"""Fixtures for integration tests: the real supervisord with the device's programs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldbox_host.devstack import DevStack
from ota_fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "build" / "assets"


@pytest.fixture
def devstack(tmp_path: Path) -> Iterator[DevStack]:
    """supervisord running store, runner and workflows over tmp dirs; always stopped afterwards."""
    if not (ASSETS / "face_detection_short_range.tflite").exists():
        pytest.fail("build/assets is missing: run `make assets` (make test does)")
    run = Path(tempfile.mkdtemp(prefix="fbx-"))  # short: Unix socket paths are limited
    stack = DevStack(data=tmp_path / "data", run=run)
    try:
        stack.start(timeout=90)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Update keys, a TUF repository and ``fieldbox serve --repo`` on loopback (tests/ota_fleet.py)."""
    f = Fleet(tmp_path / "fleet")
    try:
        yield f
    finally:
        f.close()
