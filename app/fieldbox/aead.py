"""AES-256-GCM for wrapping the store's database key: pyca/cryptography's ``AESGCM``, with our errors.

What: :func:`seal` and :func:`open_sealed` (a 12-byte nonce, the 16-byte tag
appended), raising :class:`AuthenticationFailed` for anything that does not
verify and :class:`~fieldbox.errors.StoreError` for a wrong key or nonce size.

Why the maintained library and not our own binding: until the update client
arrived, the device carried no ``cryptography``, and this module called
OpenSSL's EVP interface through ctypes (Debian's cffi-based ``cryptography``
38 cost ~8 MiB and ~1.6 s of CPU per process under TCG). The update client
needs ``cryptography`` anyway (securesystemslib verifies TUF signatures with
it), and the wheel the image now carries (50, Rust, no cffi) costs little: in
a fresh interpreter under QEMU TCG, importing it and unwrapping a key added
2.2 MiB of anonymous memory and 0.35 s of CPU, against 1.6 MiB and 0.22 s
for the ctypes binding (``make bench``, section ota). 0.6 MiB and 0.13 s per
process (the store writer and sync) do not pay for keeping hand-written
crypto bindings beside a maintained library. It is imported on first use, so
a process that never unwraps a key never loads it.
"""

from __future__ import annotations

from typing import Any

from fieldbox.errors import StoreError

KEY_BYTES = 32
"""AES-256 key size."""

NONCE_BYTES = 12
"""GCM nonce size (96 bits, the size GCM is specified for and what ``fieldbox.store.keys`` uses)."""

TAG_BYTES = 16
"""Size of the authentication tag appended to the ciphertext."""


class AuthenticationFailed(Exception):
    """The GCM tag did not verify: wrong key, wrong associated data, or altered (or truncated) ciphertext."""


def _aesgcm(key: bytes, nonce: bytes) -> Any:
    if len(key) != KEY_BYTES:
        raise StoreError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(nonce) != NONCE_BYTES:
        raise StoreError(f"AES-256-GCM nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise StoreError(
            "AES-256-GCM needs pyca/cryptography, which is not installed",
            hint="install it (the image carries it, image/wheels.txt)",
        ) from None
    return AESGCM(key)


def seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt ``data`` authenticating ``aad``: ciphertext with its 16-byte tag appended."""
    sealed: bytes = _aesgcm(key, nonce).encrypt(nonce, data, aad)
    return sealed


def open_sealed(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decrypt ``data`` (ciphertext + 16-byte tag) authenticating ``aad``.

    Raises :class:`AuthenticationFailed` if the tag does not verify (a ``data``
    shorter than the tag included: it cannot have been made by :func:`seal`).
    """
    from cryptography.exceptions import InvalidTag

    gcm = _aesgcm(key, nonce)
    if len(data) < TAG_BYTES:
        raise AuthenticationFailed()
    try:
        opened: bytes = gcm.decrypt(nonce, data, aad)
    except InvalidTag:
        raise AuthenticationFailed() from None
    return opened
