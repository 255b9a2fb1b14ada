"""``fieldbox dev up``: the device's services under the real supervisord, on this host.

Runs ``rootfs-overlay/etc/supervisor/supervisord.conf`` (the image's own file)
with the store writer, runner and workflows programs over a temporary (or
given) data directory, so a user sees the appliance's runtime work before
building an image. Prints where the inbox is and how to look at results;
Ctrl-C stops everything (supervisord stops the programs in reverse order).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from fieldbox.errors import ServiceUnavailableError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dev`` verb."""
    parser = subparsers.add_parser(
        "dev", help="run the device services on this host", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="dev_verb", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start supervisord with the store, runner and workflows programs")
    up.add_argument("--data", type=Path, help="data directory (default: a new temporary one, kept)")
    up.add_argument("--run", type=Path, help="socket directory (default: a temporary one)")
    up.add_argument("--etc", type=Path, help="config directory (default: rootfs-overlay/etc/fieldbox)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for RUNNING")
    up.set_defaults(func=cmd_up)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    """Start, print how to use it, wait for Ctrl-C, stop."""
    from fieldbox_host.devstack import DevStack

    stack = DevStack(data=args.data, run=args.run, etc=args.etc)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` of dev up stops supervisord too
    # Ctrl-C even when started in the background of a script, where SIGINT arrives ignored
    # (POSIX: asynchronous commands) and Python would not turn it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    print(f"fieldbox dev: starting supervisord ({stack.conf})", flush=True)
    try:
        stack.start(timeout=args.timeout, console=True)
        env = (
            f"FIELDBOX_DATA={shlex.quote(str(stack.data))} FIELDBOX_RUN={shlex.quote(str(stack.run))} "
            f"FIELDBOX_ETC={shlex.quote(str(stack.etc))}"
        )
        print(
            "\n".join(
                [
                    "",
                    "fieldbox dev: store, runner and workflows are RUNNING.",
                    f"  drop images into   {stack.inbox}/   (write x.jpg.tmp, then rename to x.jpg)",
                    f"  failed items       {stack.data / 'failed'}/   (processed inputs are deleted;"
                    " budget.toml inbox.keep_done keeps copies)",
                    f"  logs               {stack.log_dir}/",
                    f"  results            {env} fieldbox store query",
                    f"  workflow status    {env} fieldbox workflow status",
                    f"  submit one file    {env} fieldbox workflow submit face-inbox IMAGE",
                    f"  supervisorctl      {stack.supervisorctl_command()}",
                    "Ctrl-C stops everything (the data directory is kept).",
                    "",
                ]
            ),
            flush=True,
        )
        while True:
            if stack.proc is None or stack.proc.poll() is not None:
                raise ServiceUnavailableError(
                    "supervisord exited", f"see {stack.log_dir / 'supervisord.log'}"
                )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nfieldbox dev: stopping ...", file=sys.stderr, flush=True)
        return 0
    finally:
        stack.stop()
        if args.run is None:
            shutil.rmtree(stack.run, ignore_errors=True)
        print(f"fieldbox dev: stopped; data kept in {stack.data}", file=sys.stderr, flush=True)
