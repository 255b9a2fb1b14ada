"""The update lifecycle's boot reconciliation, on a stand-in boot partition and /data.

What the first run after a boot concludes from the slot state U-Boot left and
``/data/ota/state.json``: a commit found on the next boot, a rollback by the
boot counter, a trial still waiting for its reboot. (The trial boot's health
check itself runs in QEMU: tests/system/test_ota_image.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fieldbox import bootctl, bootenv
from fieldbox.ota import agent
from fieldbox.ota import state as ostate
from fieldbox.ota.config import OtaConfig
from fieldbox.ota.state import OtaState, Pending, Progress


@pytest.fixture
def bootfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "firmware"
    path.mkdir()
    for name, data in zip(bootenv.COPY_NAMES, bootenv.initial_files(), strict=True):
        (path / name).write_bytes(data)
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FIELDBOX_OTA_CONSOLE", "0")
    return path


def boot(monkeypatch: pytest.MonkeyPatch, slot: str) -> None:
    """The kernel command line says ``fieldbox.slot=<slot>``."""
    monkeypatch.setattr(bootctl, "booted_slot", lambda cmdline=None: slot)


def pending_trial_of_b(bootfs: Path) -> OtaState:
    change = bootctl.set_trial(bootfs, "B")
    st = OtaState(pending=Pending("0.2.0", "B", change.after.generation, time.time(), "0.1.5"))
    st.save()
    return st


def test_an_installed_release_waits_for_its_reboot(bootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = pending_trial_of_b(bootfs)
    boot(monkeypatch, "A")
    assert agent.reconcile(OtaConfig(), st, bootfs) == "waiting for reboot"
    assert OtaState.load().pending is not None


def test_a_rollback_by_the_boot_counter_is_recorded_and_the_version_rejected(
    bootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = pending_trial_of_b(bootfs)
    # U-Boot counted the trial boots past the limit and wrote: slot A, committed
    sel = bootenv.read_state(bootfs)
    rolled = bootctl.apply_mark_bad(sel.state, "B")
    bootenv.write_state(bootfs, sel, rolled)
    boot(monkeypatch, "A")
    assert agent.reconcile(OtaConfig(), st, bootfs) == "rolled back"
    saved = OtaState.load()
    assert saved.pending is None and saved.rejected == ["0.2.0"] and saved.floor == "0"
    last = ostate.history()[-1]
    assert last["event"] == "rolled_back" and "did not pass its health check" in last["reason"]


def test_a_commit_found_on_the_next_boot_is_recorded_and_raises_the_floor(
    bootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = pending_trial_of_b(bootfs)
    bootctl.mark_good(bootfs, "B")  # the health check committed, then the power went before state.json
    boot(monkeypatch, "B")
    assert agent.reconcile(OtaConfig(), st, bootfs) == "committed"
    saved = OtaState.load()
    assert saved.pending is None and saved.floor == "0.1.5"
    assert ostate.history()[-1]["event"] == "committed"


def test_nothing_pending_is_idle(bootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot(monkeypatch, "A")
    assert agent.reconcile(OtaConfig(), OtaState(), bootfs) == "idle"


def test_state_and_progress_survive_a_torn_file(bootfs: Path) -> None:
    directory = ostate.ota_dir()
    directory.mkdir(parents=True)
    (directory / "state.json").write_text('{"floor": "0.')
    assert OtaState.load() == OtaState()
    Progress("ab" * 32, "B", 7).save()
    assert Progress.load() == Progress("ab" * 32, "B", 7)
    (directory / "progress.json").write_text("{")
    assert Progress.load() is None


def test_history_skips_a_torn_line_and_stays_bounded(bootfs: Path) -> None:
    for i in range(ostate.HISTORY_KEEP * 3):
        ostate.record("refused", reason=f"reason {i:04d} " + "x" * 150)
    with open(ostate.ota_dir() / "history.jsonl", "a") as fh:
        fh.write('{"event": "insta')
    entries = ostate.history()
    assert len(entries) <= 2 * ostate.HISTORY_KEEP + 1
    assert entries[-1]["reason"].startswith(f"reason {ostate.HISTORY_KEEP * 3 - 1:04d}")
