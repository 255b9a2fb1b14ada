"""The CI rule for skips: under CI (``CI`` set, as ``.ci/run`` is run) a skip is a failure.

Tests skip only when a host tool is missing, and ``make test`` installs every one of
them first; so on CI a skip means the set-up is broken, and a skipped test must never
pass for a passed one. That holds for a test that skips while it runs and for a module
that skips while it is collected (``pytest.skip(allow_module_level=True)``,
``importorskip`` at module level), which never reaches the run hook. Imported by
``tests/conftest.py``; kept apart so ``tests/unit/test_ci_rules.py`` can load it alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def _reason(longrepr: Any) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A test that skipped under CI has failed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which counts as a failure: {_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module that skipped while being collected under CI is a collection error."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI"):
        report.outcome = "failed"
        reason = _reason(report.longrepr)
        report.longrepr = f"skipped at collection under CI, which counts as a failure: {reason}"
