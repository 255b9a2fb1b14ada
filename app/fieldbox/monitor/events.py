"""supervisord event listener protocol: records programs that exit unexpectedly, back off, or go FATAL.

This module is the protocol loop only; the program that runs it is the
``monitor`` (:mod:`fieldbox.services.monitor`, ``[eventlistener:monitor]``),
which serves it in a thread of its own next to its resource sampling.

The listener protocol (supervisord docs, "Events"): write ``READY\\n`` to
stdout; read a header line of ``key:value`` tokens from stdin, whose ``len``
says how many payload bytes follow; handle; write ``RESULT 2\\nOK`` and go back
to READY. stdout belongs to the protocol, so logs go to stderr.

Each event becomes an ``events`` row: kind ``process.exited`` (only when the
exit was *not* expected), ``process.backoff`` or ``process.fatal``, with the
program name, group, previous state, pid and expected flag as detail.

The listener does not open the database: events go to the store writer over
its socket (``event`` request, acknowledged after COMMIT), so this process never
loads SQLCipher or the key-unwrapping code. Sending happens in a background
thread (:class:`EventForwarder`), so supervisord gets its ``RESULT`` at once
even while the store writer is down or restarting (it is one of the programs
whose exits we record). What the writer does not take yet waits in a bounded
in-memory queue (:data:`MAX_PENDING`, oldest first) and is retried with
backoff; nothing is dropped silently: every event is logged to stderr (the
program's log under ``$FIELDBOX_DATA/log/monitor.log``) when it arrives, an
event pushed out of a full queue is logged as "not recorded", and so is every
event still unsent when the listener stops. An event recorded late carries
``delayed_s`` in its detail (the store stamps the time it commits).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from fieldbox.errors import FieldboxError

log = logging.getLogger(__name__)

MAX_PENDING = 1000
"""Most events held while the store writer is unreachable; past that the oldest is logged and dropped."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
"""Backoff between attempts while the store writer is unreachable (doubling from min to max)."""
LATE_S = 5.0
"""An event sent this long after it arrived gets ``delayed_s`` in its detail."""

KINDS = {
    "PROCESS_STATE_EXITED": "process.exited",
    "PROCESS_STATE_BACKOFF": "process.backoff",
    "PROCESS_STATE_FATAL": "process.fatal",
}


def parse_tokens(line: str) -> dict[str, str]:
    """``"a:1 b:2"`` → ``{"a": "1", "b": "2"}``."""
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            out[key] = value
    return out


def to_event(header: dict[str, str], payload: str) -> tuple[str, dict[str, Any]] | None:
    """The (kind, detail) to record for one notification, or None for events we do not keep."""
    kind = KINDS.get(header.get("eventname", ""))
    if kind is None:
        return None
    body = parse_tokens(payload.split("\n", 1)[0])
    if kind == "process.exited" and body.get("expected") == "1":
        return None  # a clean, expected exit (e.g. a one-shot program) is not news
    detail: dict[str, Any] = {
        "program": body.get("processname", "?"),
        "group": body.get("groupname", "?"),
        "from_state": body.get("from_state", "?"),
    }
    if "pid" in body:
        detail["pid"] = int(body["pid"]) if body["pid"].isdigit() else body["pid"]
    if "expected" in body:
        detail["expected"] = body["expected"] == "1"
    return kind, detail


def listen(
    record: Callable[[str, dict[str, Any]], None],
    stdin: IO[str] = sys.stdin,
    stdout: IO[str] = sys.stdout,
    max_events: int | None = None,
) -> int:
    """Serve the listener protocol until stdin closes (or ``max_events``); returns events handled."""
    handled = 0
    while max_events is None or handled < max_events:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            break
        header = parse_tokens(line)
        try:
            length = int(header.get("len", "0"))
        except ValueError:
            length = 0
        payload = stdin.read(length) if length > 0 else ""
        try:
            event = to_event(header, payload)
            if event is not None:
                record(*event)
                log.warning("%s: %s", event[0], event[1])
        except FieldboxError as exc:
            log.error("could not record %s: %s", header.get("eventname"), exc)
        except Exception:  # a bug must not stop the acknowledgements (supervisord would stall the pool)
            log.exception("could not record %s", header.get("eventname"))
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        handled += 1
    return handled


class EventForwarder:
    """Sends events to the store in order, from a background thread, retrying while it is down.

    :meth:`record` only queues (it never blocks on the store), so the listener
    answers supervisord at once. ``send`` is e.g. ``StoreClient.add_event``;
    a :class:`~fieldbox.errors.FieldboxError` from it means "not stored, try
    again later".
    """

    def __init__(
        self,
        send: Callable[[str, dict[str, Any]], object],
        *,
        max_pending: int = MAX_PENDING,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.max_pending = max_pending
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        self._pending: collections.deque[tuple[int, str, dict[str, Any], float]] = collections.deque()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="event-forwarder", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events queued and not yet acknowledged by the store."""
        with self._cond:
            return len(self._pending)

    def record(self, kind: str, detail: dict[str, Any]) -> None:
        """Queue one event for the store (drops and logs the oldest if the queue is full)."""
        with self._cond:
            if len(self._pending) >= self.max_pending:
                _, old_kind, old_detail, _ = self._pending.popleft()
                self.dropped += 1
                log.error(
                    "event not recorded (queue of %d full): %s: %s", self.max_pending, old_kind, old_detail
                )
            self._pending.append((next(self._seq), kind, detail, self._clock()))
            self._cond.notify()

    def _run(self) -> None:
        delay = self.retry_min_s
        failing = False
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                seq, kind, detail, arrived = self._pending[0]
            late = self._clock() - arrived
            to_send = {**detail, "delayed_s": round(late, 1)} if late >= LATE_S else detail
            try:
                self._send(kind, to_send)
            except FieldboxError as exc:
                if not failing:
                    log.warning("store not taking events, will retry: %s", exc)
                    failing = True
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:  # a bug, not an outage: retrying would loop forever
                log.exception("event not recorded (cannot be sent): %s: %s", kind, detail)
                self._forget(seq)
                continue
            if failing:
                log.info("store taking events again")
                failing = False
            delay = self.retry_min_s
            self._forget(seq)
            self.sent += 1

    def _forget(self, seq: int) -> None:
        with self._cond:
            if self._pending and self._pending[0][0] == seq:  # unless a full queue pushed it out
                self._pending.popleft()
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> int:
        """Try to send what is queued for up to ``timeout`` s; log what is left; its count."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._pending and self._clock() < deadline and self._thread.is_alive():
                self._cond.wait(0.1)
            self._closing = True
            self._cond.notify_all()
            left = list(self._pending)
            self._pending.clear()
        for _, kind, detail, _ in left:
            log.error("event not recorded (listener stopping): %s: %s", kind, detail)
        self._thread.join(1.0)
        return len(left)


def protocol_stdout() -> IO[str]:
    """Take stdout for the protocol alone; from now on ``print`` and fd 1 go to stderr.

    stdout is supervisord's channel: one stray line there (a library's
    warning, a debugging print in the sampler) would be read as a protocol
    reply. The returned stream writes to a private duplicate of fd 1; fd 1
    itself and :data:`sys.stdout` are pointed at stderr, so nothing else in
    the process can reach supervisord's pipe.
    """
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel
