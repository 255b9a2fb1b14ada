"""The /data budget (``$FIELDBOX_ETC/budget.toml``, optional): what the data partition may hold.

The data partition holds the store (results, the outbox, telemetry, events),
the inbox directories and the logs. Each part has a written rule, so a device
left alone for months ends with a bounded card, never a full one:

==================  ==========================================================================
part                rule
==================  ==========================================================================
unsynced results    the outbox rule (:mod:`fieldbox.sync.outbox`): TTL per priority, then
                    ``max_rows`` / ``max_bytes``, the bytes capped at ``max_disk_fraction``
                    of the partition; every drop counted (``sync.evicted``)
synced results      a result whose outbox record is gone (acknowledged by the server, or
                    evicted) is kept ``results.keep_synced_s`` and at most
                    ``results.max_synced_rows`` of them, newest kept; pruned by the store
                    writer every ``prune_interval_s``, counted (``store.pruned``)
telemetry, events   the monitor's tiers and ``max_rows`` / ``max_events`` (``monitor.toml``)
inbox/done          no copy by default: an input whose results are committed is deleted
                    (the results keep its name and sha256); with ``inbox.keep_done`` copies
                    are kept under ``done_max_bytes`` / ``done_max_age_s``
inbox/failed        kept for diagnosis under ``failed_max_bytes`` / ``failed_max_age_s``,
                    oldest first, each with its ``.reason``; counted (``workflow.pruned``)
logs                supervisord rotates each program's log (``logfile_maxbytes``)
==================  ==========================================================================

**A full card.** While less than the *reserve* is free (the larger of
``reserve_bytes`` and ``reserve_fraction`` of the partition, as the services'
unprivileged users see it), the workflows take no new items: inbox files stay
in ``inbox/``, interval ticks wait, socket submissions are answered ``busy``
with the reason. ``fieldbox workflow status`` shows the reason; an event
``workflow.paused`` is recorded (if the store can still write). Intake resumes
by itself once the free space is back above the reserve plus a margin
(``resume_margin_bytes``), so a disk that hovers at the line does not flap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fieldbox.paths import etc_dir
from fieldbox.schema import doc_field, load, positive, unit_interval

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DAY = 86400.0


@dataclass(frozen=True)
class ResultsBudget:
    """Results that are no longer in the outbox (synced, or evicted by the outbox rule)."""

    keep_synced_s: float = doc_field(
        "a synced result is kept on the device this long, then pruned", default=7 * DAY, check=positive
    )
    max_synced_rows: int = doc_field(
        "synced results kept at most (the newest)", default=50_000, check=positive
    )


@dataclass(frozen=True)
class InboxBudget:
    """The files the inbox workflows leave behind."""

    keep_done: bool = doc_field(
        "keep a copy of each processed input in done/ (plaintext, outside the encrypted store); "
        "off: the input is deleted once its results are committed",
        default=False,
    )
    done_max_bytes: int = doc_field("done/ holds at most this many bytes", default=64 * MiB, check=positive)
    done_max_age_s: float = doc_field("a file in done/ is kept this long", default=7 * DAY, check=positive)
    failed_max_bytes: int = doc_field(
        "failed/ holds at most this many bytes (oldest pruned first)", default=32 * MiB, check=positive
    )
    failed_max_age_s: float = doc_field(
        "a file in failed/ is kept this long", default=30 * DAY, check=positive
    )


@dataclass(frozen=True)
class DataBudget:
    """``budget.toml``."""

    reserve_bytes: int = doc_field(
        "workflows take no new items while less than this is free on /data", default=32 * MiB, check=positive
    )
    reserve_fraction: float = doc_field(
        "... or while less than this share of /data is free, whichever is larger",
        default=0.05,
        check=unit_interval,
    )
    resume_margin_bytes: int = doc_field(
        "intake resumes once the free space is this much above the reserve", default=8 * MiB, check=positive
    )
    prune_interval_s: float = doc_field(
        "how often synced results and inbox files are pruned", default=600.0, check=positive
    )
    results: ResultsBudget = doc_field("synced results", default_factory=ResultsBudget)
    inbox: InboxBudget = doc_field("files in done/ and failed/", default_factory=InboxBudget)


def load_budget(path: Path | None = None) -> DataBudget:
    """Read ``budget.toml``; a missing file means the defaults."""
    path = etc_dir() / "budget.toml" if path is None else path
    if not path.exists():
        return DataBudget()
    return load(DataBudget, path)


@dataclass(frozen=True)
class Space:
    """A filesystem's size and the bytes an unprivileged writer can still use."""

    total: int
    free: int


def disk_space(path: Path) -> Space:
    """Size and free bytes of the filesystem holding ``path`` (``f_bavail``: root's reserve excluded)."""
    st = os.statvfs(path)
    return Space(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)


class SpaceGuard:
    """Whether there is room for new items; the pause/resume rule of the module docstring.

    Reads the free space at most every ``every_s`` (a ``statvfs`` is cheap, but
    ``admit`` runs per item). Thread-safe. ``on_change(paused, reason)`` is
    called outside the lock on each transition.
    """

    def __init__(
        self,
        path: Path,
        budget: DataBudget,
        every_s: float = 1.0,
        space: Callable[[Path], Space] = disk_space,
        on_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.path = path
        self.budget = budget
        self.every_s = every_s
        self._space = space
        self._on_change = on_change
        self._lock = threading.Lock()
        self._checked = -1e18
        self.reason = ""
        self.pauses = 0

    def reserve(self, total: int) -> int:
        """The free bytes under which intake pauses, for a filesystem of ``total`` bytes."""
        return max(self.budget.reserve_bytes, int(self.budget.reserve_fraction * total))

    def paused(self) -> str:
        """The reason intake is paused now, or ``""``; re-reads the free space when due."""
        now = time.monotonic()
        changed: tuple[bool, str] | None = None
        with self._lock:
            if now - self._checked >= self.every_s:
                self._checked = now
                try:
                    space = self._space(self.path)
                except OSError as exc:
                    log.warning("cannot read the free space of %s: %s", self.path, exc)
                    return self.reason
                reserve = self.reserve(space.total)
                if not self.reason and space.free < reserve:
                    self.reason = (
                        f"{self.path} has {space.free // MiB} MiB free, under the {reserve // MiB} MiB "
                        "reserve: taking no new items until space returns"
                    )
                    self.pauses += 1
                    changed = (True, self.reason)
                elif self.reason and space.free >= reserve + self.budget.resume_margin_bytes:
                    self.reason = ""
                    changed = (False, f"{self.path} has {space.free // MiB} MiB free again")
            reason = self.reason
        if changed is not None and self._on_change is not None:
            self._on_change(*changed)
        return reason
