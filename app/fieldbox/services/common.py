"""What every service process does the same way: logging, stop signals, exit codes.

supervisord stops a program with SIGTERM (and Ctrl-C under ``fieldbox dev
up`` sends SIGINT); both set the returned event, the service finishes what it
holds and exits 0 within ``stopwaitsecs``. Logs go to stderr, which the
program's supervisord section redirects into ``$FIELDBOX_DATA/log/<name>.log``
with a size limit; each line carries a timestamp because those files do not.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from fieldbox.errors import FieldboxError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 78
"""EX_CONFIG: the service cannot start with this configuration (a fix is needed, not a retry)."""


def setup_logging(name: str) -> logging.Logger:
    """Log lines to stderr with time, level and logger name; ``FIELDBOX_DEBUG=1`` for debug."""
    level = logging.DEBUG if os.environ.get("FIELDBOX_DEBUG") else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(f"fieldbox.services.{name}")


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return event


def run_service(name: str, body: Callable[[logging.Logger, threading.Event], int]) -> int:
    """Run a service's main function with logging and signals set up; its exit code.

    A :class:`~fieldbox.errors.FieldboxError` escaping ``body`` is logged as
    one line (the service's log then says exactly why it is not running) and
    exits non-zero so supervisord's restart/backoff takes over.
    """
    log = setup_logging(name)
    stop = stop_event()
    log.info("%s starting (pid %d)", name, os.getpid())
    try:
        code = body(log, stop)
    except FieldboxError as exc:
        log.error("%s cannot run: %s", name, exc)
        return EXIT_FAILED
    except Exception:
        log.exception("%s crashed", name)
        return EXIT_FAILED
    log.info("%s stopped", name)
    return code
