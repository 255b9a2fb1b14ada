"""The slot-state file format and its read/write rules (fieldbox.bootenv)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from fieldbox import bootenv
from fieldbox.bootenv import ENV_SIZE, FALLBACK_STATE, SlotState
from fieldbox.errors import BootStateError

STATE = SlotState(generation=0x2A, slot="B", trial=True, count=2, limit=3, good_a=True, good_b=False)


def test_round_trip_of_variables_and_state() -> None:
    env = {"fb_slot": "A", "other": "x=y with = signs", "empty": ""}
    assert bootenv.decode_env(bootenv.encode_env(env)) == env
    assert SlotState.decode(STATE.encode()) == STATE
    assert len(STATE.encode()) == ENV_SIZE


def test_layout_is_crc_le_then_sorted_nul_separated_pairs_zero_padded() -> None:
    image = bootenv.encode_env({"b": "2", "a": "1"})
    assert image[4:13] == b"a=1\0b=2\0\0"
    assert image[13:] == bytes(ENV_SIZE - 13)
    assert int.from_bytes(image[:4], "little") == zlib.crc32(image[4:])


def test_numbers_are_hex_as_uboot_setexpr_writes_them() -> None:
    env = replace(STATE, generation=26, count=10).to_env()
    assert env["fb_gen"] == "1a"
    assert env["fb_count"] == "a"


needs_mkenvimage = pytest.mark.skipif(shutil.which("mkenvimage") is None, reason="u-boot-tools not installed")


@needs_mkenvimage
def test_byte_identical_to_mkenvimage(tmp_path: Path) -> None:
    text = tmp_path / "state.txt"
    text.write_text("".join(f"{k}={v}\n" for k, v in sorted(STATE.to_env().items())))
    out = tmp_path / "state.bin"
    subprocess.run(["mkenvimage", "-s", str(ENV_SIZE), "-p", "0", "-o", str(out), str(text)], check=True)
    assert out.read_bytes() == STATE.encode()


@needs_mkenvimage
def test_reads_mkenvimage_default_ff_padding(tmp_path: Path) -> None:
    text = tmp_path / "state.txt"
    text.write_text("".join(f"{k}={v}\n" for k, v in STATE.to_env().items()))
    out = tmp_path / "state.bin"
    subprocess.run(["mkenvimage", "-s", str(ENV_SIZE), "-o", str(out), str(text)], check=True)
    assert out.read_bytes()[-1] == 0xFF
    assert SlotState.decode(out.read_bytes()) == STATE


@pytest.mark.skipif(shutil.which("fw_printenv") is None, reason="libubootenv-tool not installed")
def test_fw_printenv_reads_our_file(tmp_path: Path) -> None:
    state_file = tmp_path / "fbstate.0"
    state_file.write_bytes(STATE.encode())
    config = tmp_path / "fw_env.config"
    config.write_text(f"{state_file} 0x0 0x4000\n")
    proc = subprocess.run(
        ["fw_printenv", "-c", str(config)], capture_output=True, text=True, check=True
    )
    printed = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert printed == STATE.to_env()


@pytest.mark.parametrize("offset", [0, 3, 4, 10, 200, ENV_SIZE - 1])
def test_any_flipped_byte_is_rejected(offset: int) -> None:
    image = bytearray(STATE.encode())
    image[offset] ^= 0x01
    with pytest.raises(BootStateError, match="bad CRC"):
        bootenv.decode_env(bytes(image))


@pytest.mark.parametrize("size", [0, 4, 512, ENV_SIZE - 1, ENV_SIZE + 1])
def test_wrong_size_is_rejected(size: int) -> None:
    image = STATE.encode()
    image = image[:size] if size <= ENV_SIZE else image + b"\0"
    with pytest.raises(BootStateError, match="wrong size"):
        bootenv.decode_env(image)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fb_slot", "C", "not A or B"),
        ("fb_trial", "yes", "not 0 or 1"),
        ("fb_gen", "xyz", "hexadecimal"),
        ("fb_count", "123456789", "hexadecimal"),
        ("fb_format", "2", "fb_format"),
    ],
)
def test_crc_valid_but_ill_formed_copy_is_rejected(key: str, value: str, message: str) -> None:
    env = STATE.to_env()
    env[key] = value
    with pytest.raises(BootStateError, match=message):
        SlotState.decode(bootenv.encode_env(env))


def test_missing_variable_is_rejected() -> None:
    env = STATE.to_env()
    del env["fb_limit"]
    with pytest.raises(BootStateError, match="missing fb_limit"):
        SlotState.decode(bootenv.encode_env(env))


# -- the reading rule over every combination of the two copies ------------------------


def _copy(kind: str, generation: int) -> bytes | None:
    if kind == "missing":
        return None
    good = replace(STATE, generation=generation, slot="A" if generation % 2 else "B").encode()
    if kind == "valid":
        return good
    if kind == "corrupt":
        return good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    if kind == "short":
        return good[:4096]
    if kind == "ill-formed":
        env = replace(STATE, generation=generation).to_env()
        env["fb_slot"] = "Z"
        return bootenv.encode_env(env)
    raise AssertionError(kind)


KINDS = ("valid", "corrupt", "missing", "short", "ill-formed")


@pytest.mark.parametrize(("kind0", "kind1"), list(itertools.product(KINDS, KINDS)))
@pytest.mark.parametrize(("gen0", "gen1"), [(5, 6), (6, 5), (7, 7)])
def test_selection_rule(kind0: str, kind1: str, gen0: int, gen1: int) -> None:
    sel = bootenv.select([_copy(kind0, gen0), _copy(kind1, gen1)])
    valid0, valid1 = kind0 == "valid", kind1 == "valid"
    if valid0 and valid1:
        expected = 1 if gen1 > gen0 else 0  # higher generation; a tie goes to copy 0
    elif valid0:
        expected = 0
    elif valid1:
        expected = 1
    else:
        expected = None
    assert sel.current == expected
    if expected is None:
        # No valid copy: slot A on trial, so a failing A still leads to B.
        assert sel.state == FALLBACK_STATE
        assert (sel.state.slot, sel.state.trial) == ("A", True)
        assert sel.target == 0
    else:
        assert sel.state.generation == (gen0, gen1)[expected]
        assert sel.target == 1 - expected
    for copy, kind in zip(sel.copies, (kind0, kind1), strict=True):
        assert copy.valid == (kind == "valid")
        assert (copy.error is None) == (kind == "valid")


def test_initial_files_start_committed_on_slot_a() -> None:
    sel = bootenv.select(list(bootenv.initial_files("A")))
    assert sel.current == 0
    assert (sel.state.slot, sel.state.trial, sel.state.good_a, sel.state.generation) == ("A", False, True, 1)
    assert sel.copies[1].valid


# -- the writing rule ----------------------------------------------------------------


def _bootfs(tmp_path: Path) -> Path:
    for name, data in zip(bootenv.COPY_NAMES, bootenv.initial_files(), strict=True):
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_write_goes_to_the_other_copy_in_place_and_never_touches_the_one_in_use(tmp_path: Path) -> None:
    bootfs = _bootfs(tmp_path)
    for step in range(6):
        sel = bootenv.read_state(bootfs)
        in_use = bootfs / bootenv.COPY_NAMES[sel.current or 0]
        before_bytes = in_use.read_bytes()
        target = bootfs / bootenv.COPY_NAMES[sel.target]
        inode = target.stat().st_ino
        index, written = bootenv.write_state(bootfs, sel, replace(sel.state, count=step))
        assert index == sel.target
        assert written.generation == sel.state.generation + 1
        assert in_use.read_bytes() == before_bytes
        assert target.stat().st_ino == inode  # overwritten in place, not replaced
        assert bootenv.read_state(bootfs).state == written


def test_write_recreates_a_missing_or_wrong_sized_copy(tmp_path: Path) -> None:
    bootfs = _bootfs(tmp_path)
    (bootfs / "fbstate.1").unlink()
    sel = bootenv.read_state(bootfs)
    assert sel.target == 1
    bootenv.write_state(bootfs, sel, replace(sel.state, trial=True))
    assert bootenv.read_state(bootfs).current == 1
    (bootfs / "fbstate.0").write_bytes(b"short")
    sel = bootenv.read_state(bootfs)
    bootenv.write_state(bootfs, sel, sel.state)
    assert (bootfs / "fbstate.0").stat().st_size == ENV_SIZE
    assert bootenv.read_state(bootfs).current == 0


def test_torn_write_at_any_sector_leaves_old_or_new_state() -> None:
    """A power cut after any prefix of the write (bytes, then sectors): old or new, never other."""
    old = bootenv.initial_state()
    copies: list[bytes | None] = [old.encode(), replace(old, generation=0).encode()]
    sel = bootenv.select(copies)
    new = bootenv.next_state(sel, replace(old, slot="B", trial=True))
    new_bytes, before = new.encode(), copies[sel.target]
    assert before is not None
    for cut in [*range(0, 1024), *range(1024, ENV_SIZE + 1, 512)]:
        torn = new_bytes[:cut] + before[cut:]
        trial = list(copies)
        trial[sel.target] = torn
        got = bootenv.select(trial).state
        assert got in (old, new), cut
        # The variables fit in the first sector; the rest is identical zero padding.
        assert (got == new) == (torn == new_bytes)


def test_generation_limit_is_refused() -> None:
    sel = bootenv.select([replace(STATE, generation=bootenv.MAX_GENERATION).encode(), None])
    with pytest.raises(BootStateError, match="at its limit"):
        bootenv.next_state(sel, sel.state)


def test_missing_boot_partition_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BootStateError, match="boot partition not found"):
        bootenv.read_state(tmp_path / "nope")


def test_unwritable_copy_is_a_clear_error(tmp_path: Path) -> None:
    bootfs = _bootfs(tmp_path)
    sel = bootenv.read_state(bootfs)
    target = bootfs / bootenv.COPY_NAMES[sel.target]
    target.unlink()
    target.mkdir()  # unwritable even for root
    with pytest.raises(BootStateError, match=r"cannot write .*fbstate\.1"):
        bootenv.write_state(bootfs, sel, sel.state)
