"""``fieldbox build``: the appliance image (or, for ``--board jetson``, a rootfs tarball).

    fieldbox build [--board qemu-arm64|rpi|jetson] [--build-dir build] [--no-debug-shell]
                   [--slot-b copy|empty] [--no-compress]

Needs root and the host packages ``make host-deps`` installs; checks both (and
free space, and the board name) before any long work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldbox_host.image.boards import BOARDS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``build`` verb."""
    parser = subparsers.add_parser(
        "build",
        help="build the bootable arm64 image (Raspberry Pi and QEMU), or a Jetson rootfs tarball",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--board", default="qemu-arm64", help=f"target board: {', '.join(BOARDS)}")
    parser.add_argument("--build-dir", type=Path, default=Path("build"), help="output and cache directory")
    parser.add_argument(
        "--no-debug-shell", dest="debug_shell", action="store_false",
        help="production image: no root shell on the virtio console (hvc0)",
    )  # fmt: skip
    parser.add_argument(
        "--slot-b", choices=("copy", "empty"), default="copy",
        help="root slot B: a copy of A (default; the image can fall back at once) or blank until an update",
    )  # fmt: skip
    parser.add_argument("--no-compress", dest="compress", action="store_false", help="skip the .img.zst")
    parser.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from fieldbox_host.image.build import BuildOptions, build_image, summary

    result = build_image(
        BuildOptions(
            board=args.board,
            build_dir=args.build_dir,
            debug_shell=args.debug_shell,
            slot_b=args.slot_b,
            compress=args.compress,
        )
    )
    print(summary(result))
    return 0
