"""Release versions: dotted integers (``0.2.0``), compared number by number.

One rule for the host (``fieldbox release`` refuses to publish a version that
is not newer) and the device (anti-downgrade), so both ends agree on what
"newer" means. No pre-release suffixes: a fleet update either is a release or
is not published.
"""

from __future__ import annotations

import re

from fieldbox.errors import UpdateError

_VERSION = re.compile(r"^(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,3}$")


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.2.0"`` -> ``(0, 2, 0)``; trailing zeros do not count (``0.2`` == ``0.2.0``)."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise UpdateError(
            f"{text!r} is not a release version", "use 1 to 4 dot-separated numbers, e.g. 0.2.0"
        )
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def is_version(text: object) -> bool:
    """Whether ``text`` is a release version string."""
    return isinstance(text, str) and bool(_VERSION.match(text))


def newer(a: str, b: str) -> bool:
    """``a`` is a later release than ``b``."""
    return parse_version(a) > parse_version(b)
