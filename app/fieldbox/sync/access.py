"""How the sync client reaches the outbox and the config document: in process, or through the store writer.

On the device the sync program holds no key and opens no database: it is the
process that talks to the network, so it runs as its own user and asks the
store writer (``store.sock``) for everything it reads or changes in the store.
:class:`StoreSocketAccess` is that path; :class:`LocalAccess` does the same
operations on an open :class:`~fieldbox.store.Store`, and the store writer runs
exactly those for the requests below, in its writer thread.

Requests on ``store.sock`` (fields in the header; see :mod:`fieldbox.services.clients`):

``outbox.pending`` ``max_records`` ``max_bytes``
    -> ``records``: ``[{id, topic, priority, created_at, size}]`` in send order;
    the payload is their payloads, concatenated in that order
``outbox.delete`` ``ids`` -> ``deleted``
``outbox.drop`` ``rows`` (``[[record id, priority, reason]]``) -> ``dropped``
``outbox.totals`` -> ``records``, ``bytes``
``outbox.bounds`` ``max_rows`` ``max_bytes`` ``ttl_s`` -> ``dropped`` (``[[reason, priority, n]]``), ``bytes``
``config.outgoing`` ``node`` -> payload: the local config document (edits stamped first)
``config.incoming`` ``node``; payload: the server's document -> ``changed`` (keys)
``config.values`` ``prefix`` -> ``values``: ``{key: value}`` of the keys starting with it
(the live settings a program reads, :mod:`fieldbox.settings`)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fieldbox import ipc
from fieldbox.errors import ProtocolError
from fieldbox.sync import configdoc, configstore, outbox
from fieldbox.sync.batch import Record
from fieldbox.sync.config import OutboxBounds
from fieldbox.sync.configdoc import Document
from fieldbox.sync.hlc import Clock

if TYPE_CHECKING:
    from fieldbox.store import Store

class SyncAccess(Protocol):
    """What the sync client does to the store."""

    def pending(self, max_records: int, max_bytes: int) -> list[Record]:
        """The next records to send (:func:`fieldbox.sync.outbox.pending`)."""

    def delete(self, record_ids: Sequence[str]) -> int:
        """Delete acknowledged records."""

    def drop_unsendable(self, rows: Sequence[tuple[str, int, str]]) -> int:
        """Drop records the server can never take, counted."""

    def totals(self) -> tuple[int, int]:
        """(records, payload bytes) queued."""

    def enforce_bounds(self, bounds: OutboxBounds) -> outbox.EvictionReport:
        """Apply the eviction rule."""

    def config_outgoing(self, node: str) -> Document:
        """Stamp local edits, then the local config document."""

    def config_incoming(self, node: str, remote: Document) -> set[str]:
        """Merge the server's document; the keys that changed here."""

    def config_values(self, prefix: str) -> dict[str, Any]:
        """Current values of the keys starting with ``prefix``."""


class LocalAccess:
    """The operations on an open store (tests, tools, and the store writer's handlers)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._clocks: dict[str, Clock] = {}

    def _clock(self, node: str) -> Clock:
        clock = self._clocks.get(node)
        if clock is None:
            clock = self._clocks[node] = configstore.load_clock(self.store, node)
        return clock

    def pending(self, max_records: int, max_bytes: int) -> list[Record]:
        return [row.record for row in outbox.pending(self.store, max_records, max_bytes)]

    def delete(self, record_ids: Sequence[str]) -> int:
        return outbox.delete(self.store, record_ids)

    def drop_unsendable(self, rows: Sequence[tuple[str, int, str]]) -> int:
        return outbox.drop_unsendable(self.store, rows)

    def totals(self) -> tuple[int, int]:
        return outbox.totals(self.store)

    def enforce_bounds(self, bounds: OutboxBounds) -> outbox.EvictionReport:
        return outbox.enforce_bounds(self.store, bounds)

    def config_outgoing(self, node: str) -> Document:
        configstore.stamp_local_edits(self.store, self._clock(node))
        return configstore.load_document(self.store)

    def config_incoming(self, node: str, remote: Document) -> set[str]:
        return configstore.apply_remote(self.store, self._clock(node), remote)

    def config_values(self, prefix: str) -> dict[str, Any]:
        return configstore.values(self.store, prefix)


def _int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int:
        raise ProtocolError(f"store: reply field {key!r} is not an integer")
    return value


def _list(header: dict[str, Any], key: str) -> list[Any]:
    value = header.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"store: reply field {key!r} is not a list")
    return value


class StoreSocketAccess:
    """The same operations as requests to the store writer (the device's sync program)."""

    def __init__(self, client: ipc.Client) -> None:
        self.ipc = client

    def pending(self, max_records: int, max_bytes: int) -> list[Record]:
        reply = self.ipc.call("outbox.pending", max_records=max_records, max_bytes=max_bytes)
        records: list[Record] = []
        offset = 0
        for meta in _list(reply.header, "records"):
            try:
                size = int(meta["size"])
                payload = reply.payload[offset : offset + size]
                if size < 0 or len(payload) != size:
                    raise ProtocolError("store: outbox.pending payload is shorter than its records")
                records.append(
                    Record(str(meta["id"]), str(meta["topic"]), int(meta["priority"]),
                           float(meta["created_at"]), payload)  # fmt: skip
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ProtocolError(f"store: malformed outbox.pending record: {exc}") from None
            offset += size
        if offset != len(reply.payload):
            raise ProtocolError("store: outbox.pending payload is longer than its records")
        return records

    def delete(self, record_ids: Sequence[str]) -> int:
        return _int(self.ipc.call("outbox.delete", ids=list(record_ids)).header, "deleted")

    def drop_unsendable(self, rows: Sequence[tuple[str, int, str]]) -> int:
        return _int(self.ipc.call("outbox.drop", rows=[list(r) for r in rows]).header, "dropped")

    def totals(self) -> tuple[int, int]:
        header = self.ipc.call("outbox.totals").header
        return _int(header, "records"), _int(header, "bytes")

    def enforce_bounds(self, bounds: OutboxBounds) -> outbox.EvictionReport:
        header = self.ipc.call(
            "outbox.bounds", max_rows=bounds.max_rows, max_bytes=bounds.max_bytes, ttl_s=dict(bounds.ttl_s)
        ).header
        report = outbox.EvictionReport(dropped_bytes=_int(header, "bytes"))
        for reason, priority, count in _list(header, "dropped"):
            report.dropped[(str(reason), int(priority))] = int(count)
        return report

    def config_outgoing(self, node: str) -> Document:
        reply = self.ipc.call("config.outgoing", node=node)
        return configdoc.decode(reply.payload, "the store writer's config document")

    def config_incoming(self, node: str, remote: Document) -> set[str]:
        reply = self.ipc.call("config.incoming", configdoc.encode(remote), node=node)
        return {str(key) for key in _list(reply.header, "changed")}

    def config_values(self, prefix: str) -> dict[str, Any]:
        return config_values_reply(self.ipc.call("config.values", prefix=prefix).header)


def config_values_reply(header: dict[str, Any]) -> dict[str, Any]:
    """The ``values`` of a ``config.values`` reply, checked."""
    got = header.get("values")
    if not isinstance(got, dict) or not all(isinstance(k, str) for k in got):
        raise ProtocolError("store: config.values reply has no values map")
    return got


def handle(access: LocalAccess, op: str, request: ipc.Request) -> ipc.Reply:
    """The store writer's answer to one of this module's requests (run in its writer thread)."""
    if op == "outbox.pending":
        records = access.pending(request.get("max_records", int), request.get("max_bytes", int))
        metas = [
            {"id": r.id, "topic": r.topic, "priority": r.priority, "created_at": r.created_at,
             "size": len(r.payload)}  # fmt: skip
            for r in records
        ]
        return ipc.Reply({"records": metas}, b"".join(r.payload for r in records))
    if op == "outbox.delete":
        ids = request.get("ids", list)
        if not all(isinstance(i, str) for i in ids):
            raise ProtocolError("store outbox.delete: ids must be strings")
        return ipc.Reply({"deleted": access.delete(ids)})
    if op == "outbox.drop":
        rows = []
        for row in request.get("rows", list):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and type(row[1]) is int and isinstance(row[2], str)):  # fmt: skip
                raise ProtocolError("store outbox.drop: rows must be [record id, priority, reason]")
            rows.append((row[0], row[1], row[2]))
        return ipc.Reply({"dropped": access.drop_unsendable(rows)})
    if op == "outbox.totals":
        count, size = access.totals()
        return ipc.Reply({"records": count, "bytes": size})
    if op == "outbox.bounds":
        ttl = request.get("ttl_s", dict)
        try:
            bounds = OutboxBounds(
                max_rows=request.get("max_rows", int),
                max_bytes=request.get("max_bytes", int),
                ttl_s={str(k): float(v) for k, v in ttl.items()},
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"store outbox.bounds: {exc}") from None
        report = access.enforce_bounds(bounds)
        dropped = [[r, p, n] for (r, p), n in sorted(report.dropped.items())]
        return ipc.Reply({"dropped": dropped, "bytes": report.dropped_bytes})
    if op == "config.outgoing":
        doc = access.config_outgoing(request.get("node", str))
        return ipc.Reply({}, configdoc.encode(doc))
    if op == "config.incoming":
        remote = configdoc.decode(request.payload, "the config document sent to the store writer")
        changed = access.config_incoming(request.get("node", str), remote)
        return ipc.Reply({"changed": sorted(changed)})
    if op == "config.values":
        return ipc.Reply({"values": access.config_values(request.get("prefix", str))})
    raise ProtocolError(f"store: unknown request {op!r}")


OPS = frozenset(
    {"outbox.pending", "outbox.delete", "outbox.drop", "outbox.totals", "outbox.bounds",
     "config.outgoing", "config.incoming", "config.values"}  # fmt: skip
)
"""The store-writer requests this module defines."""
