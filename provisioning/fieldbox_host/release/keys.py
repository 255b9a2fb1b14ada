"""The fleet's update-signing keys: one ed25519 key per TUF role, in one directory.

::

    keys/
      keys.json         which key is which role (key id, scheme, file, offline, encrypted)
      root.key          offline: signs the root metadata (who may sign what); passphrase-protected if asked
      targets.key       signs the list of releases
      snapshot.key      signs which targets metadata is current
      timestamp.key     signs freshness; re-signed daily (``fieldbox release refresh``)
      retired/          keys replaced by ``fieldbox keys rotate`` (kept to read history, never to sign)

Private keys are PKCS#8 PEM files, mode 0600, in a directory of mode 0700;
they are created with ``O_EXCL`` and never overwritten. The root key belongs
on an offline machine or removable medium: it is needed only to create the
repository and to rotate a key. The other three sign on the release machine.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox.durable import atomic_write
from fieldbox_host.release.errors import KeysError

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE = ("targets", "snapshot", "timestamp")
INDEX = "keys.json"
PASSPHRASE_ENV = "FIELDBOX_ROOT_PASSPHRASE"


@dataclass(frozen=True)
class KeyEntry:
    """One role's key as recorded in ``keys.json``."""

    role: str
    keyid: str
    scheme: str
    file: str
    offline: bool
    encrypted: bool
    public: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "keyid": self.keyid,
            "scheme": self.scheme,
            "file": self.file,
            "offline": self.offline,
            "encrypted": self.encrypted,
            "public": self.public,
        }


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(
    role: str, directory: Path, passphrase: bytes | None = None, file: str | None = None
) -> KeyEntry:
    """A new ed25519 key for ``role`` in ``directory`` (never overwriting a file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import SSlibKey

    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = SSlibKey.from_crypto(private.public_key())
    name = file or f"{role}.key"
    try:
        _write_private(directory / name, pem)
    except FileExistsError:
        raise KeysError(
            f"{directory / name} exists", "keys are never overwritten; use another --dir"
        ) from None
    return KeyEntry(
        role, public.keyid, public.scheme, name, role == "root", bool(passphrase), public.keyval["public"]
    )


class KeyRing:
    """The keys directory: which key signs which role, and loading signers from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def index_path(self) -> Path:
        """``keys.json``."""
        return self.directory / INDEX

    def exists(self) -> bool:
        """Whether this directory holds a key set."""
        return self.index_path.is_file()

    def entries(self) -> dict[str, KeyEntry]:
        """role -> its current key, from ``keys.json``."""
        try:
            doc = json.loads(self.index_path.read_text(encoding="utf-8"))
            roles = doc["roles"]
            return {
                role: KeyEntry(
                    role,
                    r["keyid"],
                    r["scheme"],
                    r["file"],
                    bool(r["offline"]),
                    bool(r["encrypted"]),
                    r["public"],
                )
                for role, r in roles.items()
            }
        except FileNotFoundError:
            raise KeysError(
                f"{self.directory} holds no update keys (no {INDEX})",
                "create them with `fieldbox keys init --dir DIR`",
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeysError(f"{self.index_path} is unreadable: {exc}") from None

    def save(self, entries: dict[str, KeyEntry]) -> None:
        """Write ``keys.json`` (atomically)."""
        doc = {"format": 1, "roles": {role: entries[role].to_dict() for role in ROLES if role in entries}}
        atomic_write(self.index_path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600)

    def entry(self, role: str) -> KeyEntry:
        """The current key of ``role``."""
        entries = self.entries()
        if role not in entries:
            raise KeysError(f"{self.index_path} has no {role} key")
        return entries[role]

    def public_key(self, role: str) -> Any:
        """The role's public key as a securesystemslib ``SSlibKey``."""
        from securesystemslib.signer import SSlibKey

        e = self.entry(role)
        return SSlibKey(e.keyid, "ed25519", e.scheme, {"public": e.public})

    def signer(self, role: str, passphrase: Callable[[], bytes] | None = None) -> Any:
        """A ``CryptoSigner`` for ``role``; asks ``passphrase()`` only if the key file is encrypted."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner

        e = self.entry(role)
        path = self.directory / e.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            hint = (
                "mount the offline medium that holds it, or pass --keys"
                if e.offline
                else "restore it from your backup, or rotate it with `fieldbox keys rotate`"
            )
            raise KeysError(f"the {role} key {path} is missing", hint) from None
        check_private_mode(path)
        secret = None
        if e.encrypted:
            if passphrase is None:
                raise KeysError(
                    f"the {role} key is passphrase-protected", f"set {PASSPHRASE_ENV} or give a file"
                )
            secret = passphrase()
        try:
            private = load_pem_private_key(data, password=secret)
        except (ValueError, TypeError):
            raise KeysError(f"cannot open the {role} key {path}: wrong passphrase or not a key") from None
        signer = CryptoSigner(private, self.public_key(role))
        return signer


def check_private_mode(path: Path) -> None:
    """A private key readable by group or others is an error, as ssh treats it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeysError(f"{path} is readable by others (mode {mode:o})", f"chmod 600 {path}")


def passphrase_source(file: Path | None, confirm: bool = False) -> Callable[[], bytes]:
    """Where the root key's passphrase comes from: a file, ``$FIELDBOX_ROOT_PASSPHRASE``, or a prompt."""

    def read() -> bytes:
        if file is not None:
            try:
                text = file.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise KeysError(f"cannot read the passphrase file {file}: {exc.strerror}") from None
        elif os.environ.get(PASSPHRASE_ENV):
            text = os.environ[PASSPHRASE_ENV]
        elif os.isatty(0):
            text = getpass.getpass("root key passphrase: ")
            if confirm and getpass.getpass("again: ") != text:
                raise KeysError("the two passphrases differ")
        else:
            raise KeysError(
                "the root key's passphrase is needed", f"give --root-passphrase-file or set {PASSPHRASE_ENV}"
            )
        if not text:
            raise KeysError("the root key passphrase is empty")
        return text.encode("utf-8")

    return read


def init_keys(directory: Path, passphrase: bytes | None) -> dict[str, KeyEntry]:
    """Create the four role keys in ``directory`` (which must hold none yet)."""
    ring = KeyRing(directory)
    if ring.exists() or any((directory / f"{r}.key").exists() for r in ROLES):
        raise KeysError(
            f"{directory} already holds update keys",
            "keys are never replaced in place: use `fieldbox keys rotate ROLE`, or another --dir",
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    entries = {role: generate(role, directory, passphrase if role == "root" else None) for role in ROLES}
    ring.save(entries)
    return entries


def retire(directory: Path, entry: KeyEntry) -> Path:
    """Move a replaced key file under ``retired/`` (kept, never used to sign again)."""
    retired = directory / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    target = retired / f"{entry.role}-{entry.keyid[:12]}.key"
    os.replace(directory / entry.file, target)
    return target
