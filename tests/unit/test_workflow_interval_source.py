"""An interval trigger's command source: a real child's stdout is the item; a failure is an InputError.

The workflows program imports ``subprocess`` only when such a source runs
(see :meth:`fieldbox.workflows.triggers.IntervalTicker.read_source`), so this
path is exercised here with real children.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fieldbox.errors import InputError
from fieldbox.workflows.spec import parse_workflow
from fieldbox.workflows.triggers import IntervalTicker


def ticker(command: list[str], tmp_path: Path, timeout: float = 10.0) -> IntervalTicker:
    spec = parse_workflow(
        {
            "name": "tick",
            "trigger": {
                "interval": {
                    "every_seconds": 60,
                    "source": {"command": command, "timeout_seconds": timeout},
                }
            },
            "steps": [{"agent": "a"}],
            "sinks": {"log": {}},
        }
    )
    # read_source only reads engine.spec; the engine's queue and threads are not involved
    engine: object = SimpleNamespace(spec=spec)
    return IntervalTicker(engine, tmp_path)  # type: ignore[arg-type]


def test_command_stdout_is_the_item(tmp_path: Path) -> None:
    t = ticker([sys.executable, "-c", "import sys; sys.stdout.write('frame-1')"], tmp_path)
    assert t.read_source() == b"frame-1"


def test_failing_command_names_its_exit_code_and_stderr(tmp_path: Path) -> None:
    t = ticker([sys.executable, "-c", "import sys; sys.stderr.write('no camera'); sys.exit(3)"], tmp_path)
    with pytest.raises(InputError, match="exited with 3: no camera"):
        t.read_source()


def test_command_past_its_timeout_is_an_input_error(tmp_path: Path) -> None:
    t = ticker([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, timeout=0.5)
    with pytest.raises(InputError, match="timed out"):
        t.read_source()


def test_missing_command_is_an_input_error(tmp_path: Path) -> None:
    t = ticker([str(tmp_path / "no-such-program")], tmp_path)
    with pytest.raises(InputError, match="no-such-program"):
        t.read_source()
