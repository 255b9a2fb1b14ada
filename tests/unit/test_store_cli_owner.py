"""``fieldbox store`` started as root runs as the store's owner before it opens the database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CODE = (
    "import os, sys; from pathlib import Path; from fieldbox.commands.store import become_owner; "
    "become_owner(Path(sys.argv[1])); print(os.geteuid(), os.getegid(), os.getgroups())"
)


def _run(directory: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", CODE, str(directory)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_root_becomes_the_owner_of_someone_elses_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    if os.geteuid() == 0:
        os.chown(store, 65534, 65534)
        assert _run(store) == "65534 65534 []"
        os.chown(store, 0, 0)
        assert _run(store).startswith("0 0 ")  # root's own store: stays root
    else:
        assert _run(store).split()[0] == str(os.geteuid())  # not root: nothing to give up
