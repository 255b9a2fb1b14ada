"""AES-256-GCM for wrapping the store's database key, in-process through OpenSSL's libcrypto.

What: :func:`seal` and :func:`open_sealed` call OpenSSL's EVP AEAD interface
(``EVP_aes_256_gcm`` with a 12-byte nonce and a 16-byte tag) through
:mod:`ctypes`, in the calling process. No ``cryptography`` import, no child
process.

Why: the store writer and sync need AES-GCM exactly once, to unwrap the
database key when they open the store, and that is on the boot's critical path
(the store serves nothing until it returns). Importing ``cryptography`` costs
about 1.6 s of CPU and 8 MiB of anonymous memory on the emulated device, and
running it in a short-lived child instead (what this module used to do) cost
about 2.5 s of CPU. ``libcrypto.so.3`` is the OpenSSL that Python's own
``_hashlib`` and ``_ssl`` are linked against (and that ``cryptography`` uses on
the device), so it is usually mapped already: loading it through ctypes costs
next to nothing. It is loaded lazily on the first call and kept.

Each call uses a fresh ``EVP_CIPHER_CTX``, freed before returning, so the
functions are safe to call from several threads.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NoReturn

from fieldbox.errors import StoreError

KEY_BYTES = 32
"""AES-256 key size."""

NONCE_BYTES = 12
"""GCM nonce size (96 bits, the size GCM is specified for and what ``fieldbox.store.keys`` uses)."""

TAG_BYTES = 16
"""Size of the authentication tag appended to the ciphertext."""

_MAX_LEN = 2**31 - 1 - TAG_BYTES
"""OpenSSL's EVP update calls take an ``int`` length."""

_LIBRARY = "libcrypto.so.3"

# From <openssl/evp.h> (the same values in OpenSSL 1.1 and 3.x).
_EVP_CTRL_GCM_SET_IVLEN = 0x9
_EVP_CTRL_GCM_GET_TAG = 0x10
_EVP_CTRL_GCM_SET_TAG = 0x11


class AuthenticationFailed(Exception):
    """The GCM tag did not verify: wrong key, wrong associated data, or altered (or truncated) ciphertext."""


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt ``data`` authenticating ``aad``: ciphertext with its 16-byte tag appended."""
    _check(key, nonce, data, aad)
    return _gcm(True, key, nonce, data, aad, None)


def open_sealed(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decrypt ``data`` (ciphertext + 16-byte tag) authenticating ``aad``.

    Raises :class:`AuthenticationFailed` if the tag does not verify.

    A ``data`` shorter than the tag cannot have been made by :func:`seal`, so it
    fails authentication too (as a damaged blob, not as a usage error).
    """
    _check(key, nonce, data, aad)
    if len(data) < TAG_BYTES:
        raise AuthenticationFailed()
    return _gcm(False, key, nonce, data[:-TAG_BYTES], aad, data[-TAG_BYTES:])


def _gcm(encrypt: bool, key: bytes, nonce: bytes, body: bytes, aad: bytes, tag: bytes | None) -> bytes:
    """One EVP AES-256-GCM pass: ciphertext + tag when encrypting, plaintext when
    decrypting (``tag`` is then the one to verify). A fresh context per call."""
    lib = _libcrypto()
    way = "Encrypt" if encrypt else "Decrypt"
    init = lib.EVP_EncryptInit_ex if encrypt else lib.EVP_DecryptInit_ex
    update = lib.EVP_EncryptUpdate if encrypt else lib.EVP_DecryptUpdate
    final_ex = lib.EVP_EncryptFinal_ex if encrypt else lib.EVP_DecryptFinal_ex
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        _fail(lib, "EVP_CIPHER_CTX_new")
    try:
        _ok(lib, init(ctx, lib.EVP_aes_256_gcm(), None, None, None), f"EVP_{way}Init_ex")
        _ok(lib, lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_IVLEN, NONCE_BYTES, None), "set IV length")
        _ok(lib, init(ctx, None, None, key, nonce), f"EVP_{way}Init_ex(key, iv)")
        outl = ctypes.c_int(0)
        n_out = ctypes.byref(outl)
        if aad:
            _ok(lib, update(ctx, None, n_out, aad, len(aad)), f"EVP_{way}Update(aad)")
        out = ctypes.create_string_buffer(len(body) + TAG_BYTES)
        written = 0
        if body:
            _ok(lib, update(ctx, out, n_out, body, len(body)), f"EVP_{way}Update")
            written = outl.value
        if tag is not None:
            tag_in = ctypes.create_string_buffer(tag, TAG_BYTES)
            _ok(lib, lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag_in), "set GCM tag")
        final = ctypes.create_string_buffer(TAG_BYTES)  # GCM writes nothing here; room anyway
        if final_ex(ctx, final, n_out) <= 0:
            if encrypt:
                _fail(lib, "EVP_EncryptFinal_ex")
            lib.ERR_clear_error()  # leave nothing in this thread's queue for _ssl/_hashlib to trip on
            raise AuthenticationFailed()
        if written + outl.value != len(body):
            raise StoreError(f"OpenSSL AES-GCM produced {written + outl.value} bytes for {len(body)}")
        if not encrypt:
            return out.raw[: len(body)]
        tag_out = ctypes.create_string_buffer(TAG_BYTES)
        _ok(lib, lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tag_out), "get GCM tag")
        return out.raw[: len(body)] + tag_out.raw
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def _check(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise StoreError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(nonce) != NONCE_BYTES:
        raise StoreError(f"AES-256-GCM nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    if len(data) > _MAX_LEN or len(aad) > _MAX_LEN:
        raise StoreError(f"AES-256-GCM input too large ({max(len(data), len(aad))} bytes; limit {_MAX_LEN})")


def _ok(lib: ctypes.CDLL, result: int, what: str) -> None:
    if result != 1:
        _fail(lib, what)


def _fail(lib: ctypes.CDLL, what: str) -> NoReturn:
    """Raise :class:`StoreError` for a failed OpenSSL call, with OpenSSL's own reason, and clear its queue."""
    code = lib.ERR_get_error()
    reason = "no reason given"
    if code:
        buf = ctypes.create_string_buffer(256)
        lib.ERR_error_string_n(code, buf, len(buf))
        reason = buf.value.decode("ascii", "replace")
    lib.ERR_clear_error()
    raise StoreError(f"OpenSSL AES-256-GCM failed in {what}: {reason}")


def _libcrypto() -> ctypes.CDLL:
    """Load libcrypto once (thread-safe) and declare the prototypes of what this module calls."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            _lib = _declare(*_load())
        return _lib


def _load() -> tuple[ctypes.CDLL, str]:
    try:
        return ctypes.CDLL(_LIBRARY), _LIBRARY
    except OSError as first:
        # find_library runs ldconfig (or gcc): slow on the device, so only as a fallback.
        from ctypes.util import find_library

        name = find_library("crypto")
        if name is not None:
            try:
                return ctypes.CDLL(name), name
            except OSError:
                pass
        raise StoreError(
            f"cannot load OpenSSL's {_LIBRARY} for AES-256-GCM key wrapping: {first}",
            hint="install libssl3 (OpenSSL 3)",
        ) from None


def _declare(lib: ctypes.CDLL, name: str) -> ctypes.CDLL:
    """Set argtypes/restype of every function used: pointers as void *, so nothing is truncated on 64-bit."""
    vp, i, ip = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
    prototypes: dict[str, tuple[list[type], type | None]] = {
        "EVP_CIPHER_CTX_new": ([], vp),
        "EVP_CIPHER_CTX_free": ([vp], None),
        "EVP_aes_256_gcm": ([], vp),
        "EVP_CIPHER_CTX_ctrl": ([vp, i, i, vp], i),
        "EVP_EncryptInit_ex": ([vp, vp, vp, vp, vp], i),
        "EVP_EncryptUpdate": ([vp, vp, ip, vp, i], i),
        "EVP_EncryptFinal_ex": ([vp, vp, ip], i),
        "EVP_DecryptInit_ex": ([vp, vp, vp, vp, vp], i),
        "EVP_DecryptUpdate": ([vp, vp, ip, vp, i], i),
        "EVP_DecryptFinal_ex": ([vp, vp, ip], i),
        "ERR_get_error": ([], ctypes.c_ulong),
        "ERR_error_string_n": ([ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t], None),
        "ERR_clear_error": ([], None),
    }
    try:
        for function, (argtypes, restype) in prototypes.items():
            fn = getattr(lib, function)
            fn.argtypes = argtypes
            fn.restype = restype
    except AttributeError as exc:
        raise StoreError(
            f"{name} is not a usable OpenSSL libcrypto: {exc}",
            hint="install libssl3 (OpenSSL 3)",
        ) from None
    return lib
