"""The ``store`` program: the only process that opens the encrypted store; on ``store/store.sock``.

It runs as its own user (``fieldbox-store``), the only one that can read the key
file; every other program (workflows, sync, monitor) asks it over its socket,
the sync client included (:mod:`fieldbox.sync.access`).

One thread owns the SQLCipher connection (a connection belongs to the thread
that opened it). Connection threads put their requests on a queue and wait;
the writer takes everything that has queued up (up to :data:`MAX_BATCH`
results) and commits it in ONE transaction, then acknowledges each request:
group commit. An acknowledgement therefore always means "committed and
fsynced" (WAL, ``synchronous=FULL``), and under load many requests share one
fsync instead of paying one each.

If a batch's transaction fails (disk full, say) every request in it gets the
store error and nothing of the batch is stored; clients retry. A request that
was committed but whose acknowledgement was lost (the store was killed) is
retried by the client and answered "already stored": results are idempotent
by key.

Between requests the writer applies the store's half of the /data budget
(:mod:`fieldbox.store.prune`) every ``prune_interval_s`` of ``budget.toml``.

Requests: see :mod:`fieldbox.services.clients`.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox import ipc
from fieldbox.budget import DataBudget, load_budget
from fieldbox.errors import FieldboxError, ProtocolError, ServiceUnavailableError, StoreError
from fieldbox.monitor.telemetry import TelemetryBatch, write_batch
from fieldbox.services import STORE_SOCKET, socket_path
from fieldbox.services.common import EXIT_OK, run_service
from fieldbox.store import ResultIn, Store, default_db_path
from fieldbox.store.prune import prune_synced
from fieldbox.sync import access

MAX_BATCH = 1000
"""Most results committed in one transaction."""
MAX_PENDING = 256
"""Most requests waiting for the writer; more are answered ``busy``."""

log = logging.getLogger(__name__)


def parse_results(payload: bytes) -> list[ResultIn]:
    """A ``put`` payload (JSON list of result objects) as ResultIn rows; ProtocolError if malformed."""
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"store put: payload is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ProtocolError("store put: payload must be a JSON list of results")
    rows = []
    for i, obj in enumerate(raw):
        if not isinstance(obj, dict):
            raise ProtocolError(f"store put: result {i} is not an object")
        try:
            key, workflow, agent, item = (obj[k] for k in ("key", "workflow", "agent", "item"))
            result = obj["result"]
            priority = obj.get("priority", 5)
        except KeyError as exc:
            raise ProtocolError(f"store put: result {i} has no {exc.args[0]!r}") from None
        if not all(isinstance(v, str) and v for v in (key, workflow, agent, item)):
            raise ProtocolError(f"store put: result {i}: key, workflow, agent, item must be non-empty text")
        if not isinstance(result, Mapping):
            raise ProtocolError(f"store put: result {i}: 'result' must be an object")
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise ProtocolError(f"store put: result {i}: priority must be 0..9")
        rows.append(ResultIn(key, workflow, agent, item, result, priority))
    return rows


@dataclass
class _Write:
    rows: list[ResultIn]
    future: Future[list[bool]]


@dataclass
class _Other:
    call: Callable[[Store], Any]
    future: Future[Any]


class StoreWriter:
    """The writer thread and its queue; :meth:`handle` is the socket handler."""

    def __init__(self, db_path: Path, budget: DataBudget | None = None) -> None:
        self.db_path = db_path
        self.budget = budget or DataBudget()
        self.pruned = 0
        self._queue: queue.Queue[_Write | _Other | None] = queue.Queue(MAX_PENDING)
        self._opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.batches = 0
        self.committed = 0
        self._local: access.LocalAccess | None = None

    def start(self) -> None:
        """Open the store in the writer thread; raise its error if it cannot be opened."""
        self._thread.start()
        self._opened.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then close the store."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _submit(self, job: _Write | _Other) -> Any:
        try:
            self._queue.put(job, timeout=5.0)
        except queue.Full:
            raise ServiceUnavailableError("store writer is overloaded", "retry shortly") from None
        return job.future.result()

    def _run(self) -> None:
        try:
            store = Store.open(self.db_path)
        except BaseException as exc:
            self._opened.set_exception(exc)
            return
        self._opened.set_result(None)
        next_prune = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_prune:
                    self._prune(store)
                    next_prune = time.monotonic() + self.budget.prune_interval_s
                try:
                    job = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
                except queue.Empty:
                    continue
                if job is None:
                    return
                if isinstance(job, _Other):
                    self._do_other(store, job)
                    continue
                batch = [job]
                count = len(job.rows)
                stop_after = False
                while count < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop_after = True
                        break
                    if isinstance(more, _Other):
                        self._commit(store, batch)
                        batch, count = [], 0
                        self._do_other(store, more)
                        continue
                    batch.append(more)
                    count += len(more.rows)
                self._commit(store, batch)
                if stop_after:
                    return
        finally:
            store.close()

    def _commit(self, store: Store, batch: list[_Write]) -> None:
        if not batch:
            return
        rows = [row for write in batch for row in write.rows]
        try:
            flags = store.put_results(rows)
        except BaseException as exc:
            log.error("commit of %d result(s) failed: %s", len(rows), exc)
            for write in batch:
                write.future.set_exception(exc)
            return
        self.batches += 1
        self.committed += sum(flags)
        start = 0
        for write in batch:
            write.future.set_result(flags[start : start + len(write.rows)])
            start += len(write.rows)

    def _prune(self, store: Store) -> None:
        """Prune synced results by the budget; a failure (a full disk, say) waits for the next pass."""
        try:
            report = prune_synced(store, self.budget.results)
        except FieldboxError as exc:
            log.warning("pruning synced results failed: %s", exc)
            return
        if report.total:
            self.pruned += report.total
            log.info("pruned %d synced result(s) by the /data budget: %s", report.total, report.pruned)

    @staticmethod
    def _do_other(store: Store, job: _Other) -> None:
        try:
            job.future.set_result(job.call(store))
        except BaseException as exc:
            job.future.set_exception(exc)

    def handle(self, request: ipc.Request) -> ipc.Reply:
        """Answer one request (runs in the connection's thread; the writer does the work)."""
        if request.op == "put":
            rows = parse_results(request.payload)
            flags = self._submit(_Write(rows, Future())) if rows else []
            return ipc.Reply({"stored": flags})
        if request.op == "event":
            kind = request.get("kind", str)
            detail = request.get("detail", dict, {})
            event_id = self._submit(_Other(lambda s: s.add_event(kind, detail), Future()))
            return ipc.Reply({"id": event_id})
        if request.op == "telemetry":
            batch = TelemetryBatch.from_json(request.payload)
            written = self._submit(_Other(lambda s: write_batch(s, batch), Future()))
            return ipc.Reply({"written": written})
        if request.op == "count":
            workflow = request.get("workflow", str, None)
            count = self._submit(_Other(lambda s: s.count_results(workflow), Future()))
            return ipc.Reply({"count": count})
        if request.op in access.OPS:
            reply: ipc.Reply = self._submit(
                _Other(lambda s: access.handle(self._access(s), request.op, request), Future())
            )
            return reply
        if request.op == "ping":
            return ipc.Reply(
                {
                    "path": str(self.db_path),
                    "batches": self.batches,
                    "committed": self.committed,
                    "pruned": self.pruned,
                }
            )
        raise ProtocolError(
            f"store: unknown request {request.op!r}",
            "known: put, event, telemetry, count, ping, " + ", ".join(sorted(access.OPS)),
        )

    def _access(self, store: Store) -> access.LocalAccess:
        """The sync client's operations on the writer's connection (writer thread only)."""
        if self._local is None or self._local.store is not store:
            self._local = access.LocalAccess(store)
        return self._local


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Open the store, serve until stopped, commit what is queued, close."""
    writer = StoreWriter(default_db_path(), load_budget())
    try:
        writer.start()
    except FieldboxError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open the store at {writer.db_path}: {exc}") from exc
    server = ipc.Server(socket_path(STORE_SOCKET), writer.handle, name="store")
    server.start()
    log.info("store writer serving %s on %s", writer.db_path, server.path)
    stop.wait()
    server.shutdown()
    writer.stop()
    log.info("store writer: %d result(s) committed in %d transaction(s)", writer.committed, writer.batches)
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.store``."""
    return run_service("store", main_body)


if __name__ == "__main__":
    sys.exit(main())
