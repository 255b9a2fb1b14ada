"""Triggers: what feeds a workflow's engine. Inbox and interval run as threads here;
socket submissions are served by :mod:`fieldbox.services.workflows` through
:func:`submit_and_wait`.

Each trigger admits an item (a place in the bounded queue) *before* taking
it, so a full queue holds the trigger back: inbox files stay in ``inbox/``, an
interval tick waits, a socket submission is answered ``busy``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fieldbox.budget import DataBudget
from fieldbox.errors import BusyError, FieldboxError, InputError, ServiceUnavailableError
from fieldbox.workflows.engine import Outcome, WorkflowEngine
from fieldbox.workflows.inbox import Inbox, display_name, one_line, prune_kept
from fieldbox.workflows.items import Item
from fieldbox.workflows.spec import IntervalTrigger

log = logging.getLogger(__name__)


class InboxWatcher:
    """Feeds an engine from its inbox directory (see :mod:`fieldbox.workflows.inbox`).

    It also keeps ``done/`` and ``failed/`` within the /data budget
    (:func:`~fieldbox.workflows.inbox.prune_kept`, every ``prune_interval_s``).
    """

    def __init__(
        self,
        engine: WorkflowEngine,
        data_dir: Path,
        budget: DataBudget | None = None,
        on_pruned: Callable[[str, int, int], None] | None = None,
    ) -> None:
        trigger = engine.spec.trigger.inbox
        assert trigger is not None
        self.engine = engine
        self.inbox = Inbox(data_dir, trigger, engine.spec.processing_dir)
        self.poll = trigger.poll_seconds
        self.budget = budget or DataBudget()
        self.on_pruned = on_pruned
        self._next_prune = 0.0
        self._thread: threading.Thread | None = None

    def prune(self, now: float | None = None) -> int:
        """Apply the budget to done/ and failed/ now; files deleted."""
        rules = self.budget.inbox
        total = 0
        for directory, max_bytes, max_age in (
            (self.inbox.done, rules.done_max_bytes, rules.done_max_age_s),
            (self.inbox.failed, rules.failed_max_bytes, rules.failed_max_age_s),
        ):
            try:
                files, size = prune_kept(directory, max_bytes, max_age, now)
            except OSError as exc:
                log.warning("%s: cannot prune %s: %s", self.engine.spec.name, directory, exc)
                continue
            if files:
                total += files
                self.engine.note_pruned(files)
                log.info(
                    "%s: pruned %d file(s), %d bytes, from %s by the /data budget",
                    self.engine.spec.name, files, size, directory,
                )
                if self.on_pruned is not None:
                    self.on_pruned(str(directory), files, size)
        return total

    def start(self) -> None:
        """Create the directories, then watch in a background thread."""
        self.inbox.ensure_dirs()
        self._thread = threading.Thread(
            target=self._run, name=f"{self.engine.spec.name}-inbox", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the watcher to notice ``stop``."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _done(self, item: Item, outcome: Outcome | None) -> None:
        """Move the file once its outcome is known; leave it in processing/ when stopped."""
        assert item.path is not None
        if outcome is None:
            return
        if outcome.ok:
            self.inbox.finish(item.path, keep=self.budget.inbox.keep_done)
        else:
            self.inbox.fail(item.path, outcome.reason)

    def _feed(self, path: Path) -> None:
        self.engine.submit(
            Item(workflow=self.engine.spec.name, name=display_name(path.name), origin="inbox", path=path),
            self._done,
        )

    def _run(self) -> None:
        engine = self.engine
        stop = engine.stop
        leftovers = self.inbox.leftovers()
        if leftovers:
            log.info(
                "%s: %d file(s) left in %s by an earlier run: processing them again",
                engine.spec.name, len(leftovers), self.inbox.processing,
            )
        for path in leftovers:
            if not engine.admit():
                return
            self._feed(path)
        while not stop.is_set():
            if time.monotonic() >= self._next_prune:
                self.prune()
                self._next_prune = time.monotonic() + self.budget.prune_interval_s
            try:
                ready = self.inbox.ready()
            except OSError as exc:
                log.error("%s: cannot scan %s: %s", engine.spec.name, self.inbox.inbox, exc)
                ready = []
            for path in ready:
                # Bounded wait: while the queue is full or intake is paused, the loop
                # comes round again, so the budget's pruning still runs on a full card.
                if not engine.admit(timeout=max(self.poll, 0.2)):
                    if stop.is_set():
                        return
                    break
                try:
                    claimed = self.inbox.claim(path)
                except (OSError, FieldboxError) as exc:
                    log.error("%s: cannot claim %s: %s", engine.spec.name, path, exc)
                    claimed = None
                if claimed is None:
                    engine.release()
                    continue
                self._feed(claimed)
            stop.wait(self.poll)


class IntervalTicker:
    """Every ``every_seconds``, one item from the source (a file or a command's stdout)."""

    def __init__(self, engine: WorkflowEngine, data_dir: Path) -> None:
        trigger = engine.spec.trigger.interval
        assert trigger is not None
        self.engine = engine
        self.trigger: IntervalTrigger = trigger
        path = Path(trigger.source.path) if trigger.source.path else None
        self.path = path if path is None or path.is_absolute() else data_dir / path
        self.skipped = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Tick in a background thread."""
        self._thread = threading.Thread(
            target=self._run, name=f"{self.engine.spec.name}-interval", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the ticker to notice ``stop``."""
        if self._thread is not None:
            self._thread.join(timeout)

    def read_source(self) -> bytes:
        """This tick's bytes; InputError if the source has none."""
        source = self.trigger.source
        if self.path is not None:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise InputError(f"interval source {self.path}: {exc.strerror}") from None
        else:
            # Late: only a command source runs a child; subprocess costs the workflows program
            # ~0.4 MiB and ~3 ms of import at start on devices whose workflows have none.
            import subprocess

            try:
                proc = subprocess.run(
                    source.command,
                    capture_output=True,
                    timeout=source.timeout_seconds,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise InputError(f"interval source {source.command[0]}: {one_line(str(exc))}") from None
            if proc.returncode != 0:
                err = one_line(proc.stderr.decode(errors="replace")) if proc.stderr else ""
                raise InputError(
                    f"interval source {source.command[0]} exited with {proc.returncode}: {err}"
                )
            data = proc.stdout
        if not data:
            raise InputError(f"interval source {self.path or source.command[0]}: no data")
        return data

    def _done(self, item: Item, outcome: Outcome | None) -> None:
        """Nothing to move: the outcome is in the counters, the store and the log."""

    def _run(self) -> None:
        engine = self.engine
        every = self.trigger.every_seconds
        next_tick = time.monotonic()
        while not engine.stop.is_set():
            delay = next_tick - time.monotonic()
            if delay > 0 and engine.stop.wait(delay):
                return
            if not engine.admit():
                return
            now = time.monotonic()
            missed = int((now - next_tick) // every)
            if missed > 0:
                self.skipped += missed
                log.warning(
                    "%s: the workflow was busy: %d tick(s) were not taken (%d so far)",
                    engine.spec.name, missed, self.skipped,
                )
            next_tick += every * (missed + 1)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            name = f"{self.trigger.item_name}-{stamp}"
            try:
                data = self.read_source()
            except InputError as exc:
                engine.release()
                engine.note_failure(name, str(exc))
                log.warning("%s: %s", engine.spec.name, exc)
                continue
            engine.submit(
                Item(workflow=engine.spec.name, name=name, origin="interval", data=data), self._done
            )


def submit_and_wait(engine: WorkflowEngine, name: str, data: bytes, timeout: float) -> Outcome:
    """A socket submission: admit without waiting (BusyError if full), then wait for the outcome."""
    if engine.spec.trigger.socket is None or not engine.spec.trigger.socket.enabled:
        raise InputError(
            f"workflow {engine.spec.name} does not take socket submissions",
            "add [trigger.socket] to its file",
        )
    if len(data) > engine.max_item_bytes:
        raise InputError(
            f"{name}: {len(data)} bytes is over the {engine.max_item_bytes}-byte limit",
            "raise limits.toml max_item_bytes if this device has the memory",
        )
    if not engine.admit(block=False):
        paused = engine.paused()
        if paused:
            raise BusyError(f"workflow {engine.spec.name} is paused: {paused}", "free space on /data")
        raise BusyError(
            f"workflow {engine.spec.name} is busy ({engine.spec.queue.size} items in flight)",
            "retry shortly",
        )
    finished = threading.Event()
    box: list[Outcome | None] = []

    def done(item: Item, outcome: Outcome | None) -> None:
        box.append(outcome)
        finished.set()

    engine.submit(Item(workflow=engine.spec.name, name=name, origin="socket", data=data), done)
    if not finished.wait(timeout) or not box or box[0] is None:
        raise ServiceUnavailableError(
            f"workflow {engine.spec.name}: no outcome for {name} (stopping or timed out)",
            "submit it again: results are stored once per item",
        )
    return box[0]
