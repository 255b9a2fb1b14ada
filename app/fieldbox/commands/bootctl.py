"""``fieldbox bootctl ...``: show and change the A/B slot state on the device.

    fieldbox bootctl status [--json]
    fieldbox bootctl mark-good [SLOT]        SLOT: A, B, booted (default) or other
    fieldbox bootctl mark-bad [SLOT]
    fieldbox bootctl set-trial SLOT [--limit N]

``--bootfs DIR`` (or ``$FIELDBOX_BOOTFS``) names where the FAT boot partition
is mounted (default /boot/firmware); ``--cmdline FILE`` replaces /proc/cmdline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fieldbox import bootctl


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bootctl`` verb and its sub-verbs."""
    parser = subparsers.add_parser(
        "bootctl",
        help="A/B boot slots: status, mark good/bad, set a trial boot",
        description="Show and change which root slot U-Boot boots, and whether that boot is a counted trial.",
    )
    parser.add_argument(
        "--bootfs",
        type=Path,
        help=f"mounted boot partition (default $FIELDBOX_BOOTFS or {bootctl.DEFAULT_BOOTFS})",
    )
    parser.add_argument(
        "--cmdline",
        type=Path,
        default=bootctl.PROC_CMDLINE,
        help="kernel command line file (default /proc/cmdline)",
    )
    sub = parser.add_subparsers(dest="bootctl_verb", metavar="SUBVERB", required=True)

    show = sub.add_parser("status", help="booted slot, next slot, trial, count, both state copies")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_status)

    good = sub.add_parser("mark-good", help="the slot works: end its trial (commit)")
    good.add_argument("slot", nargs="?", default="booted", help="A, B, booted (default) or other")
    good.set_defaults(func=_mark_good)

    bad = sub.add_parser("mark-bad", help="the slot is broken: boot the other one")
    bad.add_argument("slot", nargs="?", default="booted", help="A, B, booted (default) or other")
    bad.set_defaults(func=_mark_bad)

    trial = sub.add_parser(
        "set-trial", help="boot SLOT next, rolling back after LIMIT boots without mark-good"
    )
    trial.add_argument("slot", help="A, B, booted or other")
    trial.add_argument(
        "--limit", type=int, help="boots allowed in the trial (default: keep the current limit)"
    )
    trial.set_defaults(func=_set_trial)


def _bootfs(args: argparse.Namespace) -> Path:
    return Path(args.bootfs) if args.bootfs else bootctl.bootfs_dir()


def _status(args: argparse.Namespace) -> int:
    bootfs = _bootfs(args)
    status = bootctl.status(bootfs, args.cmdline)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(bootctl.describe(status, bootfs))
    return 0


def _report(change: bootctl.Change, what: str) -> int:
    after = change.after
    nxt = f"{after.slot} on trial ({after.count}/{after.limit})" if after.trial else f"{after.slot}"
    if change.written is None:
        print(f"{what}: already so; next boot: {nxt}")
    else:
        print(f"{what}: wrote fbstate.{change.written} generation {after.generation}; next boot: {nxt}")
    return 0


def _mark_good(args: argparse.Namespace) -> int:
    slot = bootctl.resolve_slot(args.slot, bootctl.booted_slot(args.cmdline))
    return _report(bootctl.mark_good(_bootfs(args), slot), f"slot {slot} marked good")


def _mark_bad(args: argparse.Namespace) -> int:
    slot = bootctl.resolve_slot(args.slot, bootctl.booted_slot(args.cmdline))
    return _report(bootctl.mark_bad(_bootfs(args), slot), f"slot {slot} marked bad")


def _set_trial(args: argparse.Namespace) -> int:
    slot = bootctl.resolve_slot(args.slot, bootctl.booted_slot(args.cmdline))
    return _report(bootctl.set_trial(_bootfs(args), slot, args.limit), f"slot {slot} set on trial")
