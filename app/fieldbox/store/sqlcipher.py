"""Opening a SQLCipher 4 database with fieldbox's settings, and turning its errors into ours.

Settings, and why:

* ``PRAGMA key = "x'<64 hex>'"``: a raw 256-bit key. SQLCipher skips its
  PBKDF2 (256,000 iterations, ~75 ms per open) because the key is already
  random; pages are still AES-256-CBC encrypted and HMAC-authenticated
  (HMAC-SHA256 for our stores, see :data:`CIPHER_SETTINGS`).
* ``journal_mode=WAL`` + ``synchronous=FULL``: every commit fsyncs the WAL
  before it returns, so an acknowledged result survives a power cut; readers
  (``fieldbox store query``) never block the writer.
* ``foreign_keys=ON``, ``busy_timeout`` (writers from several processes wait
  for each other instead of failing at once), ``temp_store=MEMORY`` (sorts and
  temporary tables never reach the disk).
* ``cipher_memory_security`` stays OFF (SQLCipher's default since 4.5): it
  locks and wipes every buffer SQLCipher allocates, which costs a large part of
  the write rate, while the key itself lives in this Python process anyway
  (``bytes`` cannot be wiped). Someone who can read our memory can read the key.
* ``cipher_log_level=NONE``: SQLCipher otherwise prints its own lines to stderr
  (hundreds for one damaged file); we report errors ourselves, in one line.
"""

from __future__ import annotations

import errno
import os
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sqlcipher3

from fieldbox.errors import StoreError, StoreFullError, WrongKeyError

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's write lock before giving up."""

SQLITE_HEADER = b"SQLite format 3\x00"

CIPHER_SETTINGS: dict[str, str | int] = {
    "cipher_page_size": 4096,
    "cipher_hmac_algorithm": "HMAC_SHA256",
}
"""SQLCipher format settings for new stores, recorded in the key file and applied on every open.

SQLCipher 4 defaults except the page HMAC: HMAC-SHA256 instead of -SHA512.
Both are far beyond what page authentication needs; SHA-256 is the one CPUs
accelerate (x86 SHA-NI, the ARMv8 Crypto Extensions of the Pi 5's Cortex-A76),
and its 32-byte tag leaves 32 more bytes of each page for data. It cut the
cipher's share of a batched insert by about a third here (see ``make bench``).
On the Pi 3/4, whose SoCs lack the Crypto Extensions, SHA-512 would be
slightly faster in software; AES dominates there either way.
"""

_ALLOWED_SETTINGS: dict[str, tuple[str, ...] | Callable[[Any], bool]] = {
    "cipher_page_size": lambda v: type(v) is int and v in (1024, 2048, 4096, 8192, 16384, 32768, 65536),
    "cipher_hmac_algorithm": ("HMAC_SHA1", "HMAC_SHA256", "HMAC_SHA512"),
    "cipher_kdf_algorithm": ("PBKDF2_HMAC_SHA1", "PBKDF2_HMAC_SHA256", "PBKDF2_HMAC_SHA512"),
}

Connection = Any
"""A ``sqlcipher3`` connection (the package has no type information)."""

_CORRUPT_HINT = (
    "run `fieldbox store check`; move the file aside to start an empty store (results not yet synced "
    "are lost) or restore a backup"
)


def check_cipher_settings(settings: Mapping[str, Any], source: str) -> dict[str, str | int]:
    """Validate cipher settings read from a key file (they are spliced into PRAGMAs)."""
    checked: dict[str, str | int] = {}
    for name, value in settings.items():
        allowed = _ALLOWED_SETTINGS.get(name)
        ok = allowed is not None and (value in allowed if isinstance(allowed, tuple) else allowed(value))
        if not ok:
            raise WrongKeyError(
                f"{source}: unsupported SQLCipher setting {name} = {value!r}", hint="restore the key file"
            )
        checked[name] = value
    return checked


def connect(path: Path, key: bytes, settings: Mapping[str, str | int], *, create: bool) -> Connection:
    """Open (or create) ``path`` with ``key`` and ``settings``, apply ours and prove the key works.

    ``settings`` are the SQLCipher format settings the database was created
    with (recorded in its key file, see :data:`CIPHER_SETTINGS`).

    Raises :class:`WrongKeyError` when the key does not decrypt the file (or
    the file is not a SQLCipher database), :class:`StoreError` otherwise.
    """
    if path.is_file() and _has_plain_header(path):
        raise WrongKeyError(
            f"{path} is an unencrypted SQLite database, not a fieldbox store",
            hint="point --db at a fieldbox store",
        )
    mode = "rwc" if create else "rw"
    uri = f"file:{urllib.parse.quote(str(path))}?mode={mode}"
    try:
        conn = sqlcipher3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlcipher3.Error as exc:
        raise translate(exc, path, "opening") from exc
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        for name, value in settings.items():
            conn.execute(f"PRAGMA {name} = {value}")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The first read decrypts page 1: this is where a wrong key shows.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("PRAGMA cipher_memory_security = OFF")
        mode_now = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode_now).lower() != "wal":
            raise StoreError(f"cannot switch {path} to WAL mode (journal_mode is {mode_now})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlcipher3.Error as exc:
        conn.close()
        raise translate(exc, path, "opening") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _has_plain_header(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _disk_nearly_full(path: Path) -> bool:
    """True when the filesystem under ``path`` has less than 64 KiB free for us."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def translate(exc: Exception, path: Path, doing: str) -> StoreError:
    """Our one-line error for a driver error raised while ``doing`` something to ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlcipher3.SQLITE_FULL or (primary == sqlcipher3.SQLITE_IOERR and _disk_nearly_full(path)):
        return StoreFullError(
            f"store {path}: disk full while {doing}; that write was rolled back, committed data is intact",
            hint="free space on the data partition (or let sync drain the outbox), then retry",
        )
    if primary == sqlcipher3.SQLITE_NOTADB:
        return WrongKeyError(
            f"cannot decrypt {path}: wrong key or not a fieldbox database (or its first page is damaged)",
            hint="open it with the key provider it was created with (check <db>.key and the KEK); "
            "if the file is damaged, move it aside and restore a backup",
        )
    if primary == sqlcipher3.SQLITE_CORRUPT:
        return StoreError(f"store {path} is corrupt ({text}) while {doing}", hint=_CORRUPT_HINT)
    if primary in (sqlcipher3.SQLITE_BUSY, sqlcipher3.SQLITE_LOCKED):
        return StoreError(
            f"store {path} is busy: another process held its write lock for more than "
            f"{BUSY_TIMEOUT_MS // 1000} s while {doing}",
            hint="retry; if it persists, look for a stuck fieldbox process",
        )
    if primary in (sqlcipher3.SQLITE_CANTOPEN, sqlcipher3.SQLITE_PERM, sqlcipher3.SQLITE_READONLY):
        return StoreError(
            f"cannot {'open' if doing == 'opening' else 'write'} store {path}: {text}",
            hint="check that the path exists, the data partition is mounted read-write, and permissions",
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StoreFullError(
            f"store {path}: disk full while {doing}", hint="free space on the data partition"
        )
    return StoreError(f"store {path}: {doing} failed: {text}")
