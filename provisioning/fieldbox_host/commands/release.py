"""``fieldbox release``: publish a built image as a signed over-the-air update; keep the repository fresh.

    fieldbox release IMAGE [--repo repo] [--keys keys] [--compatible-from V] [--min-version V]
    fieldbox release refresh [--repo repo] [--keys keys] [--snapshot] [--targets]
    fieldbox release list [--repo repo]

IMAGE is the raw ``.img`` that ``fieldbox build`` wrote (its build manifest
beside it). Its root slot becomes a chunked bundle in ``repo/targets/``; the
targets, snapshot and timestamp metadata are re-signed. Metadata lifetimes:
timestamp 1 day, snapshot 7 days, targets 90 days, root 1 year. Devices
refuse expired metadata, so run ``fieldbox release refresh`` from cron (every
few hours): it re-signs the timestamp, and the snapshot and targets once less
than half their lifetime is left. Any static HTTP server or CDN can serve
``repo/``; so does ``fieldbox serve --repo``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldbox_host.commands.keys import DEFAULT_REPO, add_key_args
from fieldbox_host.release import keys as keyring
from fieldbox_host.release.errors import ReleaseError
from fieldbox_host.release.repository import Repository


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``release`` verb."""
    parser = subparsers.add_parser(
        "release",
        help="publish an image as a signed update; refresh; list",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", metavar="IMAGE|refresh|list", help="an image to publish, or refresh, or list")
    parser.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help=f"repository directory (default {DEFAULT_REPO})"
    )
    add_key_args(parser)
    parser.add_argument(
        "--compatible-from",
        metavar="VERSION",
        help="oldest installed version that may install this release directly",
    )
    parser.add_argument(
        "--min-version",
        metavar="VERSION",
        help="fleet floor: devices never install anything older than this again",
    )
    parser.add_argument("--snapshot", action="store_true", help="refresh: re-sign the snapshot too")
    parser.add_argument("--targets", action="store_true", help="refresh: re-sign the targets too")
    parser.set_defaults(func=_release)


def _online_signers(args: argparse.Namespace) -> dict[str, object]:
    ring = keyring.KeyRing(args.keys)
    return {role: ring.signer(role) for role in keyring.ONLINE}


def _release(args: argparse.Namespace) -> int:
    if args.what == "list":
        return _list(args)
    if args.what == "refresh":
        repo = Repository(args.repo)
        roles = repo.refresh(_online_signers(args), snapshot=args.snapshot, targets=args.targets)
        expiries = repo.expiries()
        print(
            f"re-signed {', '.join(roles)}; timestamp v{expiries['timestamp'][0]} "
            f"expires {expiries['timestamp'][1]:%Y-%m-%d %H:%M} UTC"
        )
        return 0
    from fieldbox_host.progress import Progress
    from fieldbox_host.release.publish import release_image

    image = Path(args.what)
    if not image.exists() and not args.what.endswith((".img", ".zst")):
        raise ReleaseError(
            f"{args.what!r} is neither an image file nor refresh or list",
            "give the .img that `fieldbox build` wrote",
        )
    repo = Repository(args.repo)
    repo.require()
    signers = _online_signers(args)  # before the long work: a missing key fails at once
    published = release_image(
        image,
        repo,
        signers,
        compatible_from=args.compatible_from,
        min_version=args.min_version,
        progress=Progress("bundle"),
    )
    version = repo.expiries()["targets"][0]
    mib = 1024 * 1024
    print(
        f"published {published.path} ({published.length / mib:.1f} MiB, "
        f"manifest {published.info.manifest_length / 1024:.0f} KiB) as targets v{version}"
    )
    print(f"  sha256 {published.sha256}")
    return 0


def _list(args: argparse.Namespace) -> int:
    repo = Repository(args.repo)
    repo.require()
    releases = repo.releases()
    print(f"{'board':<12} {'version':<10} {'MiB':>7}  {'compatible from':<16} {'min version':<12} path")
    for p in releases:
        i = p.info
        print(
            f"{i.board:<12} {i.version:<10} {p.length / 2**20:7.1f}  {i.compatible_from or '-':<16} "
            f"{i.min_version or '-':<12} {p.path}"
        )
    if not releases:
        print("(no releases yet: `fieldbox release IMAGE`)")
    for role, (version, expires) in repo.expiries().items():
        print(f"{role:<10} v{version:<4} expires {expires:%Y-%m-%d %H:%M} UTC")
    return 0
