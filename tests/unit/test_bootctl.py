"""fieldbox bootctl: transitions, the booted slot, and the CLI on a stand-in /boot/firmware."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fieldbox import bootctl, bootenv
from fieldbox.bootenv import SlotState
from fieldbox.cli import main
from fieldbox.errors import BootStateError

COMMITTED_A = bootenv.initial_state("A")
TRIAL_B = replace(COMMITTED_A, slot="B", trial=True, count=2)


def test_mark_good_on_the_trial_slot_commits_it() -> None:
    new = bootctl.apply_mark_good(TRIAL_B, "B")
    assert (new.slot, new.trial, new.count, new.good_b) == ("B", False, 0, True)


def test_mark_good_on_the_other_slot_keeps_a_pending_trial() -> None:
    new = bootctl.apply_mark_good(TRIAL_B, "A")
    assert (new.slot, new.trial, new.count, new.good_a) == ("B", True, 2, True)


def test_mark_bad_on_the_next_slot_switches_away() -> None:
    new = bootctl.apply_mark_bad(TRIAL_B, "B")
    assert (new.slot, new.trial, new.count, new.good_b) == ("A", False, 0, False)
    assert bootctl.apply_mark_bad(TRIAL_B, "A").slot == "B"


def test_set_trial_starts_a_fresh_count() -> None:
    new = bootctl.apply_set_trial(COMMITTED_A, "B", limit=5)
    assert (new.slot, new.trial, new.count, new.limit, new.good_b) == ("B", True, 0, 5, False)
    with pytest.raises(BootStateError, match="out of range"):
        bootctl.apply_set_trial(COMMITTED_A, "B", limit=0)


@pytest.mark.parametrize(
    ("cmdline", "slot"),
    [
        ("console=ttyAMA0 root=PARTUUID=46424f58-02 ro fieldbox.slot=A\n", "A"),
        ("fieldbox.slot=B quiet", "B"),
        ("root=/dev/vda2 ro", None),
        ("fieldbox.slot=C", None),
        ("xfieldbox.slot=A", None),
    ],
)
def test_booted_slot_from_cmdline(tmp_path: Path, cmdline: str, slot: str | None) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline)
    assert bootctl.booted_slot(path) == slot


def test_resolve_slot() -> None:
    assert bootctl.resolve_slot("other", "A") == "B"
    assert bootctl.resolve_slot("booted", "B") == "B"
    assert bootctl.resolve_slot("A", None) == "A"
    with pytest.raises(BootStateError, match="cannot tell which slot is running"):
        bootctl.resolve_slot("booted", None)
    with pytest.raises(BootStateError, match="unknown slot"):
        bootctl.resolve_slot("C", "A")


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A boot partition directory with fresh state files, and a cmdline booted from slot A."""
    bootfs = tmp_path / "firmware"
    bootfs.mkdir()
    for name, data in zip(bootenv.COPY_NAMES, bootenv.initial_files(), strict=True):
        (bootfs / name).write_bytes(data)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=PARTUUID=46424f58-02 ro fieldbox.slot=A\n")
    monkeypatch.setenv("FIELDBOX_BOOTFS", str(bootfs))
    return bootfs, cmdline


def _status(cmdline: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["bootctl", "--cmdline", str(cmdline), "status", "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_cli_update_cycle(device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    bootfs, cmdline = device
    status = _status(cmdline, capsys)
    assert (status["booted"], status["slot"], status["trial"], status["generation"]) == ("A", "A", False, 1)

    assert main(["bootctl", "--cmdline", str(cmdline), "set-trial", "other"]) == 0
    assert "wrote fbstate.1 generation 2; next boot: B on trial (0/3)" in capsys.readouterr().out
    status = _status(cmdline, capsys)
    assert (status["slot"], status["trial"], status["current_copy"]) == ("B", True, 1)

    # U-Boot boots B (counting it); B's health check commits.
    sel = bootenv.read_state(bootfs)
    bootenv.write_state(bootfs, sel, replace(sel.state, count=1))
    cmdline.write_text("fieldbox.slot=B\n")
    assert main(["bootctl", "--cmdline", str(cmdline), "mark-good"]) == 0
    assert "slot B marked good: wrote fbstate.1 generation 4" in capsys.readouterr().out
    status = _status(cmdline, capsys)
    assert (status["slot"], status["trial"], status["count"], status["good"]) == (
        "B", False, 0, {"A": True, "B": True}
    )


def test_mark_good_twice_writes_nothing_the_second_time(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bootfs, cmdline = device
    before = [(bootfs / n).read_bytes() for n in bootenv.COPY_NAMES]
    assert main(["bootctl", "--cmdline", str(cmdline), "mark-good"]) == 0
    assert "already so" in capsys.readouterr().out
    assert [(bootfs / n).read_bytes() for n in bootenv.COPY_NAMES] == before


def test_status_text_names_an_invalid_copy(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bootfs, cmdline = device
    data = bytearray((bootfs / "fbstate.0").read_bytes())
    data[50] ^= 0xFF
    (bootfs / "fbstate.0").write_bytes(bytes(data))
    assert main(["bootctl", "--cmdline", str(cmdline), "status"]) == 0
    out = capsys.readouterr().out
    assert "fbstate.0:    invalid: bad CRC" in out
    assert "fbstate.1:    valid, generation 0 (in use)" in out


def test_no_valid_copy_is_reported_and_repaired(
    device: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bootfs, cmdline = device
    for name in bootenv.COPY_NAMES:
        (bootfs / name).write_bytes(b"\0" * bootenv.ENV_SIZE)
    assert main(["bootctl", "--cmdline", str(cmdline), "status"]) == 0
    assert "U-Boot boots slot A on trial" in capsys.readouterr().out
    assert main(["bootctl", "--cmdline", str(cmdline), "mark-good"]) == 0
    sel = bootenv.read_state(bootfs)
    assert sel.current == 0
    assert sel.state == replace(bootenv.FALLBACK_STATE, generation=1, trial=False, good_a=True)


def test_missing_boot_partition_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIELDBOX_BOOTFS", str(tmp_path / "absent"))
    assert main(["bootctl", "--cmdline", str(tmp_path / "none"), "mark-good", "A"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fieldbox: error: boot partition not found at")
    assert "FIELDBOX_BOOTFS" in err
    assert "\n" not in err


def test_state_written_by_bootctl_decodes_as_slotstate(device: tuple[Path, Path]) -> None:
    bootfs, _ = device
    change = bootctl.set_trial(bootfs, "B", limit=4)
    assert change.written == 1
    assert SlotState.decode((bootfs / "fbstate.1").read_bytes()) == change.after
