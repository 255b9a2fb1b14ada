"""``fieldbox build``: the appliance image (or, for ``--board jetson``, a rootfs tarball).

    fieldbox build [--board qemu-arm64|rpi|jetson] [--build-dir build] [--output-dir DIR]
                   [--image-version X.Y.Z] [--repo DIR] [--update-url URL] [--sync-url URL]
                   [--overlay DIR] [--debug-shell] [--slot-b copy|empty] [--no-compress]

The image users flash: no shell on any console, the root account locked.
``--repo`` bakes that update repository's newest root metadata into the
read-only root slot, so the device trusts only its own fleet from its first
boot; ``--update-url`` is where the device finds that repository. A test
image with a root shell on the virtio console is opt-in (``--debug-shell``)
and its file name says so (``*-debug.img``).

Needs root and the host packages ``make host-deps`` installs; checks both (and
free space, and the board name) before any long work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldbox import __version__
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
    parser.add_argument("--output-dir", type=Path, help="where the image files go (default: --build-dir)")
    parser.add_argument("--image-version", default=__version__, metavar="X.Y.Z",
                        help=f"the release version the image carries (default {__version__})")  # fmt: skip
    parser.add_argument("--repo", type=Path, help="update repository whose root metadata the image trusts")
    parser.add_argument("--update-url", default="", metavar="URL",
                        help="the repository as the device reaches it (ota.toml repository_url)")  # fmt: skip
    parser.add_argument("--sync-url", default="", metavar="URL",
                        help="the ingest server devices sync to (sync.toml server_url)")  # fmt: skip
    parser.add_argument("--overlay", type=Path, help="a directory laid over the root filesystem last")
    parser.add_argument(
        "--debug-shell", action="store_true",
        help="TEST IMAGES ONLY: a login-free root shell on the virtio console (hvc0); named *-debug.img",
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
            version=args.image_version,
            repo=args.repo,
            update_url=args.update_url,
            sync_url=args.sync_url,
            overlay=args.overlay,
            output_dir=args.output_dir,
        )
    )
    print(summary(result))
    return 0
