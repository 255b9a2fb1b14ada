"""supervisord event listener: records programs that exit unexpectedly, back off, or go FATAL.

The listener protocol (supervisord docs, "Events"): write ``READY\\n`` to
stdout; read a header line of ``key:value`` tokens from stdin, whose ``len``
says how many payload bytes follow; handle; write ``RESULT 2\\nOK`` and go back
to READY. stdout belongs to the protocol, so logs go to stderr.

Each event becomes an ``events`` row: kind ``process.exited`` (only when the
exit was *not* expected), ``process.backoff`` or ``process.fatal``, with the
program name, group, previous state, pid and expected flag as detail. If the
store cannot be written, the event is logged to stderr and still acknowledged
(otherwise supervisord would resend it forever and block other events).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import IO, Any

from fieldbox.errors import FieldboxError

log = logging.getLogger(__name__)

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
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        handled += 1
    return handled


def main() -> int:
    """Entry point: ``python3 -m fieldbox.monitor.events`` (an ``[eventlistener:...]`` command)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from fieldbox.store import Store, default_db_path

    with Store.open(default_db_path()) as store:
        listen(lambda kind, detail: None if store.add_event(kind, detail) is None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
