"""AES-GCM key wrapping in a child process: same bytes as in-process, same errors, nothing left loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldbox import aead
from fieldbox.errors import WrongKeyError
from fieldbox.store import FileKeyProvider, Store


@pytest.fixture
def child() -> Iterator[None]:
    aead.use_child_process()
    yield
    aead.use_child_process(False)


def test_child_and_local_agree_both_ways(child: None) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), b"fieldbox"
    sealed = aead.seal(key, nonce, b"secret", aad)
    aead.use_child_process(False)
    assert aead.open_sealed(key, nonce, sealed, aad) == b"secret"
    local = aead.seal(key, nonce, b"secret", aad)
    assert local == sealed  # GCM is deterministic for one key and nonce
    aead.use_child_process()
    assert aead.open_sealed(key, nonce, local, aad) == b"secret"
    with pytest.raises(aead.AuthenticationFailed):
        aead.open_sealed(key, nonce, local[:-1] + bytes([local[-1] ^ 1]), aad)
    with pytest.raises(aead.AuthenticationFailed):
        aead.open_sealed(os.urandom(32), nonce, local, aad)


def test_store_opens_through_the_child_and_refuses_a_wrong_kek(child: None, tmp_path: Path) -> None:
    db, kek = tmp_path / "store" / "fieldbox.db", tmp_path / "keys" / "kek"
    with Store.open(db, FileKeyProvider(kek)) as store:  # creates and wraps the key in the child
        store.add_event("e", {"n": 1})
    with Store.open(db, FileKeyProvider(kek)) as store:  # unwraps it in the child
        assert [e.detail for e in store.events("e")] == [{"n": 1}]
    kek.write_bytes(os.urandom(len(kek.read_bytes())))
    with pytest.raises(WrongKeyError, match="does not match"):
        Store.open(db, FileKeyProvider(kek))


def test_a_service_that_opens_the_store_keeps_no_cryptography_loaded(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fieldbox import aead\n"
        "from fieldbox.store import FileKeyProvider, Store\n"
        "aead.use_child_process()\n"
        f"Store.open({str(tmp_path / 'db')!r}, FileKeyProvider({str(tmp_path / 'kek')!r})).close()\n"
        f"Store.open({str(tmp_path / 'db')!r}, FileKeyProvider({str(tmp_path / 'kek')!r})).close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
