"""``fieldbox keys``: the fleet's update-signing keys and the repository's root of trust.

    fieldbox keys init [--dir keys] [--repo repo] [--encrypt-root | --root-passphrase-file F]
    fieldbox keys show [--dir keys] [--repo repo]
    fieldbox keys rotate ROLE [--dir keys] [--repo repo] [--root-passphrase-file F]

``init`` creates one ed25519 key per TUF role (root, targets, snapshot,
timestamp; files mode 0600 in a 0700 directory) and the repository's first
metadata, root v1 signed by the root key. Keep the root key offline (it only
creates the repository and rotates keys); the other three sign releases and
the daily timestamp. ``rotate`` replaces one role's key: the root key signs a
new root version naming the new key, devices follow the root chain on their
next check, and metadata signed with the old key is refused from then on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldbox_host.release import keys as keyring
from fieldbox_host.release.errors import KeysError
from fieldbox_host.release.repository import Repository

DEFAULT_KEYS = Path("keys")
DEFAULT_REPO = Path("repo")


def add_key_args(parser: argparse.ArgumentParser) -> None:
    """``--dir``/``--keys`` and ``--root-passphrase-file`` (shared with ``release``)."""
    parser.add_argument(
        "--dir",
        "--keys",
        dest="keys",
        type=Path,
        default=DEFAULT_KEYS,
        help=f"keys directory (default {DEFAULT_KEYS})",
    )
    parser.add_argument(
        "--root-passphrase-file",
        type=Path,
        help=f"file holding the root key's passphrase (or set {keyring.PASSPHRASE_ENV})",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` verb."""
    parser = subparsers.add_parser(
        "keys",
        help="update-signing keys: init, show, rotate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="keys_verb", metavar="SUBVERB", required=True)
    init = sub.add_parser("init", help="create the four role keys and the repository's root v1")
    add_key_args(init)
    init.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help=f"repository directory (default {DEFAULT_REPO})"
    )
    init.add_argument(
        "--encrypt-root",
        action="store_true",
        help="protect the root key with a passphrase (asked, or from --root-passphrase-file)",
    )
    init.set_defaults(func=_init)
    show = sub.add_parser("show", help="which key signs which role, and when each role's metadata expires")
    add_key_args(show)
    show.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help=f"repository directory (default {DEFAULT_REPO})"
    )
    show.set_defaults(func=_show)
    rotate = sub.add_parser("rotate", help="replace one role's key (signed by the root key)")
    rotate.add_argument("role", choices=keyring.ROLES)
    add_key_args(rotate)
    rotate.add_argument(
        "--repo", type=Path, default=DEFAULT_REPO, help=f"repository directory (default {DEFAULT_REPO})"
    )
    rotate.set_defaults(func=_rotate)


def _init(args: argparse.Namespace) -> int:
    repo = Repository(args.repo)
    if repo.root_version():
        raise KeysError(f"{args.repo} already holds a repository", "give another --repo")
    passphrase = None
    if args.encrypt_root or args.root_passphrase_file:
        passphrase = keyring.passphrase_source(args.root_passphrase_file, confirm=True)()
    entries = keyring.init_keys(args.keys, passphrase)
    ring = keyring.KeyRing(args.keys)
    source = keyring.passphrase_source(args.root_passphrase_file)
    signers = {
        role: ring.signer(role, (lambda: passphrase) if passphrase else source) for role in keyring.ROLES
    }
    repo.create({role: ring.public_key(role) for role in keyring.ROLES}, signers)
    for role in keyring.ROLES:
        e = entries[role]
        where = "offline" if e.offline else "online"
        lock = ", passphrase" if e.encrypted else ""
        print(f"{role:<10} {e.keyid[:16]}  {args.keys / e.file}  ({where}{lock})")
    print(f"repository {args.repo}: root v1 (trusted root: {args.repo / 'metadata/root.json'})")
    print(
        "next: keep the root key offline; `fieldbox build --repo "
        f"{args.repo}` bakes this root into the image"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    ring = keyring.KeyRing(args.keys)
    entries = ring.entries()
    repo = Repository(args.repo)
    expiries = repo.expiries() if repo.exists() else {}
    root_keyids: dict[str, list[str]] = {}
    if repo.exists():
        root = repo.load("root").signed
        root_keyids = {role: list(root.roles[role].keyids) for role in keyring.ROLES}
    print(f"{'role':<10} {'key id':<16}  {'file':<24} {'custody':<8} {'mode':<5} {'in root':<8} metadata")
    for role in keyring.ROLES:
        e = entries[role]
        path = args.keys / e.file
        mode = f"{path.stat().st_mode & 0o777:o}" if path.exists() else "gone"
        trusted = ("yes" if e.keyid in root_keyids.get(role, []) else "NO") if root_keyids else "-"
        meta = ""
        if role in expiries:
            version, expires = expiries[role]
            meta = f"v{version}, expires {expires:%Y-%m-%d %H:%M} UTC"
        custody = "offline" if e.offline else "online"
        if e.encrypted:
            custody += "+pw"
        print(f"{role:<10} {e.keyid[:16]}  {path!s:<24} {custody:<8} {mode:<5} {trusted:<8} {meta}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    ring = keyring.KeyRing(args.keys)
    repo = Repository(args.repo)
    repo.require()
    old = ring.entry(args.role)
    source = keyring.passphrase_source(args.root_passphrase_file)
    old_root = ring.signer("root", source)
    new_file = f"{args.role}.key.new"
    new = keyring.generate(
        args.role, args.keys, passphrase=source() if old.encrypted else None, file=new_file
    )
    from securesystemslib.signer import SSlibKey

    new_public = SSlibKey(new.keyid, "ed25519", new.scheme, {"public": new.public})
    entries = ring.entries()
    retired = keyring.retire(args.keys, old)
    (args.keys / new_file).rename(args.keys / old.file)
    entries[args.role] = keyring.KeyEntry(
        args.role, new.keyid, new.scheme, old.file, old.offline, new.encrypted, new.public
    )
    ring.save(entries)
    root_signers = [old_root]
    if args.role == "root":
        root_signers.append(ring.signer("root", source))
    signers = {role: ring.signer(role, source) for role in keyring.ONLINE}
    version = repo.rotate(args.role, new_public, root_signers, signers)
    print(f"{args.role}: new key {new.keyid[:16]} in {args.keys / old.file}; old key kept in {retired}")
    print(f"repository {args.repo}: root v{version} names the new key; devices take it at their next check")
    return 0
