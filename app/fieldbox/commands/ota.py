"""``fieldbox ota ...``: over-the-air updates of the root slot, on the device.

    fieldbox ota status [--json]            installed version, slots, pending trial, last check
    fieldbox ota check                      verify the repository's metadata, say what would be installed
    fieldbox ota install [--reboot now|later] [--retry-rejected]
    fieldbox ota history [--json] [-n N]    what happened: refused, installed, committed, rolled back

The ``ota`` supervisord program does the same on its own every
``interval_s`` (``ota.toml``); these verbs are for a person at the console.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fieldbox import bootctl
from fieldbox.ota import state as ostate


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ota`` verb and its sub-verbs."""
    parser = subparsers.add_parser(
        "ota",
        help="over-the-air updates: status, check, install, history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="ota_verb", metavar="SUBVERB", required=True)
    status = sub.add_parser("status", help="installed version, slots, pending trial, last check")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)
    check = sub.add_parser("check", help="verify the repository and say what would be installed")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=_check)
    install = sub.add_parser("install", help="install the newest acceptable release into the other slot")
    install.add_argument(
        "--reboot",
        choices=("now", "later"),
        default="later",
        help="reboot into the new slot at once, or at the next reboot (default later)",
    )
    install.add_argument(
        "--retry-rejected",
        action="store_true",
        help="also consider a release that already failed its trial here",
    )
    install.set_defaults(func=_install)
    history = sub.add_parser("history", help="what the update client did, newest last")
    history.add_argument("--json", action="store_true", help="print JSON lines")
    history.add_argument("-n", type=int, default=20, help="entries to show (default 20)")
    history.set_defaults(func=_history)


def _status(args: argparse.Namespace) -> int:
    from fieldbox.ota.client import build_info
    from fieldbox.ota.config import config_path, load_config, trusted_root_path

    cfg = load_config()
    st = ostate.OtaState.load()
    info = build_info()
    boot = bootctl.status(bootctl.bootfs_dir())
    root = trusted_root_path()
    doc: dict[str, Any] = {
        "version": info.get("FIELDBOX_VERSION"),
        "board": info.get("FIELDBOX_BOARD"),
        "booted_slot": boot.booted,
        "next_slot": boot.selection.state.slot,
        "trial": boot.selection.state.trial,
        "repository": cfg.repository_url or None,
        "config": str(config_path()),
        "trusted_root": str(root) if root.is_file() else None,
        "floor": st.floor,
        "rejected": st.rejected,
        "pending": None if st.pending is None else vars(st.pending),
        "last_check": st.last_check or None,
        "last_result": st.last_result or None,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.last_check)) if st.last_check else "never"
    pending = st.pending
    lines = [
        f"installed:   {doc['version']} ({doc['board']}), slot {boot.booted}",
        f"next boot:   slot {doc['next_slot']}" + (" (trial)" if doc["trial"] else ""),
        f"pending:     {pending.version} in slot {pending.slot}" if pending else "pending:     nothing",
        f"repository:  {cfg.repository_url or 'none (ota.toml: repository_url)'}",
        f"trusts:      {doc['trusted_root'] or 'no root metadata: this image takes no updates'}",
        f"last check:  {when}: {st.last_result or '-'}",
        f"floor:       {st.floor}" + (f"; rejected here: {', '.join(st.rejected)}" if st.rejected else ""),
    ]
    print("\n".join(lines))
    return 0


def _check(args: argparse.Namespace) -> int:
    from fieldbox.ota.agent import check_and_install
    from fieldbox.ota.config import load_config

    st = ostate.OtaState.load()
    out = check_and_install(load_config(), st, bootctl.bootfs_dir(), install=False, reboot="later")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"installed {out['installed']}; newest published {out.get('newest') or 'none'}")
    for reason in out["refused"]:
        print(f"  refused: {reason}")
    if out["action"] == "available":
        print(f"  {out['candidate']} can be installed: fieldbox ota install")
    else:
        print("  nothing to install")
    return 0


def _install(args: argparse.Namespace) -> int:
    from fieldbox.ota.agent import check_and_install
    from fieldbox.ota.config import load_config

    st = ostate.OtaState.load()

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  slot: {done * 100 // max(total, 1):3d}% ({done >> 20}/{total >> 20} MiB)")
            if done >= total:
                sys.stderr.write("\n")

    out = check_and_install(
        load_config(),
        st,
        bootctl.bootfs_dir(),
        install=True,
        reboot=args.reboot,
        progress=progress,
        retry_rejected=args.retry_rejected,
    )
    for reason in out["refused"]:
        print(f"refused: {reason}")
    if out["action"] == "none":
        print(f"nothing to install: {out['installed']} is the newest acceptable release")
        return 0
    print(
        f"installed {out['candidate']} into slot {out['slot']} in {out['seconds']:.0f} s "
        f"({out['downloaded'] / 2**20:.1f} MiB downloaded of a {out['bundle'] / 2**20:.1f} MiB bundle)"
    )
    if out.get("rebooting"):
        print("rebooting into it now; it is committed only after its health check passes")
    else:
        print("it boots on trial at the next reboot (fieldbox-reboot), committed only if healthy")
    return 0


def _history(args: argparse.Namespace) -> int:
    entries = ostate.history()[-max(args.n, 1) :]
    for e in entries:
        if args.json:
            print(json.dumps(e, sort_keys=True))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.get("time", 0)))
        what = e.get("event", "?")
        version = f" {e['version']}" if "version" in e else ""
        reason = f": {e['reason']}" if e.get("reason") else ""
        print(f"{when} {what}{version}{reason}")
    if not entries and not args.json:
        print("no updates yet")
    return 0
