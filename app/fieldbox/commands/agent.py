"""`fieldbox agent ...`: placeholder until the feature lands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` verb."""
    parser = subparsers.add_parser("agent", help="(not yet implemented)")
    parser.set_defaults(func=lambda args: 2)
