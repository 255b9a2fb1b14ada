"""The host's ``fieldbox`` command: the device verbs plus the host-only ones."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fieldbox.cli import DEVICE_COMMANDS
from fieldbox.cli import main as device_main

HOST_COMMANDS: tuple[str, ...] = (
    "fieldbox_host.commands.serve",
    "fieldbox_host.commands.dev",
    "fieldbox_host.commands.build",
    "fieldbox_host.commands.emulate",
    "fieldbox_host.commands.keys",
    "fieldbox_host.commands.release",
)
"""Modules that add host verbs (``build``, ``emulate``, ``dev``, ...)."""


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI and exit with its code."""
    sys.exit(device_main(argv, modules=DEVICE_COMMANDS + HOST_COMMANDS))
