"""The sync client: drains the store's outbox to an ingest server, and exchanges the config document.

At-least-once sending, exactly-once effect: a batch carries each record's
stable id; the server keeps one row per (device, id) and acknowledges the ids
it has committed; the client deletes exactly those, after the answer arrived.
A crash anywhere (before the send, during it, after the server's commit but
before the delete) leaves the records in the outbox, and the next run sends
them again; the server ignores the repeats. Nothing is kept in memory that the
outbox does not also hold, so a restart simply resumes.

Failures: a connection error, a timeout, a truncated or unreadable answer, a
5xx or a 429 → exponential backoff with full jitter (``Retry-After`` honoured).
A 400/413 for a batch (the server refuses its contents or size) → the batch is
halved until the refused record stands alone; that record is dropped and
counted (``sync.rejected`` event, ``sync.evicted`` telemetry) so one bad row
cannot block the queue. Other 4xx (401, 403, 404: a configuration problem)
back off like an outage, and are logged as errors.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from fieldbox.budget import disk_space
from fieldbox.errors import BatchFormatError, BusyError, ClockSkewError, ServiceUnavailableError, SyncError
from fieldbox.paths import data_dir
from fieldbox.settings import LiveSettings
from fieldbox.sync import batch as wire
from fieldbox.sync import configdoc, outbox
from fieldbox.sync.access import LocalAccess, SyncAccess
from fieldbox.sync.backoff import Backoff, parse_retry_after
from fieldbox.sync.batch import Batch, Codec
from fieldbox.sync.config import OutboxBounds, SyncConfig

if TYPE_CHECKING:  # imported where a request is made: most devices idle with no server set
    import requests

    from fieldbox.store import Store

log = logging.getLogger(__name__)

USER_AGENT = "fieldbox-sync/1"


@dataclass
class SyncStats:
    """Counters of one client's life (for logs, tests and the benchmark)."""

    batches_sent: int = 0
    records_acked: int = 0
    bytes_sent: int = 0
    failures: int = 0
    evicted: int = 0
    rejected: int = 0
    config_syncs: int = 0
    last_error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)


class RetryLater(Exception):
    """A send failed in a way worth retrying; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Refused(Exception):
    """The server refused the batch's contents or size (400/413): shrink or drop."""


def _codec(name: str) -> Codec:
    if name == "zlib":
        return Codec.ZLIB
    if name == "zstd":
        if not Codec.ZSTD.available:
            raise SyncError("sync.toml: codec = 'zstd' but python3-zstandard is not installed")
        return Codec.ZSTD
    return Codec.best_available()


def tls_arguments(config: SyncConfig) -> tuple[str | bool, tuple[str, str] | None]:
    """``(verify, cert)`` for every request: the pinned CA file (or True: system CAs) and the client pair.

    Passed per request, not set on the session: requests lets ``REQUESTS_CA_BUNDLE``
    / ``CURL_CA_BUNDLE`` in the environment override a session's ``verify``, which
    would silently undo the pin.
    """
    tls = config.tls
    if (tls.client_cert is None) != (tls.client_key is None):
        raise SyncError("sync.toml: tls.client_cert and tls.client_key go together")
    configured = any(p is not None for p in (tls.client_cert, tls.client_key, tls.server_ca))
    if configured and config.server_url and not config.server_url.lower().startswith("https://"):
        raise SyncError(
            f"sync.toml: server_url {config.server_url!r} is not https:// but [tls] is configured",
            hint="use the https:// URL of the server (the certificates would not be used over http)",
        )
    for path in (tls.client_cert, tls.client_key, tls.server_ca):
        if path is not None and not path.is_file():
            raise SyncError(f"sync.toml: TLS file {path} does not exist", hint="provision the device first")
    cert = None
    if tls.client_cert is not None and tls.client_key is not None:
        cert = (str(tls.client_cert), str(tls.client_key))
    verify: str | bool = str(tls.server_ca) if tls.server_ca is not None else True
    return verify, cert


MAX_RESPONSE_BYTES = 4 << 20
"""Most bytes read from one answer (an acknowledgement or a config document is a few KiB):
a server, or whoever answers in its place, cannot make the device buffer without bound."""


def _read_limited(response: requests.Response, limit: int) -> bytes:
    """The (decoded) body, at most ``limit`` bytes; RetryLater if the server sends more."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise RetryLater(f"answer longer than {limit} bytes: not read")
        chunks.append(chunk)
    return b"".join(chunks)


def make_session() -> requests.Session:
    """A keep-alive HTTP session.

    ``requests`` (with urllib3, http.client, ssl, email) is imported here and
    not at module level: it costs several MiB in a process that, with no
    ``server_url`` set, never sends anything.
    """
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _is_store(obj: object) -> TypeGuard[Store]:
    """An open Store? (Checked without importing SQLCipher into a process that has no use for it.)"""
    module = sys.modules.get("fieldbox.store.store")
    return module is not None and isinstance(obj, module.Store)


class SyncClient:
    """One device's sync loop (use from one thread).

    ``store``: an open :class:`Store` (tools, tests), or a :class:`~fieldbox.sync.access.SyncAccess`
    such as the store writer's socket (the device: this process never opens the database).
    """

    def __init__(
        self,
        store: Store | SyncAccess,
        config: SyncConfig,
        *,
        device_id: str | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        if _is_store(store):
            self.access: SyncAccess = LocalAccess(store)
        else:
            self.access = cast("SyncAccess", store)
        self.config = config
        self.device_id = device_id or config.resolved_device_id()
        self.codec = _codec(config.codec)
        self.verify, self.cert = tls_arguments(config)
        self._session = session
        self.monotonic = clock
        self.backoff = backoff or Backoff(
            config.backoff.base_s, config.backoff.cap_s, config.backoff.max_retry_after_s
        )
        self.stats = SyncStats()
        self._batch_limit = config.batch_max_records
        self._next_attempt = 0.0
        self._next_config = 0.0
        self._last_bounds = -1e18
        self.live = LiveSettings("sync", config)
        self._settings_read = False

    @property
    def session(self) -> requests.Session:
        """The HTTP session, made on first use (see :func:`make_session`)."""
        if self._session is None:
            self._session = make_session()
        return self._session

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return self.config.server_url.rstrip("/")

    # -- outbox bounds -----------------------------------------------------------------

    def bounds(self) -> OutboxBounds:
        """The outbox bounds, ``max_bytes`` capped by the data partition's size (:mod:`fieldbox.budget`)."""
        try:
            total = disk_space(data_dir()).total
        except OSError:
            return self.config.outbox
        return self.config.outbox.for_disk(total)

    def enforce_bounds(self) -> outbox.EvictionReport:
        """Apply the eviction rule now; log what was dropped."""
        report = self.access.enforce_bounds(self.bounds())
        if report.total:
            self.stats.evicted += report.total
            log.warning(
                "outbox over its bounds or TTL: dropped %d record(s) (%d bytes): %s",
                report.total,
                report.dropped_bytes,
                ", ".join(f"{r} p{p}: {n}" for (r, p), n in sorted(report.dropped.items())),
            )
        self._last_bounds = self.monotonic()
        return report

    # -- sending -----------------------------------------------------------------------

    def _post(self, path: str, data: bytes, content_type: str) -> bytes:
        import requests  # already loaded by the session (see make_session)

        try:
            response = self.session.post(
                self.url + path,
                data=data,
                headers={"Content-Type": content_type},
                timeout=self.config.timeout_s,
                verify=self.verify,
                cert=self.cert,
                stream=True,
            )
            with response:
                body = _read_limited(response, MAX_RESPONSE_BYTES)  # may raise on a truncated body
        except requests.RequestException as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}") from None
        status = int(response.status_code)
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        if status == 200:
            return body
        reason = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
        if status in (400, 413) and path == "/v1/batches":
            raise Refused(reason)
        if status == 429 or status >= 500:
            raise RetryLater(reason, parse_retry_after(response.headers.get("Retry-After")))
        log.error("server refused %s: %s (check server_url, certificates and device id)", path, reason)
        raise RetryLater(reason, parse_retry_after(response.headers.get("Retry-After")))

    def send_once(self) -> int:
        """Send one batch from the head of the outbox; returns records acknowledged (0: queue empty).

        Raises RetryLater when the attempt failed and should be retried later.
        """
        rows = self.access.pending(self._batch_limit, self.config.batch_max_bytes)
        if not rows:
            return 0
        records = []
        for row in rows:
            try:
                row.check()
                records.append(row)
            except BatchFormatError as exc:
                self.stats.rejected += self.access.drop_unsendable([(row.id, row.priority, exc.message)])
                log.error("dropped unsendable outbox record %r: %s", row.id, exc.message)
        if not records:
            return 0
        # 64 random bits name the batch in logs (dedup is by record id); no uuid module needed
        batch = Batch(self.device_id, f"{self.device_id}.{os.urandom(8).hex()}", tuple(records))
        data = wire.encode(batch, self.codec)
        try:
            answer = self._post("/v1/batches", data, wire.CONTENT_TYPE)
        except Refused as exc:
            if len(records) == 1:
                self.stats.rejected += self.access.drop_unsendable(
                    [(records[0].id, records[0].priority, str(exc))]
                )
                log.error("server refused record %r, dropped it: %s", records[0].id, exc)
            else:
                self._batch_limit = max(1, len(records) // 2)
                log.warning("server refused a batch of %d (%s); retrying in halves", len(records), exc)
            return 0
        self.stats.bytes_sent += len(data)
        try:
            ack = wire.decode_ack(answer, sent=[r.id for r in records])
        except BatchFormatError as exc:
            raise RetryLater(f"unreadable acknowledgement: {exc.message}") from None
        deleted = self.access.delete(ack.accepted)
        self.stats.batches_sent += 1
        self.stats.records_acked += deleted
        if self._batch_limit < self.config.batch_max_records:
            self._batch_limit = min(self.config.batch_max_records, self._batch_limit * 2)
        return len(ack.accepted)

    # -- config document ---------------------------------------------------------------

    def sync_config(self) -> set[str]:
        """Push the local document, merge the server's answer; returns keys changed here."""
        local = self.access.config_outgoing(self.device_id)
        answer = self._post(
            f"/v1/devices/{self.device_id}/config", configdoc.encode(local), "application/json"
        )
        try:
            remote = configdoc.decode(answer, "the server's config document")
            changed = self.access.config_incoming(self.device_id, remote)
        except ClockSkewError:
            raise
        except SyncError as exc:
            raise RetryLater(f"unreadable config document: {exc.message}") from None
        self.stats.config_syncs += 1
        if changed:
            log.info("config changed by the server: %s", ", ".join(sorted(changed)))
            self.refresh_settings()
        return changed

    def refresh_settings(self) -> SyncConfig:
        """Apply the config document's ``sync.*`` keys (:mod:`fieldbox.settings`) to this client."""
        self.config = self.live.apply(self.access.config_values("sync."))
        self._settings_read = True
        return self.config

    # -- the loop ----------------------------------------------------------------------

    def step(self) -> float:
        """Do one unit of work; return how long to sleep before the next (0 = go on at once).

        While the store writer cannot be reached (restarting, busy) the step waits
        ``idle_s`` and tries again: nothing leaves the outbox without an acknowledgement.
        """
        try:
            return self._step()
        except (ServiceUnavailableError, BusyError) as exc:
            self.stats.last_error = f"store writer: {exc}"
            log.warning("store writer not reachable (%s); retrying in %.1f s", exc, self.config.idle_s)
            return self.config.idle_s

    def _step(self) -> float:
        if not self._settings_read:  # what the document said before this process started
            self.refresh_settings()
        now = self.monotonic()
        if now - self._last_bounds >= self.config.idle_s:
            self.enforce_bounds()
        if not self.config.server_url:
            return self.config.idle_s
        if now < self._next_attempt:
            return min(self._next_attempt - now, self.config.idle_s)
        try:
            if now >= self._next_config:
                self.sync_config()
                self._next_config = now + self.config.config_interval_s
            sent = self.send_once()
        except RetryLater as exc:
            wait = self.backoff.failure(exc.retry_after)
            self.stats.failures += 1
            self.stats.last_error = exc.reason
            self._next_attempt = self.monotonic() + wait
            log.info("sync failed (%s); retrying in %.1f s", exc.reason, wait)
            return min(wait, self.config.idle_s)
        except ClockSkewError as exc:
            self.stats.last_error = str(exc)
            log.error("config sync refused: %s", exc)
            self._next_config = now + self.config.config_interval_s
            return 0.0
        self.backoff.success()
        return 0.0 if sent else self.config.idle_s

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set."""
        log.info("sync: device %s -> %s", self.device_id, self.url or "(no server: keeping the outbox)")
        while not stop.is_set():
            delay = self.step()
            if delay > 0:
                stop.wait(delay)

    def drain(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Send until the outbox is empty (True) or ``timeout_s`` passes (False); for tests and tools."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            if self.access.totals()[0] == 0:
                return True
            delay = self.step()
            if delay > 0:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        return self.access.totals()[0] == 0


def describe(stats: SyncStats) -> dict[str, Any]:
    """Stats as a JSON-ready dict."""
    return {
        "batches_sent": stats.batches_sent,
        "records_acked": stats.records_acked,
        "bytes_sent": stats.bytes_sent,
        "failures": stats.failures,
        "evicted": stats.evicted,
        "rejected": stats.rejected,
        "config_syncs": stats.config_syncs,
        "last_error": stats.last_error,
        "statuses": stats.statuses,
    }
