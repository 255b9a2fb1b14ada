"""Hybrid logical clocks (Kulkarni et al., 2014): timestamps that order config edits across nodes.

A timestamp is ``(wall_ms, counter, node)``, compared in that order:

* ``wall_ms`` follows the node's wall clock but never goes backwards, and never
  falls behind a timestamp the node has *seen* (:meth:`Clock.observe`);
* ``counter`` orders events within one millisecond, or while the wall clock
  lags behind what was seen;
* ``node`` (the device id, or ``"server"``) breaks exact ties, so every node
  orders any two timestamps the same way.

Why not plain wall time: a Raspberry Pi has no real-time clock and may boot
with a clock hours or years off. With an HLC, an edit made *after* a node saw
another edit is always ordered after it, whatever the wall clocks say; only
edits made without knowledge of each other (concurrent ones) are ordered by
wall time, and there a clock that runs ahead wins. To keep one wildly wrong
clock from winning every key for years, :meth:`Clock.observe` refuses a remote
timestamp more than ``max_ahead_ms`` ahead of local wall time.

The text form ``<wall_ms 15 digits>.<counter 6 digits>.<node>`` sorts the same
way as the tuple, so a database can index and compare it as TEXT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from fieldbox.errors import ClockSkewError, SyncError

MAX_COUNTER = 999_999
_TEXT_RE = re.compile(r"(\d{15})\.(\d{6})\.([A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127})")


def wall_ms_now() -> int:
    """The wall clock in integer milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True)
class Timestamp:
    """One HLC reading; ordering is (wall_ms, counter, node)."""

    wall_ms: int
    counter: int
    node: str

    def __str__(self) -> str:
        return f"{self.wall_ms:015d}.{self.counter:06d}.{self.node}"

    @classmethod
    def parse(cls, text: object) -> Timestamp:
        """Inverse of ``str()``; raises SyncError for anything else."""
        if not isinstance(text, str):
            raise SyncError(f"HLC timestamp must be text, got {type(text).__name__}")
        match = _TEXT_RE.fullmatch(text)
        if not match:
            raise SyncError(f"malformed HLC timestamp {text[:80]!r} (expected WALLMS.COUNTER.NODE)")
        return cls(int(match.group(1)), int(match.group(2)), match.group(3))


class Clock:
    """One node's hybrid logical clock. Not thread-safe; persist :attr:`last` to survive restarts."""

    def __init__(
        self,
        node: str,
        last: Timestamp | None = None,
        now_ms: Callable[[], int] = wall_ms_now,
        max_ahead_ms: int = 24 * 3600 * 1000,
    ) -> None:
        if not _TEXT_RE.fullmatch(f"{0:015d}.{0:06d}.{node}"):
            raise SyncError(f"HLC node id {node!r} is not 1-128 characters of [A-Za-z0-9._:@/+=-]")
        self.node = node
        self.now_ms = now_ms
        self.max_ahead_ms = max_ahead_ms
        self.last = last if last is not None else Timestamp(0, 0, node)

    def _advance(self, wall: int, counter: int) -> Timestamp:
        if counter > MAX_COUNTER:  # a stuck clock: move logical time on by one millisecond
            wall, counter = wall + 1, 0
        self.last = Timestamp(wall, counter, self.node)
        return self.last

    def tick(self) -> Timestamp:
        """A timestamp for a local event (an edit), later than every timestamp seen so far."""
        physical = self.now_ms()
        if physical > self.last.wall_ms:
            return self._advance(physical, 0)
        return self._advance(self.last.wall_ms, self.last.counter + 1)

    def check(self, remote: Timestamp) -> None:
        """Raise ClockSkewError if ``remote`` lies more than ``max_ahead_ms`` in our future."""
        ahead = remote.wall_ms - self.now_ms()
        if ahead > self.max_ahead_ms:
            raise ClockSkewError(
                f"timestamp from {remote.node} is {ahead / 1000:.0f} s ahead of this clock "
                f"(limit {self.max_ahead_ms / 1000:.0f} s)",
                hint="fix the clock of the node that sent it (NTP), then sync again",
            )

    def observe(self, remote: Timestamp) -> Timestamp:
        """Merge a received timestamp so later local events order after it."""
        self.check(remote)
        physical = self.now_ms()
        wall = max(physical, self.last.wall_ms, remote.wall_ms)
        if wall == self.last.wall_ms and wall == remote.wall_ms:
            counter = max(self.last.counter, remote.counter) + 1
        elif wall == self.last.wall_ms:
            counter = self.last.counter + 1
        elif wall == remote.wall_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        return self._advance(wall, counter)
