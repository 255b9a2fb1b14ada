"""Show and change the A/B slot state from the running device.

What runs is told by the kernel command line (``fieldbox.slot=A|B``, set by
``boot.scr``); what U-Boot boots next is the slot state on the boot partition
(:mod:`fieldbox.bootenv`, mounted at ``/boot/firmware`` or ``$FIELDBOX_BOOTFS``).

Transitions (each writes one copy, the one not in use, and only if something changes):

* ``mark_good(slot)``: the slot works. Sets its good flag; if it is the slot
  U-Boot boots, ends the trial and clears the count (the commit after an update).
* ``mark_bad(slot)``: the slot must not be booted. Clears its good flag; if it is
  the slot U-Boot boots, switches to the other slot, not on trial.
* ``set_trial(slot)``: boot ``slot`` next, counted: U-Boot rolls back to the
  other slot when it was booted ``limit`` times without ``mark_good``. Used by
  the update client after writing the inactive slot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fieldbox import bootenv
from fieldbox.bootenv import Selection, SlotState
from fieldbox.errors import BootStateError

DEFAULT_BOOTFS = "/boot/firmware"
PROC_CMDLINE = Path("/proc/cmdline")
_SLOT_ARG = re.compile(r"(?:^|\s)fieldbox\.slot=(\S*)")


def bootfs_dir() -> Path:
    """Where the FAT boot partition is mounted (``$FIELDBOX_BOOTFS`` or /boot/firmware)."""
    return Path(os.environ.get("FIELDBOX_BOOTFS") or DEFAULT_BOOTFS)


def booted_slot(cmdline: Path = PROC_CMDLINE) -> str | None:
    """The running slot from ``fieldbox.slot=`` on the kernel command line (None if absent)."""
    try:
        text = cmdline.read_text()
    except OSError:
        return None
    match = _SLOT_ARG.search(text)
    if match is None or match.group(1) not in bootenv.SLOTS:
        return None
    return match.group(1)


def resolve_slot(name: str, booted: str | None) -> str:
    """``A``/``B`` as given, or ``booted``/``other`` relative to the running slot."""
    if name in bootenv.SLOTS:
        return name
    if name in ("booted", "other"):
        if booted is None:
            raise BootStateError(
                "cannot tell which slot is running: no fieldbox.slot= on the kernel command line",
                "name the slot: A or B",
            )
        return booted if name == "booted" else bootenv.other_slot(booted)
    raise BootStateError(f"unknown slot {name!r}", "use A, B, booted or other")


# -- pure transitions (unit-tested) -------------------------------------------------


def apply_mark_good(state: SlotState, slot: str) -> SlotState:
    """State after ``slot`` was found working."""
    new = state.with_good(slot, True)
    if state.slot == slot:
        new = replace(new, trial=False, count=0)
    return new


def apply_mark_bad(state: SlotState, slot: str) -> SlotState:
    """State after ``slot`` was found broken: never boot it again until set on trial."""
    new = state.with_good(slot, False)
    if state.slot == slot:
        new = replace(new, slot=bootenv.other_slot(slot), trial=False, count=0)
    return new


def apply_set_trial(state: SlotState, slot: str, limit: int | None = None) -> SlotState:
    """State that boots ``slot`` next on trial, with a fresh count."""
    bootenv.check_slot(slot)
    if limit is not None and not 1 <= limit <= 0xFF:
        raise BootStateError(f"boot limit {limit} out of range", "use 1..255")
    new = replace(state, slot=slot, trial=True, count=0, limit=state.limit if limit is None else limit)
    return new.with_good(slot, False)


def same_state(a: SlotState, b: SlotState) -> bool:
    """Equal apart from the generation."""
    return replace(a, generation=0) == replace(b, generation=0)


# -- on the boot partition ------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """The booted slot and the slot state as read."""

    booted: str | None
    selection: Selection

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--json``, the update client and tests)."""
        state = self.selection.state
        return {
            "booted": self.booted,
            "slot": state.slot,
            "trial": state.trial,
            "count": state.count,
            "limit": state.limit,
            "generation": state.generation,
            "good": {"A": state.good_a, "B": state.good_b},
            "current_copy": self.selection.current,
            "copies": [
                {
                    "name": c.name,
                    "valid": c.valid,
                    "generation": None if c.state is None else c.state.generation,
                    "error": c.error,
                }
                for c in self.selection.copies
            ],
        }


@dataclass(frozen=True)
class Change:
    """The result of a transition: what was, what is, and which copy was written."""

    before: SlotState
    after: SlotState
    written: int | None
    """Index of the copy written, or None when nothing needed to change."""


def status(bootfs: Path, cmdline: Path = PROC_CMDLINE) -> Status:
    """Read the state (no lock: reading never changes anything)."""
    return Status(booted_slot(cmdline), bootenv.read_state(bootfs))


def _transition(bootfs: Path, change: Callable[[SlotState], SlotState]) -> Change:
    with bootenv.locked(bootfs):
        selection = bootenv.read_state(bootfs)
        before = selection.state
        wanted = change(before)
        # Rewrite an unchanged state only to restore a missing second valid copy.
        if same_state(before, wanted) and selection.current is not None:
            return Change(before, before, None)
        with bootenv.writable(bootfs):
            index, after = bootenv.write_state(bootfs, selection, wanted)
        return Change(before, after, index)


def mark_good(bootfs: Path, slot: str) -> Change:
    """Mark ``slot`` (A or B) good; commit it if it is the slot being booted."""
    bootenv.check_slot(slot)
    return _transition(bootfs, lambda s: apply_mark_good(s, slot))


def mark_bad(bootfs: Path, slot: str) -> Change:
    """Mark ``slot`` bad; if U-Boot boots it, switch to the other slot."""
    bootenv.check_slot(slot)
    return _transition(bootfs, lambda s: apply_mark_bad(s, slot))


def set_trial(bootfs: Path, slot: str, limit: int | None = None) -> Change:
    """Boot ``slot`` next on trial (after an update was written into it)."""
    bootenv.check_slot(slot)
    return _transition(bootfs, lambda s: apply_set_trial(s, slot, limit))


def describe(status: Status, bootfs: Path) -> str:
    """The human-readable ``bootctl status`` text."""
    sel = status.selection
    state = sel.state
    if state.trial:
        nxt = f"{state.slot} (on trial: {state.count} of {state.limit} boots used)"
    else:
        nxt = f"{state.slot} (committed)"
    lines = [
        f"booted slot:  {status.booted or 'unknown (no fieldbox.slot= on the kernel command line)'}",
        f"next boot:    {nxt}",
        f"slot A:       {'good' if state.good_a else 'not marked good'}",
        f"slot B:       {'good' if state.good_b else 'not marked good'}",
        f"generation:   {state.generation}",
    ]
    for copy in sel.copies:
        if copy.state is not None:
            text = f"valid, generation {copy.state.generation}"
            if copy.index == sel.current:
                text += " (in use)"
        else:
            text = f"invalid: {copy.error}"
        lines.append(f"{copy.name + ':':13} {text}")
    if sel.current is None:
        lines.append(f"warning: no valid slot state in {bootfs}: U-Boot boots slot A on trial")
    return "\n".join(lines)
