"""``fieldbox emulate``: boot a built image under QEMU like a 512 MiB device.

    fieldbox emulate [IMAGE] [--serial stdio|tcp] [--port N] [--memory MiB] [--smp N]
                     [--keep-state] [--debug-shell]

The image is never written: the disk is a qcow2 overlay in build/emulate/
(made anew each run unless --keep-state). With --serial stdio (default) the
console is this terminal (Ctrl-A X quits QEMU); with --serial tcp QEMU waits
for a client on 127.0.0.1:PORT before it starts (any pyserial socket:// URL).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldbox import __version__


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``emulate`` verb."""
    parser = subparsers.add_parser(
        "emulate",
        help="boot the built image under qemu-system-aarch64 (512 MiB, console on this terminal)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "image", nargs="?", type=Path, default=Path(f"build/fieldbox-{__version__}-arm64.img"),
        help="raw image (default: the one `make image` builds)",
    )  # fmt: skip
    parser.add_argument("--serial", choices=("stdio", "tcp"), default="stdio", help="where the console goes")
    parser.add_argument("--port", type=int, default=4321, help="TCP port for --serial tcp (default 4321)")
    parser.add_argument("--memory", type=int, default=512, help="guest memory in MiB (default 512)")
    parser.add_argument("--smp", type=int, default=2, help="guest CPUs (default 2)")
    parser.add_argument(
        "--machine", choices=("virt", "raspi3b"), default="virt",
        help="QEMU machine: virt (default) or raspi3b (the Pi boot path: the image's own rpi_arm64 "
        "U-Boot and device tree, SD card, 1 GiB; slow)",
    )  # fmt: skip
    parser.add_argument("--keep-state", action="store_true", help="reuse the overlay of the last run")
    parser.add_argument(
        "--debug-shell", action="store_true",
        help="connect the guest's hvc0 debug shell to build/emulate/hvc0.sock (debug images)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("build/emulate"), help=argparse.SUPPRESS)
    parser.set_defaults(func=_emulate)


def _emulate(args: argparse.Namespace) -> int:
    from fieldbox_host.image.hostcheck import check_qemu
    from fieldbox_host.qemu import run_interactive

    check_qemu()
    return run_interactive(
        args.image, args.workdir, memory_mib=args.memory, smp=args.smp, serial=args.serial,
        port=args.port, keep_state=args.keep_state, debug_shell=args.debug_shell, board=args.machine,
    )  # fmt: skip
