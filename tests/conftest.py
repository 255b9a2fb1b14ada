"""Shared fixtures: where the real models and photographs are.

Tests use real assets (models and images extracted from pinned wheels, sha256
checked) rather than stand-ins. ``assets_dir`` makes sure they are there even
on a fresh clone before ``make assets``; ``models_dir`` is where ``make models``
puts the models fieldbox builds itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_rules import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 - hooks
from fieldbox.agents import Agent, load_agent
from fieldbox_host import assets

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (to find rootfs-overlay/, image/, ...)."""
    return ROOT


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """``build/assets`` with every pinned asset present and verified (fetched once if missing)."""
    directory = ROOT / "build" / "assets"
    assets.fetch_all(directory)
    return directory


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """``build/models``: models built by ``make models`` (may not exist yet)."""
    return ROOT / "build" / "models"


@pytest.fixture(scope="session")
def face_detector(assets_dir: Path) -> Agent:
    """The shipped face-detector agent (the image's manifest, the pinned BlazeFace model), loaded once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FIELDBOX_MODELS", str(assets_dir))
    try:
        return load_agent(ROOT / "rootfs-overlay/etc/fieldbox/agents/face-detector.toml")
    finally:
        mp.undo()
