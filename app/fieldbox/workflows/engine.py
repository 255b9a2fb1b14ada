"""One running workflow: admission (the bounded queue), workers, steps and sinks.

Triggers hand items to :meth:`WorkflowEngine.admit` then :meth:`submit`; at
most ``queue.size`` items are admitted and not yet finished, so a fast
trigger is held back rather than anything being dropped (inbox: files wait
in ``inbox/``; socket: the submitter gets ``busy``; interval: the tick waits).

A worker takes an item and:

1. reads its bytes (inbox items), refusing empty files and non-regular files;
2. runs each step through the runner (the item's bytes, or the previous
   step's JSON result when ``input = "previous"``);
3. commits one result per step to the store in ONE request (one
   transaction), keyed by :func:`~fieldbox.workflows.items.result_key`;
4. writes the log line;
5. reports the outcome to the trigger (inbox: delete the input, or keep it in ``done/``).

Errors are sorted in two kinds. *Transient* ones (runner or store not
running, restarting, busy, the store's disk full) are retried with capped
exponential backoff for as long as it takes; the item keeps its place, and a
stop request leaves it where it is (inbox: in ``processing/``, retried on the
next start). *Item* errors (InputError, ModelError, a bad request, anything
else the runner reports about this item) fail the item with a one-line
reason, recorded as a ``workflow.item_failed`` event in the store; the
workflow carries on with the next item.

A worker thread that dies (a bug, not an item error) is counted
(``worker_deaths``, ``workers_alive`` in the status) and replaced; the item
it held is tried again, and fails after :data:`MAX_WORKER_DEATHS` deaths, so
one poison item cannot take the workflow down.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import queue
import random
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fieldbox.budget import SpaceGuard
from fieldbox.errors import (
    BusyError,
    FieldboxError,
    InputError,
    ServiceError,
    ServiceUnavailableError,
    StoreError,
)
from fieldbox.ipc import MAX_PAYLOAD, ConnectionLostError
from fieldbox.workflows.inbox import one_line
from fieldbox.workflows.items import Item, result_key
from fieldbox.workflows.spec import WorkflowSpec

log = logging.getLogger(__name__)

FAILED_EVENT = "workflow.item_failed"
MAX_LOSSES = 3
"""A service that dies this many times handling one item fails the item (see ``_retry``)."""


class Runner(Protocol):
    """What a worker needs from the runner (``fieldbox.services.clients.RunnerClient``)."""

    def run(self, agent: str, data: bytes) -> tuple[dict[str, Any], bytes]:
        """One inference: the result and its JSON bytes."""

    def close(self) -> None:
        """Release the connection."""


class StoreWriter(Protocol):
    """What a worker needs from the store (``fieldbox.services.clients.StoreClient``)."""

    def put_results(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """Commit results in one transaction; one 'newly stored' flag per row."""

    def add_event(self, kind: str, detail: dict[str, Any]) -> int:
        """Record an event."""

    def close(self) -> None:
        """Release the connection."""


class Stopping(Exception):
    """The engine is stopping; the item is left where it is, to be retried on the next start."""


MAX_WORKER_DEATHS = 3
"""An item whose worker dies this many times goes to failed/ (no poison loop)."""

WORKER_RESPAWN_S = 0.5
"""A replacement worker starts after this pause, so a worker that dies at once does not spin."""


@dataclass
class Outcome:
    """What became of one item."""

    ok: bool
    reason: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    """Results newly committed (0 with ``duplicate``: all were stored before)."""
    duplicate: bool = False
    seconds: float = 0.0


Done = Callable[[Item, Outcome | None], None]
"""Called once per admitted item with its outcome, or None if the engine stopped first."""


@dataclass
class _Job:
    item: Item
    done: Done


def is_transient(exc: BaseException) -> bool:
    """Errors that say nothing about the item: retry them, never fail the item for them."""
    return isinstance(exc, ServiceUnavailableError | BusyError | StoreError)


def read_item_file(item: Item, max_bytes: int = MAX_PAYLOAD) -> bytes:
    """An inbox item's bytes; InputError if it is empty, over ``max_bytes``, or not a regular file."""
    assert item.path is not None
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{item.name}: a symbolic link (links are not followed)", "put plain files in the inbox"
            ) from None
        raise InputError(f"{item.name}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{item.name}: not a regular file", "put plain files in the inbox")
        if st.st_size == 0:
            raise InputError(f"{item.name}: empty file", "write the whole file, then rename it in")
        if st.st_size > max_bytes:
            raise InputError(
                f"{item.name}: {st.st_size} bytes is over the {max_bytes}-byte limit",
                "raise limits.toml max_item_bytes if this device has the memory",
            )
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > max_bytes:  # it grew after the check: still being written
                raise InputError(f"{item.name}: grew past the {max_bytes}-byte limit while being read")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Backoff:
    """Capped exponential backoff with jitter; reset on success."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        """The next delay (full jitter between half and all of it), doubling up to the cap."""
        delay = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        """Back to the first delay."""
        self.delay = self.first


class WorkflowEngine:
    """The workers and counters of one workflow."""

    def __init__(
        self,
        spec: WorkflowSpec,
        runner_factory: Callable[[], Runner],
        store_factory: Callable[[], StoreWriter],
        stop: threading.Event | None = None,
        space: SpaceGuard | None = None,
        max_item_bytes: int = MAX_PAYLOAD,
    ) -> None:
        self.spec = spec
        self.space = space
        self.max_item_bytes = max_item_bytes
        self.runner_factory = runner_factory
        self.store_factory = store_factory
        self.stop = stop or threading.Event()
        self._slots = threading.BoundedSemaphore(spec.queue.size)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {
            "admitted": 0,
            "done": 0,
            "failed": 0,
            "duplicates": 0,
            "results_stored": 0,
            "in_flight": 0,
            "busy_refusals": 0,
            "retries": 0,
            "pruned_files": 0,
            "worker_deaths": 0,
        }
        self._deaths: dict[str, int] = {}
        self.last_error = ""
        self.last_failure = ""

    # ------------------------------------------------------------ admission
    def paused(self) -> str:
        """Why the workflow takes no new items now (the /data reserve, :mod:`fieldbox.budget`), or ``""``."""
        return self.space.paused() if self.space is not None else ""

    def admit(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one place in the bounded queue (False if none came free in time).

        With ``block`` and no ``timeout`` this waits until a place is free or
        the engine stops (then returns False). While :meth:`paused`, no place
        is given: a blocking caller waits for the space to return.
        """
        if not block:
            ok = not self.paused() and self._slots.acquire(blocking=False)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            ok = False
            while not self.stop.is_set():
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    break
                if self.paused():
                    self.stop.wait(left)
                    continue
                if self._slots.acquire(timeout=left):
                    ok = True
                    break
        with self._lock:
            if ok:
                self.counters["admitted"] += 1
                self.counters["in_flight"] += 1
            elif not block:
                self.counters["busy_refusals"] += 1
        return ok

    def submit(self, item: Item, done: Done) -> None:
        """Queue an admitted item; ``done`` is called once with its outcome."""
        self._queue.put(_Job(item, done))

    def release(self) -> None:
        """Give back a place taken by :meth:`admit` (an item finished, or was never submitted)."""
        with self._lock:
            self.counters["in_flight"] -= 1
        self._slots.release()

    def note_pruned(self, files: int) -> None:
        """Count files pruned from done/ or failed/ by the /data budget."""
        with self._lock:
            self.counters["pruned_files"] += files

    def note_failure(self, name: str, reason: str) -> None:
        """Count a failure that happened before an item existed (e.g. an interval source)."""
        with self._lock:
            self.counters["failed"] += 1
            self.last_failure = f"{name}: {one_line(reason)}"

    # ------------------------------------------------------------- workers
    def start(self) -> None:
        """Start the worker threads."""
        for _ in range(self.spec.queue.workers):
            self._spawn()

    def _spawn(self, delay: float = 0.0) -> None:
        with self._lock:
            n = len(self._workers)
            thread = threading.Thread(
                target=self._work, args=(delay,), name=f"{self.spec.name}-worker{n}", daemon=True
            )
            self._workers.append(thread)
        thread.start()

    def join(self, timeout: float = 10.0) -> None:
        """After ``stop`` is set: wake the workers and wait for them."""
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Whatever is still queued was admitted but not started: hand it back.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, None)

    def _work(self, delay: float = 0.0) -> None:
        """One worker: take jobs until stopped. If it dies, :meth:`_worker_died` replaces it."""
        if delay:
            self.stop.wait(delay)
        job: _Job | None = None
        runner = store = None
        try:
            runner = self.runner_factory()
            store = self.store_factory()
            while True:
                job = self._queue.get()
                if job is None:
                    return
                if self.stop.is_set():
                    self._finish(job, None)
                    job = None
                    continue
                try:
                    outcome: Outcome | None = self.process(job.item, runner, store)
                except Stopping:
                    outcome = None
                self._finish(job, outcome)
                job = None
        except Exception as exc:  # process() catches item errors; this is a bug or a broken client
            self._worker_died(job, exc)
        finally:
            for client in (runner, store):
                if client is not None:
                    client.close()

    def _worker_died(self, job: _Job | None, exc: Exception) -> None:
        """Count the death, retry or fail the item it held, and start a replacement worker."""
        log.exception("%s: a worker died", self.spec.name)
        with self._lock:
            self.counters["worker_deaths"] += 1
            self.last_error = one_line(f"a worker died: {type(exc).__name__}: {exc}")
        if job is not None:
            key = job.item.name
            with self._lock:
                self._deaths[key] = deaths = self._deaths.get(key, 0) + 1
            if deaths >= MAX_WORKER_DEATHS:
                reason = one_line(f"its worker died {deaths} times: {type(exc).__name__}: {exc}")
                with self._lock:
                    self.counters["failed"] += 1
                    self.last_failure = f"{job.item.name}: {reason}"
                    self._deaths.pop(key, None)
                log.warning("%s: %s failed: %s", self.spec.name, job.item.name, reason)
                self._finish(job, Outcome(False, reason=reason))
            else:
                self._queue.put(job)  # its place in the queue is still held: tried again
        if not self.stop.is_set():
            self._spawn(delay=WORKER_RESPAWN_S)

    def _finish(self, job: _Job, outcome: Outcome | None) -> None:
        try:
            job.done(job.item, outcome)
        except Exception:
            log.exception("%s: finishing %s failed", self.spec.name, job.item.name)
        finally:
            self.release()

    # --------------------------------------------------------------- pipeline
    def process(self, item: Item, runner: Runner, store: StoreWriter) -> Outcome:
        """Run one item through the steps and sinks (the whole pipeline, in this thread)."""
        start = time.perf_counter()
        try:
            if item.data is None:
                item.data = read_item_file(item, self.max_item_bytes)
            results = self._run_steps(item, runner)
            stored, duplicate = self._sink_store(item, results, store)
        except Stopping:
            raise
        except FieldboxError as exc:
            reason = one_line(str(exc))
            return self._failed(item, reason, store, start)
        except Exception as exc:  # a bug must not stop the workflow; it fails this item
            log.exception("%s: %s: unexpected error", self.spec.name, item.name)
            return self._failed(item, one_line(f"internal error: {type(exc).__name__}: {exc}"), store, start)
        seconds = time.perf_counter() - start
        with self._lock:
            self.counters["done"] += 1
            self.counters["results_stored"] += stored
            if duplicate:
                self.counters["duplicates"] += 1
        self._sink_log(item, results, duplicate, seconds)
        return Outcome(True, results=results, stored=stored, duplicate=duplicate, seconds=seconds)

    def _run_steps(self, item: Item, runner: Runner) -> list[dict[str, Any]]:
        assert item.data is not None
        results: list[dict[str, Any]] = []
        previous = b""
        for step in self.spec.steps:
            data = item.data if step.input == "item" else previous
            result, previous = self._retry(
                functools.partial(runner.run, step.agent, data), f"runner ({step.agent})"
            )
            results.append(result)
        return results

    def _sink_store(
        self, item: Item, results: list[dict[str, Any]], store: StoreWriter
    ) -> tuple[int, bool]:
        sink = self.spec.sinks.store
        if sink is None:
            return 0, False
        key = item.key
        rows = [
            {
                "key": result_key(key, i),
                "workflow": self.spec.name,
                "agent": step.agent,
                "item": item.name,
                "result": result,
                "priority": sink.priority,
            }
            for i, (step, result) in enumerate(zip(self.spec.steps, results, strict=True))
        ]
        flags = self._retry(lambda: store.put_results(rows), "store")
        stored = sum(flags)
        return stored, stored == 0

    def _sink_log(self, item: Item, results: list[dict[str, Any]], duplicate: bool, seconds: float) -> None:
        sink = self.spec.sinks.log
        if sink is None:
            return
        if sink.contents:
            summary = json.dumps(results[-1], separators=(",", ":"), default=str)
            if len(summary) > 300:
                summary = summary[:297] + "..."
        else:
            summary = f"{len(results)} step result(s)"
        level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}[sink.level]
        note = " (already stored)" if duplicate else ""
        log.log(level, "%s: %s -> %s in %.1f ms%s", self.spec.name, item.name, summary, seconds * 1000, note)

    def _failed(self, item: Item, reason: str, store: StoreWriter, start: float) -> Outcome:
        with self._lock:
            self.counters["failed"] += 1
            self.last_failure = f"{item.name}: {reason}"
        log.warning("%s: %s failed: %s", self.spec.name, item.name, reason)
        detail: dict[str, Any] = {"workflow": self.spec.name, "item": item.name, "reason": reason}
        if item.data is not None:
            detail["sha256"] = item.sha256
        self._retry(lambda: store.add_event(FAILED_EVENT, detail), "store (event)")
        return Outcome(False, reason=reason, seconds=time.perf_counter() - start)

    def _retry(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` until it succeeds or fails for a reason that is not transient.

        A service that dies *while handling* this call :data:`MAX_LOSSES`
        times is taken to be killed by this item (a poison pill): the item
        fails instead of crash-looping the service.
        """
        backoff = Backoff()
        failures = 0
        losses = 0
        while True:
            if self.stop.is_set():
                raise Stopping()
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if isinstance(exc, ConnectionLostError):
                    losses += 1
                    if losses >= MAX_LOSSES:
                        raise ServiceError(
                            f"{what} went away {losses} times while handling this item: "
                            f"{one_line(str(exc))}"
                        ) from None
                failures += 1
                with self._lock:
                    self.counters["retries"] += 1
                    self.last_error = f"{what}: {one_line(str(exc))}"
                if failures == 1 or failures % 20 == 0:
                    log.warning("%s: %s: %s (retrying)", self.spec.name, what, one_line(str(exc)))
                delay = backoff.next()
                if self.stop.wait(delay):
                    raise Stopping() from None

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Counters and the last problems, for ``fieldbox workflow status``."""
        with self._lock:
            out: dict[str, Any] = dict(self.counters)
        out["queued"] = self._queue.qsize()
        out["capacity"] = self.spec.queue.size
        out["last_error"] = self.last_error
        out["last_failure"] = self.last_failure
        out["paused"] = self.paused()
        with self._lock:
            out["workers_alive"] = sum(t.is_alive() for t in self._workers)
        out["triggers"] = [
            name
            for name, trig in (
                ("inbox", self.spec.trigger.inbox),
                ("interval", self.spec.trigger.interval),
                ("socket", self.spec.trigger.socket),
            )
            if trig is not None
        ]
        return out


def close_quietly(closer: Callable[[], None]) -> None:
    """Call a close function, ignoring errors (shutdown paths)."""
    with contextlib.suppress(Exception):
        closer()
