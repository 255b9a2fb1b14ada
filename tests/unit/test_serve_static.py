"""The update repository's static file serving: byte ranges and paths that stay inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldbox_host.serve.static import parse_range, resolve


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=900-5000", (900, 1000)),
        ("bytes=1000-", False),
        ("bytes=5-4", False),
        ("bytes=-0", False),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_ranges(header: str | None, expected: object) -> None:
    assert parse_range(header, 1000) == expected


def test_paths_stay_inside_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True)
    (repo / "metadata/timestamp.json").write_text("{}")
    (tmp_path / "secret").write_text("no")
    (repo / "metadata/link").symlink_to(tmp_path / "secret")
    assert resolve(repo, "metadata/timestamp.json") == (repo / "metadata/timestamp.json").resolve()
    for bad in (
        "../secret",
        "metadata/../../secret",
        "metadata/link",
        "/etc/passwd",
        "metadata",
        "%2e%2e/secret",
        "",
    ):
        assert resolve(repo, bad) is None, bad
