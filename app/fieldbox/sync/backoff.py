"""Exponential backoff with full jitter, and ``Retry-After`` parsing.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): after the
n-th consecutive failure wait ``uniform(0, min(cap, base * 2**n))``. A fleet
whose server comes back does not return in lock-step. A server's
``Retry-After`` (seconds or an HTTP date) sets a floor on the wait, capped so a
broken header cannot silence a device for days.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    # Late: only an HTTP-date Retry-After needs email.utils (~0.9 MiB, ~10 ms of import), and
    # the sync program of a device with no server never reads one.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass
class Backoff:
    """Tracks consecutive failures; :meth:`failure` returns how long to wait before the next try."""

    base_s: float = 1.0
    cap_s: float = 300.0
    max_retry_after_s: float = 3600.0
    rng: Callable[[], float] = field(default=random.random)
    failures: int = 0

    def failure(self, retry_after: float | None = None) -> float:
        """Count a failure; the wait before the next attempt (seconds)."""
        ceiling = min(self.cap_s, self.base_s * (2.0 ** min(self.failures, 62)))
        self.failures += 1
        wait = float(self.rng()) * ceiling
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait

    def success(self) -> None:
        """The link works again: the next failure starts from ``base_s``."""
        self.failures = 0
