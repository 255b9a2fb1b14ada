"""boot.scr under the real qemu_arm64 U-Boot: slot choice, trial counting, rollback.

Fast (about a second per boot): a small test disk instead of the full image,
stand-in kernels, and the state read back from the disk image with mtools and
parsed with fieldbox.bootenv -- the same definition ``fieldbox bootctl`` uses.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import abdisk
import pytest

from fieldbox import bootctl, bootenv
from fieldbox.bootenv import SlotState

pytestmark = [pytest.mark.system]

if abdisk.missing_tools():
    pytest.skip(
        f"missing host tools {abdisk.missing_tools()} (make host-deps installs them)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built test disk, copied by each test."""
    return abdisk.make_disk(tmp_path_factory.mktemp("abdisk"))


@pytest.fixture
def disk(pristine: Path, tmp_path: Path) -> Path:
    """This test's own copy of the test disk."""
    path = tmp_path / "disk.img"
    shutil.copyfile(pristine, path)
    return path


def _console_state(text: str) -> tuple[str, int, str, bool, int]:
    match = abdisk.STATE_LINE.search(text.encode())
    assert match, text[-2000:]
    copy, gen, slot, trial, count = (g.decode() for g in match.groups())
    return copy, int(gen, 16), slot, trial == "1", int(count, 16)


def test_committed_slot_boots_without_writing(disk: Path) -> None:
    before = abdisk.read_copies(disk)
    slot, count, text = abdisk.boot_once(disk)
    assert (slot, count) == ("A", 0)
    args = "root=PARTUUID=46424f58-02 ro rootwait fieldbox.slot=A console=ttyAMA0,115200"
    assert f"fieldbox: bootargs {args}" in text
    assert abdisk.read_copies(disk) == before


def test_three_boots_never_marked_good_then_the_fourth_boots_the_other_slot(disk: Path) -> None:
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B"))
    seen = []
    for _ in range(5):
        before = abdisk.read_selection(disk)
        slot, count, text = abdisk.boot_once(disk)
        after = abdisk.read_selection(disk)
        want_slot, want_count, want_state = abdisk.expected_boot(before.state)
        assert (slot, count) == (want_slot, want_count)
        # The state read from the host with mtools agrees with what U-Boot printed and did.
        assert _console_state(text)[:2] == (str(before.current), before.state.generation)
        if want_state is None:
            assert after.state == before.state
        else:
            assert after.state == want_state
            assert after.current == before.target  # written into the other copy
            assert after.copies[before.current or 0].state == before.state  # the old copy untouched
        seen.append((slot, count))
        assert f"root=PARTUUID=46424f58-0{2 if slot == 'A' else 3} ro rootwait fieldbox.slot={slot} " in text
    assert seen == [("B", 1), ("B", 2), ("B", 3), ("A", 0), ("A", 0)]
    final = abdisk.read_selection(disk).state
    assert (final.slot, final.trial, final.good_a, final.good_b) == ("A", False, True, False)


def test_mark_good_resets_the_count(disk: Path) -> None:
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B"))
    assert abdisk.boot_once(disk)[:2] == ("B", 1)
    assert abdisk.boot_once(disk)[:2] == ("B", 2)
    abdisk.set_state(disk, lambda s: bootctl.apply_mark_good(s, "B"))  # what the health check does
    for _ in range(4):
        assert abdisk.boot_once(disk)[:2] == ("B", 0)
    state = abdisk.read_selection(disk).state
    assert (state.slot, state.trial, state.count, state.good_b) == ("B", False, 0, True)


def test_uboot_writes_the_bytes_bootenv_would(disk: Path) -> None:
    """env export -c -s 0x4000 and bootenv.encode_env are byte-identical for the same state."""
    abdisk.set_state(disk, lambda s: bootctl.apply_set_trial(s, "B"))
    target = abdisk.read_selection(disk).target
    abdisk.boot_once(disk)
    written = abdisk.read_copies(disk)[target]
    assert written is not None
    assert SlotState.decode(written).encode() == written


def _torn(good: bytes, old: bytes, cut: int) -> bytes:
    return good[:cut] + old[cut:]


STATE_A = replace(bootenv.initial_state("A"), generation=7)
STATE_B = replace(STATE_A, slot="B", generation=8)
ILL_FORMED = bootenv.encode_env({**STATE_B.to_env(), "fb_slot": "Z"})
CASES = {
    "both valid, copy 1 newer": (STATE_A.encode(), STATE_B.encode()),
    "both valid, copy 0 newer": (STATE_B.encode(), replace(STATE_A, generation=3).encode()),
    "same generation": (STATE_A.encode(), replace(STATE_B, generation=7).encode()),
    "newer copy torn at byte 10": (STATE_A.encode(), _torn(STATE_B.encode(), STATE_A.encode(), 10)),
    "newer copy torn at byte 60": (_torn(STATE_B.encode(), bytes(16384), 60), STATE_A.encode()),
    "newer copy missing": (None, STATE_A.encode()),
    "newer copy truncated": (STATE_B.encode()[:8192], STATE_A.encode()),
    "CRC-valid but ill-formed": (ILL_FORMED, STATE_A.encode()),
    "both corrupt": (bytes(16384), b"\xff" * 16384),
}


@pytest.mark.parametrize("case", list(CASES))
def test_uboot_chooses_the_copy_bootenv_chooses(disk: Path, case: str) -> None:
    images = CASES[case]
    for index, data in enumerate(images):
        if data is None:
            abdisk.delete_copy(disk, index)
        else:
            abdisk.write_copy(disk, index, data)
    expected = bootenv.select(list(images))
    slot, count, text = abdisk.boot_once(disk)
    copy, gen, state_slot, trial, state_count = _console_state(text)
    assert copy == ("none" if expected.current is None else str(expected.current))
    assert (gen, state_slot, trial, state_count) == (
        expected.state.generation, expected.state.slot, expected.state.trial, expected.state.count
    )
    want_slot, want_count, want_state = abdisk.expected_boot(expected.state)
    assert (slot, count) == (want_slot, want_count)
    if expected.current is None:
        assert "no valid slot state: trying slot A on trial" in text
        # U-Boot repaired the state: copy 0 now holds generation 1, slot A on trial, count 1.
        after = abdisk.read_selection(disk)
        assert after.current == 0
        assert after.state == want_state


def test_slot_without_a_kernel_falls_back_for_this_boot(tmp_path: Path) -> None:
    disk = abdisk.make_disk(tmp_path, slots=("A",))
    abdisk.set_state(disk, lambda s: replace(s, slot="B"))  # committed to an empty slot B
    slot, _, text = abdisk.boot_once(disk)
    assert slot == "A"
    assert re.search(r"slot B did not boot\s+fieldbox: falling back to slot A for this boot", text)
