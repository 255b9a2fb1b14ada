"""A long build step's output is logged line by line as it comes, and a failure names its last line."""

from __future__ import annotations

import logging

import pytest

from fieldbox_host.image import proc
from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.proc import run


def test_streamed_output_is_logged_as_it_comes_and_returned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fieldbox.image")
    script = "echo 'I: downloading'; echo 'W: on stderr' >&2; echo done"
    out = run(["sh", "-c", script], what="t", stream=True)
    assert out == "I: downloading\nW: on stderr\ndone\n"
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("| I: downloading") for m in logged)
    assert any(m.endswith("| W: on stderr") for m in logged)


def test_a_streamed_failure_is_one_line_naming_the_tool_and_its_last_words() -> None:
    with pytest.raises(ImageError, match=r"^mmdebstrap failed: E: cannot reach the mirror$"):
        run(["sh", "-c", "echo working; echo 'E: cannot reach the mirror' >&2; exit 1"], what="mmdebstrap",
            stream=True)  # fmt: skip
    with pytest.raises(ImageError, match="is not installed"):
        run(["no-such-tool-here"], what="x", stream=True)


def test_a_quiet_stretch_gets_still_running_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proc, "HEARTBEAT_S", 0.2)
    caplog.set_level(logging.INFO, logger="fieldbox.image")
    out = run(["sh", "-c", "echo 'I: installing'; sleep 1; echo done"], what="t", stream=True)
    assert out == "I: installing\ndone\n"
    alive = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert alive and all(m.endswith("still running (I: installing)") for m in alive)
