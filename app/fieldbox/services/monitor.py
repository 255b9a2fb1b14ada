"""The ``monitor`` program: sample device health every ``interval_s``, write once per ``flush_s``.

Settings: ``$FIELDBOX_ETC/monitor.toml`` (:class:`fieldbox.monitor.config.MonitorConfig`,
optional). What is sampled, how it is down-sampled and bounded, and how it is
synced: :mod:`fieldbox.monitor.sampler`, :mod:`fieldbox.monitor.telemetry`.
On SIGTERM it writes what it holds before exiting.

It does not open the database: each flush goes to the store writer over its
socket (``telemetry`` request, acknowledged after COMMIT), so this process
never loads SQLCipher or the key-unwrapping code. While the store writer is
down, samples stay queued (bounded) and go with the next flush that succeeds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from fieldbox import paths
from fieldbox.errors import FieldboxError
from fieldbox.monitor.config import load_config
from fieldbox.monitor.sampler import Sampler
from fieldbox.monitor.telemetry import TelemetryBuffer
from fieldbox.services.clients import StoreClient
from fieldbox.services.common import EXIT_OK, run_service

STORE_TIMEOUT_S = 15.0
"""How long one flush waits for the store writer (under the 20 s stopwaitsecs, so the exit flush fits)."""


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Sample, buffer, flush, until stopped."""
    config = load_config()
    sampler = Sampler(paths.data_dir())
    store = StoreClient(timeout=STORE_TIMEOUT_S)
    buffer = TelemetryBuffer(
        store,
        tiers=config.tiers(),
        max_rows=config.max_rows,
        max_events=config.max_events,
        sync_priority=config.sync_priority if config.sync else None,
    )
    next_flush = time.monotonic() + config.flush_s
    while not stop.is_set():
        buffer.add(time.time(), sampler.sample())
        if time.monotonic() >= next_flush:
            try:
                buffer.flush()
            except FieldboxError as exc:  # keep sampling; the buffer is bounded
                log.error("cannot write telemetry (%d samples kept): %s", len(buffer.pending), exc)
            next_flush = time.monotonic() + config.flush_s
        stop.wait(config.interval_s)
    try:
        buffer.flush()
    except FieldboxError as exc:
        log.error("cannot write telemetry on exit (%d samples lost): %s", len(buffer.pending), exc)
    store.close()
    log.info("monitor: %d flushes", buffer.flushes)
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.monitor``."""
    return run_service("monitor", main_body)


if __name__ == "__main__":
    sys.exit(main())
