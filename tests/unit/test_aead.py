"""AES-256-GCM for the store key: the GCM spec's vectors, agreement with `cryptography`, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldbox import aead
from fieldbox.errors import StoreError

# McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", appendix B, test cases 13-16 (AES-256).
_K15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
_P15 = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
_C15 = (
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
)
VECTORS = [
    # case, key, iv, plaintext, aad, ciphertext, tag
    ("13", "00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("14", "00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"),
    ("15", _K15, "cafebabefacedbaddecaf888", _P15, "", _C15, "b094dac5d93471bdec1a502270e3cc6c"),
    ("16", _K15, "cafebabefacedbaddecaf888", _P15[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     _C15[:120], "76fc6ece0f4e1768cddf8853bb2d551b"),
]


@pytest.mark.parametrize(
    ("case", "key", "iv", "plain", "aad", "cipher", "tag"), VECTORS, ids=[v[0] for v in VECTORS]
)
def test_gcm_spec_vectors(case: str, key: str, iv: str, plain: str, aad: str, cipher: str, tag: str) -> None:
    k, n, p, a = (bytes.fromhex(x) for x in (key, iv, plain, aad))
    sealed = bytes.fromhex(cipher + tag)
    assert aead.seal(k, n, p, a) == sealed
    assert aead.open_sealed(k, n, sealed, a) == p
    if case == "16":
        assert len(p) == 60 and len(a) == 20  # partial final block in both, as the spec intends


sizes = st.sampled_from([0, 1, 15, 16, 17, 31, 32, 33, 60, 64, 255]) | st.integers(0, 2000)


@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       data_len=sizes, aad_len=sizes, seed=st.binary(min_size=1, max_size=8))
def test_agrees_with_cryptography_both_ways(
    key: bytes, nonce: bytes, data_len: int, aad_len: int, seed: bytes
) -> None:
    data = (seed * (data_len // len(seed) + 1))[:data_len]
    aad = bytes(reversed(seed)) * (aad_len // len(seed) + 1)
    aad = aad[:aad_len]
    ours = aead.seal(key, nonce, data, aad)
    theirs = AESGCM(key).encrypt(nonce, data, aad)
    assert ours == theirs
    assert len(ours) == data_len + aead.TAG_BYTES
    assert aead.open_sealed(key, nonce, theirs, aad) == data
    assert AESGCM(key).decrypt(nonce, ours, aad) == data


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=100), aad=st.binary(max_size=40), where=st.integers(0), bit=st.integers(0, 7))
def test_any_flipped_bit_in_ciphertext_or_tag_fails(data: bytes, aad: bytes, where: int, bit: int) -> None:
    key, nonce = bytes(range(32)), bytes(range(12))
    sealed = bytearray(aead.seal(key, nonce, data, aad))
    sealed[where % len(sealed)] ^= 1 << bit
    with pytest.raises(aead.AuthenticationFailed):
        aead.open_sealed(key, nonce, bytes(sealed), aad)
    with pytest.raises(InvalidTag):  # the reference refuses it too: the test is not vacuous
        AESGCM(key).decrypt(nonce, bytes(sealed), aad)


def test_wrong_key_wrong_aad_wrong_nonce_fail() -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), b"fieldbox-store-key/1/file"
    sealed = aead.seal(key, nonce, b"k" * 32, aad)
    assert aead.open_sealed(key, nonce, sealed, aad) == b"k" * 32
    other_key = bytes([key[0] ^ 0x80]) + key[1:]
    for args in (
        (other_key, nonce, sealed, aad),
        (key, nonce, sealed, b"fieldbox-store-key/1/tpm2"),
        (key, nonce, sealed, b""),
        (key, bytes([nonce[0] ^ 1]) + nonce[1:], sealed, aad),
    ):
        with pytest.raises(aead.AuthenticationFailed):
            aead.open_sealed(*args)


@pytest.mark.parametrize("keep", [0, 1, 15, 16, 47])
def test_a_truncated_blob_fails_authentication(keep: int) -> None:
    """Shorter than the tag, or missing its last bytes: a damaged blob, so AuthenticationFailed."""
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = aead.seal(key, nonce, b"x" * 32, b"aad")
    assert len(sealed) == 48
    with pytest.raises(aead.AuthenticationFailed):
        aead.open_sealed(key, nonce, sealed[:keep], b"aad")


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_a_key_of_the_wrong_size_is_a_clear_error(size: int) -> None:
    for call in (aead.seal, aead.open_sealed):
        with pytest.raises(StoreError, match=f"key must be 32 bytes, got {size}"):
            call(b"k" * size, b"n" * 12, b"d" * 48, b"")


@pytest.mark.parametrize("size", [0, 8, 11, 13, 16])
def test_a_nonce_of_the_wrong_size_is_a_clear_error(size: int) -> None:
    for call in (aead.seal, aead.open_sealed):
        with pytest.raises(StoreError, match=f"nonce must be 12 bytes, got {size}"):
            call(b"k" * 32, b"n" * size, b"d" * 48, b"")


def test_concurrent_calls_from_threads_agree_with_the_reference() -> None:
    cases = [(os.urandom(32), os.urandom(12), os.urandom(i), os.urandom(i % 7)) for i in range(200)]

    def one(case: tuple[bytes, bytes, bytes, bytes]) -> bool:
        key, nonce, data, aad = case
        sealed = aead.seal(key, nonce, data, aad)
        opened = aead.open_sealed(key, nonce, sealed, aad)
        return sealed == AESGCM(key).encrypt(nonce, data, aad) and opened == data

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, cases))


def _modules_after(code: str) -> list[str]:
    prelude = "import sys\n"
    report = "\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code + report], capture_output=True, text=True, check=True
    )
    return [line for line in done.stdout.splitlines() if line.startswith("[")]


def test_importing_the_store_does_not_load_cryptography_until_a_key_is_unwrapped(tmp_path: Path) -> None:
    """A process that never opens the store (the runner, workflows) never pays for cryptography."""
    assert _modules_after("import fieldbox.aead, fieldbox.store") == ["[]"]
    db, kek = str(tmp_path / "db"), str(tmp_path / "kek")
    code = (
        "from fieldbox.store import FileKeyProvider, Store\n"
        f"Store.open({db!r}, FileKeyProvider({kek!r})).close()\n"
    )
    assert _modules_after(code) != ["[]"]
