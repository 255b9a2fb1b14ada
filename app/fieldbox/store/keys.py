"""Key management for the encrypted store: a random database key, wrapped by a key provider.

The database key (the *DEK*) is 32 random bytes, generated once when a store is
created and handed to SQLCipher as a raw key (no password, no KDF: opening is
fast). It never touches the disk in the clear: it is *wrapped* by a
:class:`KeyProvider` and the wrapped form is kept next to the database as
``<db>.key``, a small JSON document written durably::

    {"fieldbox_store_key": 1, "provider": "file", "wrapped": "<base64>"}

Why a provider interface and not just "a KEK": a TPM never lets its key out, it
seals and unseals; the Pi's OTP private key, on the other hand, is 256 bits a
root process can read. So a provider is asked to ``wrap`` and ``unwrap`` the
DEK, and providers that do hold a key-encryption key in memory use
:func:`aesgcm_wrap` / :func:`aesgcm_unwrap` (AES-256-GCM, random 96-bit nonce,
the file's format and provider name as associated data, so a wrapped key cannot
be passed off as another provider's).

Writing a new provider (TPM 2.0, Raspberry Pi OTP, an HSM): implement the four
members of :class:`KeyProvider`; ``unwrap`` must raise
:class:`~fieldbox.errors.WrongKeyError` (never return garbage) when the blob was
not made by this provider's key, and must never create key material;
``wrap`` may create it on first use.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fieldbox import aead
from fieldbox.durable import atomic_write
from fieldbox.errors import StoreError, StoreFullError, WrongKeyError
from fieldbox.paths import data_dir

log = logging.getLogger(__name__)

DEK_BYTES = 32
"""Size of the database key: SQLCipher 4 takes a raw 256-bit key."""

KEK_BYTES = 32
"""Size of a key-encryption key for AES-256-GCM."""

NONCE_BYTES = 12
KEY_FILE_FORMAT = 1
"""Version of the ``<db>.key`` document; bump it when its fields change."""


@runtime_checkable
class KeyProvider(Protocol):
    """Where the store's database key is wrapped and unwrapped.

    ``name`` is recorded in the wrapped-key file, so a store wrapped by one
    provider is never handed to another; ``describe()`` is one line for
    ``fieldbox store info``; ``warning()`` is a standing caveat (or None) shown
    there and logged when the provider is used.
    """

    @property
    def name(self) -> str:
        """Short stable identifier, e.g. ``"file"``, ``"tpm2"``, ``"rpi-otp"``."""
        ...

    def describe(self) -> str:
        """One line saying where the key-encryption key lives."""
        ...

    def warning(self) -> str | None:
        """What this provider does not protect against, or None."""
        ...

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``dek``; may create key material on first use."""
        ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Return the DEK from ``blob``; :class:`WrongKeyError` if it was not ours or was altered."""
        ...


def aesgcm_wrap(kek: bytes, dek: bytes, aad: bytes) -> bytes:
    """``nonce || AES-256-GCM(kek, dek, aad)`` (12 + len(dek) + 16 bytes)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.seal(kek, nonce, dek, aad)


def aesgcm_unwrap(kek: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`aesgcm_wrap`; ``what`` names the wrapped key in the error."""
    if len(blob) != NONCE_BYTES + DEK_BYTES + 16:
        raise WrongKeyError(
            f"{what} is damaged: wrapped key is {len(blob)} bytes, expected {NONCE_BYTES + DEK_BYTES + 16}",
            hint="restore it from a backup; without it the store cannot be read",
        )
    try:
        return aead.open_sealed(kek, blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except aead.AuthenticationFailed:
        raise WrongKeyError(
            f"cannot unwrap {what}: the key-encryption key does not match it, or the file was altered",
            hint="use the key provider (and KEK) the store was created with, or restore the key file "
            "from a backup",
        ) from None


_dir_guard = threading.Lock()
_dir_rlocks: dict[str, threading.RLock] = {}
_dir_depth: dict[str, int] = {}


@contextlib.contextmanager
def locked_dir(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` so that only one process creates key material.

    Two services opening a fresh store at once must agree on one key; locking
    the directory itself leaves no lock files behind. Re-entrant within a
    thread (the store's directory may also hold the KEK: a second ``flock`` on
    a new descriptor would wait for ourselves) and exclusive between threads.
    """
    name = os.path.realpath(directory)
    with _dir_guard:
        rlock = _dir_rlocks.setdefault(name, threading.RLock())
    with rlock:
        depth = _dir_depth.get(name, 0)
        if depth:
            _dir_depth[name] = depth + 1
            try:
                yield
            finally:
                _dir_depth[name] = depth
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _dir_depth[name] = 1
            yield
        finally:
            _dir_depth[name] = 0
            os.close(fd)  # closing releases the lock


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if missing; the last component is made 0700."""
    if not directory.is_dir():
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create directory {directory}: {exc.strerror}",
                hint="check that the data partition is mounted and writable",
            ) from exc
        directory.chmod(0o700)


def durable_write(path: Path, data: bytes, what: str) -> None:
    """``atomic_write`` a root-only file, with a full disk reported as :class:`StoreFullError`."""
    try:
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(
                f"disk full while writing the {what} {path}; no key was created",
                hint="free space on the data partition, then retry",
            ) from exc
        raise StoreError(f"cannot write the {what} {path}: {exc.strerror}") from exc


_warned: set[Path] = set()


class FileKeyProvider:
    """The default provider: the key-encryption key is a root-only file on the data partition.

    ``$FIELDBOX_DATA/keys/kek`` (32 random bytes, mode 0600 in a 0700
    directory), created on first use. It keeps the database unreadable to other
    users and to anyone holding only the database file, but it sits on the same
    card as the database: **it protects nothing against someone holding the
    card.** Use a TPM or OTP provider for that.
    """

    name = "file"

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / "keys" / "kek"

    def describe(self) -> str:
        """Where the KEK is."""
        return f"file {self.path}"

    def warning(self) -> str:
        """The standing caveat of a key stored next to the data."""
        return (
            f"the key-encryption key is a plain file ({self.path}) on the same storage as the database: "
            "it protects nothing against someone holding the card"
        )

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        """Wrap with the KEK, creating the KEK file if it does not exist yet."""
        return aesgcm_wrap(self._kek(create=True), dek, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Unwrap with the existing KEK file (never creates one)."""
        return aesgcm_unwrap(self._kek(create=False), blob, aad, "the store's database key")

    def _kek(self, create: bool) -> bytes:
        if create and not self.path.exists():
            make_private_dir(self.path.parent)
            with locked_dir(self.path.parent):
                if not self.path.exists():
                    durable_write(self.path, os.urandom(KEK_BYTES), "key-encryption key")
                    log.warning("created key-encryption key %s", self.path)
        self._warn_once()
        try:
            st = self.path.stat()
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("key-encryption key %s was readable by others; made it 0600", self.path)
                self.path.chmod(0o600)
            kek = self.path.read_bytes()
        except FileNotFoundError:
            raise WrongKeyError(
                f"key-encryption key {self.path} is missing, so the store's key cannot be unwrapped",
                hint=f"restore {self.path} from a backup (or point --kek / FIELDBOX_DATA at the right one)",
            ) from None
        except OSError as exc:
            raise StoreError(
                f"cannot read key-encryption key {self.path}: {exc.strerror}",
                hint="run as root or as the store writer's user, fieldbox-store (the KEK is theirs alone)",
            ) from exc
        if len(kek) != KEK_BYTES:
            raise WrongKeyError(
                f"key-encryption key {self.path} is damaged: {len(kek)} bytes, expected {KEK_BYTES}",
                hint="restore it from a backup",
            )
        return kek

    def _warn_once(self) -> None:
        if self.path not in _warned:
            _warned.add(self.path)
            log.warning("%s", self.warning())


def key_file_for(db_path: Path) -> Path:
    """Where the wrapped key of the database at ``db_path`` lives: ``<db>.key``."""
    return db_path.with_name(db_path.name + ".key")


def _aad(provider_name: str) -> bytes:
    return f"fieldbox-store-key/{KEY_FILE_FORMAT}/{provider_name}".encode()


@dataclass(frozen=True)
class StoreKey:
    """What opening a store needs: the DEK and the SQLCipher settings it was created with."""

    dek: bytes
    cipher: dict[str, str | int]


def write_new_key(key_path: Path, provider: KeyProvider, cipher: dict[str, str | int]) -> StoreKey:
    """Generate a DEK, wrap it with ``provider`` and store it (and ``cipher``) durably at ``key_path``."""
    dek = os.urandom(DEK_BYTES)
    wrapped = provider.wrap(dek, _aad(provider.name))
    doc = {
        "fieldbox_store_key": KEY_FILE_FORMAT,
        "provider": provider.name,
        "wrapped": base64.b64encode(wrapped).decode("ascii"),
        "sqlcipher": cipher,
    }
    durable_write(key_path, (json.dumps(doc, indent=1) + "\n").encode(), "store key file")
    return StoreKey(dek, dict(cipher))


def read_key(key_path: Path, provider: KeyProvider) -> StoreKey:
    """Read ``key_path`` and unwrap the DEK with ``provider``.

    A missing ``sqlcipher`` member means SQLCipher 4's defaults.
    """
    try:
        raw = key_path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read store key file {key_path}: {exc.strerror}") from exc
    damaged = (
        f"store key file {key_path} is damaged",
        "restore it from a backup; without it the store " "cannot be read",
    )
    try:
        doc = json.loads(raw)
        version = doc["fieldbox_store_key"]
        name = doc["provider"]
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        cipher = doc.get("sqlcipher", {})
        if not isinstance(cipher, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise WrongKeyError(damaged[0], hint=damaged[1]) from None
    if version != KEY_FILE_FORMAT:
        raise StoreError(
            f"store key file {key_path} has format {version!r}; this fieldbox reads format {KEY_FILE_FORMAT}",
            hint="update fieldbox",
        )
    if name != provider.name:
        raise WrongKeyError(
            f"store key file {key_path} was wrapped by the {name!r} key provider, not {provider.name!r}",
            hint=f"open the store with the {name!r} provider",
        )
    try:
        dek = provider.unwrap(wrapped, _aad(name))
    except WrongKeyError as exc:
        raise WrongKeyError(f"{key_path}: {exc.message}", hint=exc.hint) from None
    return StoreKey(dek, cipher)
