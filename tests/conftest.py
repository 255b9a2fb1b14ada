"""Shared fixtures: where the real models and photographs are.

Tests use real assets (models and images extracted from pinned wheels, sha256
checked) rather than stand-ins. ``assets_dir`` makes sure they are there even
on a fresh clone before ``make assets``; ``models_dir`` is where ``make models``
puts the models fieldbox builds itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI (``CI`` set, as `.ci/run` is run), a skipped test is a failure.

    Tests skip only when a host tool is missing, and `make test` installs every
    one of them first; so on CI a skip means the set-up is broken, and a
    skipped test must never pass for a passed one.
    """
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI, which counts as a failure: {reason}"
