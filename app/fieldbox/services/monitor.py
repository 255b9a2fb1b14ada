"""The ``monitor`` program: device health sampling and supervisord's event listener, in one process.

It runs as ``[eventlistener:monitor]``; one interpreter does two jobs that
used to be two programs (one Python process costs ~8-10 MiB and 1.5-2 s of
CPU at boot on the appliance):

* **Resource sampling** (the main thread): sample every ``interval_s``, write
  once per ``flush_s``. Settings: ``$FIELDBOX_ETC/monitor.toml``
  (:class:`fieldbox.monitor.config.MonitorConfig`, optional). What is sampled,
  how it is down-sampled and bounded, and how it is synced:
  :mod:`fieldbox.monitor.sampler`, :mod:`fieldbox.monitor.telemetry`.
* **Event listener** (thread ``event-listener``): the protocol loop of
  :mod:`fieldbox.monitor.events` on stdin/stdout, recording programs that exit
  unexpectedly, back off or go FATAL; events reach the store through an
  :class:`~fieldbox.monitor.events.EventForwarder` (its own thread and queue).

The two never wait on each other: a slow sample or a store writer that is
down delays telemetry, never the ``RESULT`` supervisord waits for. The
sampler runs on its own clock (not on supervisord's ``TICK`` events): a TICK
arrives only through the listener's pool, at supervisord's 5 s/60 s grid
rather than ``interval_s``, and would tie the sampling schedule to the
protocol loop this design keeps free.

The listener is in a thread and the sampling in the main thread because the
main thread is the one that receives SIGTERM: it sets the stop event, the
sampling loop wakes, writes what it holds (the exit flush), and the process
exits while the listener thread is still parked in its blocking read of
stdin (a daemon thread). No exception has to be thrown into that read. If
supervisord closes stdin, the listener sets the stop event and the process
stops the same way.

stdout is the protocol channel: :func:`~fieldbox.monitor.events.protocol_stdout`
takes it before anything else runs; logs go to stderr (``monitor.log``).

Neither job opens the database: telemetry flushes and events go to the store
writer over its socket (acknowledged after COMMIT), so this process never
loads SQLCipher or the key-unwrapping code. While the store writer is down,
samples and events stay queued (bounded) and go when it is back.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from fieldbox import paths
from fieldbox.errors import FieldboxError
from fieldbox.monitor.config import MonitorConfig, load_config
from fieldbox.monitor.events import EventForwarder, listen, protocol_stdout
from fieldbox.monitor.sampler import Sample, Sampler
from fieldbox.monitor.telemetry import TelemetryBuffer, TelemetrySink
from fieldbox.services.clients import StoreClient
from fieldbox.services.common import EXIT_OK, run_service
from fieldbox.settings import LiveSettings

STORE_TIMEOUT_S = 15.0
"""How long one telemetry flush waits for the store writer."""
EVENT_STORE_TIMEOUT_S = 10.0
"""How long one event write waits for the store writer (in the forwarder's thread)."""
EVENTS_CLOSE_S = 3.0
"""At exit, how long queued events may still take to reach the store (after the exit flush).

The exit flush (at most :data:`STORE_TIMEOUT_S`) plus this stays under the
conf's ``stopwaitsecs = 20``.
"""


def serve_events(
    record: Callable[[str, dict[str, Any]], None],
    stdin: IO[str],
    stdout: IO[str],
    stop: threading.Event,
    log: logging.Logger,
) -> threading.Thread:
    """Start the listener protocol loop in a daemon thread; it sets ``stop`` when it ends.

    It ends when supervisord closes stdin (or the pipe breaks): the program
    then stops as on SIGTERM, and supervisord starts a fresh one.
    """

    def run() -> None:
        try:
            handled = listen(record, stdin=stdin, stdout=stdout)
            log.info("event stream closed after %d events", handled)
        except Exception:
            log.exception("event listener failed")
        finally:
            stop.set()

    thread = threading.Thread(target=run, name="event-listener", daemon=True)
    thread.start()
    return thread


def sample_until_stopped(
    sample: Callable[[], list[Sample]],
    buffer: TelemetryBuffer,
    config: MonitorConfig,
    stop: threading.Event,
    log: logging.Logger,
    config_values: Callable[[str], dict[str, Any]] | None = None,
) -> None:
    """Sample every ``interval_s``, flush every ``flush_s``, flush once more when stopped.

    A failing sample or flush is logged and the loop goes on (the buffer is
    bounded); nothing here can stop the listener. With ``config_values`` (the
    store writer's ``config.values``) the document's ``monitor.*`` keys
    (:mod:`fieldbox.settings`) are read at start and after each flush.
    """
    live = LiveSettings("monitor", config)

    def refresh() -> MonitorConfig:
        if config_values is None:
            return config
        try:
            updated: MonitorConfig = live.apply(config_values("monitor."))
        except FieldboxError as exc:
            log.warning("cannot read the config document's monitor keys: %s", exc)
            return config
        return updated

    config = refresh()
    next_sample = time.monotonic()
    next_flush = next_sample + config.flush_s
    while not stop.is_set():
        if time.monotonic() >= next_sample:
            try:
                buffer.add(time.time(), sample())
            except Exception:
                log.exception("sample failed")
            next_sample = time.monotonic() + config.interval_s
        if time.monotonic() >= next_flush:
            try:
                buffer.flush()
            except FieldboxError as exc:  # keep sampling; the buffer is bounded
                log.error("cannot write telemetry (%d samples kept): %s", len(buffer.pending), exc)
            except Exception:
                log.exception("telemetry flush failed (%d samples kept)", len(buffer.pending))
            config = refresh()  # a shorter interval applies now, not after the old one ran out
            next_sample = min(next_sample, time.monotonic() + config.interval_s)
            next_flush = time.monotonic() + config.flush_s
        stop.wait(max(0.0, min(next_sample, next_flush) - time.monotonic()))
    try:
        buffer.flush()
    except FieldboxError as exc:
        log.error("cannot write telemetry on exit (%d samples lost): %s", len(buffer.pending), exc)
    except Exception:
        log.exception("telemetry exit flush failed (%d samples lost)", len(buffer.pending))


def run_monitor(
    config: MonitorConfig,
    stop: threading.Event,
    log: logging.Logger,
    *,
    stdin: IO[str],
    stdout: IO[str],
    sample: Callable[[], list[Sample]],
    telemetry: TelemetrySink,
    send_event: Callable[[str, dict[str, Any]], object],
    config_values: Callable[[str], dict[str, Any]] | None = None,
) -> TelemetryBuffer:
    """Serve events and sample until ``stop`` is set (or stdin closes); the buffer, for its counters.

    ``telemetry`` and ``send_event`` are the store writer's client calls on
    the device; each job gets its own connection (they run in different threads).
    """
    forwarder = EventForwarder(send_event)
    serve_events(forwarder.record, stdin, stdout, stop, log)
    buffer = TelemetryBuffer(
        telemetry,
        tiers=config.tiers(),
        max_rows=config.max_rows,
        max_events=config.max_events,
        sync_priority=config.sync_priority if config.sync else None,
    )
    try:
        sample_until_stopped(sample, buffer, config, stop, log, config_values)
    finally:
        forwarder.close(EVENTS_CLOSE_S)
    log.info("monitor: %d flushes, %d events recorded, %d dropped", buffer.flushes, forwarder.sent,
             forwarder.dropped)
    return buffer


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Take stdout for the protocol, then listen and sample until stopped."""
    channel = protocol_stdout()
    config = load_config()
    sampler = Sampler(paths.data_dir())
    telemetry_client = StoreClient(timeout=STORE_TIMEOUT_S)
    event_client = StoreClient(timeout=EVENT_STORE_TIMEOUT_S)
    try:
        run_monitor(
            config,
            stop,
            log,
            stdin=sys.stdin,
            stdout=channel,
            sample=sampler.sample,
            telemetry=telemetry_client,
            send_event=event_client.add_event,
            config_values=telemetry_client.config_values,
        )
    finally:
        telemetry_client.close()
        event_client.close()
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.monitor`` (an ``[eventlistener:monitor]`` command)."""
    return run_service("monitor", main_body)


if __name__ == "__main__":
    sys.exit(main())
