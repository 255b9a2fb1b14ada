"""A boot that init reported degraded is never committed, whatever the programs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox.ota import health


def test_a_degraded_boot_fails_the_health_check_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDBOX_RUN", str(tmp_path))
    (tmp_path / "degraded").write_text("data partition /dev/vda4 is damaged\n")
    verdict = health.check(timeout_s=60, stable_s=1, sleep=lambda _: pytest.fail("must not wait"))
    assert not verdict.ok
    assert verdict.reason == "the boot is degraded: data partition /dev/vda4 is damaged"
