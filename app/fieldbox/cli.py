"""The ``fieldbox`` command line: one parser, verbs contributed by command modules.

On the device only the device verbs exist (``agent``, ``store``, ``workflow``,
...); the host's ``fieldbox`` adds its own verbs (``build``, ``emulate``, ...)
through :func:`main`'s ``modules`` argument, so the device package never
imports host code. Every :class:`~fieldbox.errors.FieldboxError` becomes one
line on stderr and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from fieldbox import __version__
from fieldbox.errors import FieldboxError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEVICE_COMMANDS: tuple[str, ...] = (
    "fieldbox.commands.agent",
    "fieldbox.commands.store",
    "fieldbox.commands.workflow",
    "fieldbox.commands.bootctl",
    "fieldbox.commands.ota",
)
"""Modules that add device verbs; each has ``register(subparsers)``."""


class CommandModule(Protocol):
    """A module that adds one or more verbs to the parser."""

    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add the module's verbs; each sets ``func`` (Namespace -> exit code)."""


def build_parser(modules: Sequence[str]) -> argparse.ArgumentParser:
    """The full parser for the given command modules."""
    parser = argparse.ArgumentParser(
        prog="fieldbox",
        description="Edge-AI appliance toolkit: agents, store, images, updates.",
    )
    parser.add_argument("--version", action="version", version=f"fieldbox {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging"
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in modules:
        module: CommandModule = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, modules: Sequence[str] = DEVICE_COMMANDS) -> int:
    """Run one CLI invocation and return its exit code."""
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    debug = bool(args.debug or os.environ.get("FIELDBOX_DEBUG"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
        return code
    except FieldboxError as exc:
        if debug:
            raise
        print(f"fieldbox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fieldbox: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `fieldbox ... | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def entry() -> None:
    """Console-script entry point of the device CLI."""
    sys.exit(main())
