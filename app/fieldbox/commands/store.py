"""`fieldbox store ...`: placeholder until the feature lands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `store` verb."""
    parser = subparsers.add_parser("store", help="(not yet implemented)")
    parser.set_defaults(func=lambda args: 2)
