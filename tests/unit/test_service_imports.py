"""What each device service loads to start, checked in a fresh interpreter per service.

On the appliance (512 MiB, two emulated cores) every module a service imports
costs RSS for as long as it runs and CPU at every boot, so a service must not
pull in what only another one needs: numpy, PIL and the TFLite runtime belong
to the runner; SQLCipher and the key-unwrapping code (:mod:`fieldbox.aead`) to
the store writer alone (sync reaches the outbox through the store writer's
socket, so the process that talks to the network never loads the key); no service parses
mail or speaks HTTP at start (``requests`` is imported by sync only when a
server is set, see :func:`fieldbox.sync.client.make_session`).

Each case imports what the program imports before it serves: its entry module
(for ``monitor``, which is also supervisord's event listener, that brings the
listener protocol and the store client); for the runner, the kind modules and
the TFLite runtime the shipped agents load. A
"must load" list per case shows the check sees real imports (it cannot pass on
an empty module list).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fieldbox.agents.kinds import KINDS

NOWHERE = ("xmlrpc", "http.client", "email", "requests", "urllib3", "ssl", "cryptography")
"""No service needs these to start."""
NOT_RUNNER = ("numpy", "PIL", "tflite_runtime", "ai_edge_litert")
"""The runner's alone."""
NO_DATABASE = ("sqlcipher3", "fieldbox.store", "fieldbox.aead")
"""Only the store writer opens the database."""

KIND_MODULES = tuple(sorted({target.partition(":")[0] for target in KINDS.values()}))

CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # program: (modules imported, modules it must load, modules it must not load)
    "store": (
        ("fieldbox.services.store",),
        ("sqlcipher3", "fieldbox.aead", "fieldbox.monitor.telemetry"),
        NOWHERE + NOT_RUNNER,
    ),
    "runner": (
        ("fieldbox.services.runner", *KIND_MODULES, "tflite_runtime.interpreter"),
        ("numpy", "PIL", "tflite_runtime"),
        NOWHERE + NO_DATABASE + ("numpy.typing", "fieldbox.monitor.telemetry"),
    ),
    "workflows": (
        ("fieldbox.services.workflows",),
        ("fieldbox.ipc", "fieldbox.workflows.engine"),
        NOWHERE + NOT_RUNNER + NO_DATABASE + ("subprocess", "fieldbox.monitor.telemetry"),
    ),
    "sync": (
        ("fieldbox.services.sync",),
        ("fieldbox.sync.client", "fieldbox.sync.access", "fieldbox.ipc"),
        NOWHERE + NOT_RUNNER + NO_DATABASE + ("uuid",),
    ),
    "monitor": (
        ("fieldbox.services.monitor",),
        ("psutil", "fieldbox.monitor.telemetry", "fieldbox.monitor.events", "fieldbox.ipc"),
        NOWHERE + NOT_RUNNER + NO_DATABASE,
    ),
}


def loaded_after(modules: tuple[str, ...]) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    names: list[str] = json.loads(proc.stdout)
    return set(names)


def present(loaded: set[str], name: str) -> bool:
    """``name`` or any of its submodules is loaded."""
    return name in loaded or any(m.startswith(name + ".") for m in loaded)


@pytest.mark.parametrize("program", sorted(CASES))
def test_service_loads_only_what_it_needs(program: str) -> None:
    modules, needed, forbidden = CASES[program]
    loaded = loaded_after(modules)
    missing = [name for name in (*modules, *needed) if not present(loaded, name)]
    assert not missing, f"{program}: expected to load {missing}"
    extra = sorted(name for name in forbidden if present(loaded, name))
    assert not extra, f"{program}: loads {extra} at start, which it does not need"
