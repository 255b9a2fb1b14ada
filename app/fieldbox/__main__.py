"""``python3 -m fieldbox``: the device CLI."""

from fieldbox.cli import entry

entry()
