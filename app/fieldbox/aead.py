"""AES-256-GCM for wrapping the store's key, in this process or in a short-lived child.

Why a child: importing ``cryptography`` (its Rust bindings and OpenSSL's
initialisation) costs about 8 MiB of anonymous memory for the rest of the
process's life, measured on the device image. The long-running services that
open the store (the store writer, sync) need AES-GCM exactly once, to unwrap
the database key at open; on a 512 MiB appliance that is 16 MiB held for
nothing. After :func:`use_child_process`, :func:`seal` and :func:`open_sealed`
run ``python3 -m fieldbox.aead`` instead: the key, nonce and data go through
its stdin and the result comes back on its stdout (never through arguments,
the environment or a file), and the child exits. Anything short-lived (the
CLI, tests, benchmarks) keeps the in-process default.

Child protocol: stdin is one JSON object ``{"op": "seal"|"open", "key",
"nonce", "data", "aad"}`` (bytes as base64); stdout is the base64 result;
exit 0 on success, :data:`EXIT_AUTH_FAILED` when the tag does not verify, 1
with a one-line message on stderr for anything else.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

from fieldbox.errors import StoreError

EXIT_AUTH_FAILED = 3
CHILD_TIMEOUT_S = 120.0
"""Generous: the child imports cryptography, which takes seconds on a slow (or emulated) CPU."""

_in_child = False


class AuthenticationFailed(Exception):
    """The GCM tag did not verify: wrong key, wrong associated data, or altered ciphertext."""


def use_child_process(enabled: bool = True) -> None:
    """From now on, do AES-GCM in a child process (for long-running services; see the module doc)."""
    global _in_child
    _in_child = enabled


def seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt: ciphertext with its 16-byte tag appended."""
    return _child("seal", key, nonce, data, aad) if _in_child else _local("seal", key, nonce, data, aad)


def open_sealed(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decrypt; :class:`AuthenticationFailed` if the tag does not verify."""
    return _child("open", key, nonce, data, aad) if _in_child else _local("open", key, nonce, data, aad)


def _local(op: str, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if op == "seal":
        return AESGCM(key).encrypt(nonce, data, aad)
    try:
        return AESGCM(key).decrypt(nonce, data, aad)
    except InvalidTag:
        raise AuthenticationFailed() from None


def _child(op: str, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    request = json.dumps(
        {"op": op} | {k: base64.b64encode(v).decode() for k, v in
                      (("key", key), ("nonce", nonce), ("data", data), ("aad", aad))}
    ).encode()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fieldbox.aead"],
            input=request,
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(
            f"cannot run the key-wrapping helper ({sys.executable} -m fieldbox.aead): {exc}"
        ) from None
    if done.returncode == EXIT_AUTH_FAILED:
        raise AuthenticationFailed()
    if done.returncode != 0:
        message = " ".join(done.stderr.decode("utf-8", "replace").split())[-300:]
        raise StoreError(f"key-wrapping helper failed (exit {done.returncode}): {message or 'no message'}")
    try:
        return base64.b64decode(done.stdout, validate=True)
    except ValueError as exc:
        raise StoreError(f"key-wrapping helper answered garbage: {exc}") from None


def main() -> int:
    """Child entry point: one request on stdin, the result on stdout."""
    try:
        req = json.loads(sys.stdin.buffer.read())
        args = [base64.b64decode(req[k], validate=True) for k in ("key", "nonce", "data", "aad")]
        op = req["op"]
        if op not in ("seal", "open"):
            raise ValueError(f"unknown op {op!r}")
        result = _local(op, *args)
    except AuthenticationFailed:
        return EXIT_AUTH_FAILED
    except Exception as exc:  # one line for the parent's error message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(base64.b64encode(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
