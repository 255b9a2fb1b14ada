"""Config documents that both the device and the server edit, and the rule that merges them.

A document is a map from key to :class:`Entry` (a JSON value, or a tombstone
for a deleted key), each stamped with the :class:`~fieldbox.sync.hlc.Timestamp`
of the edit that wrote it.

**The conflict rule: per-key last-writer-wins, ordered by hybrid logical clock.**
For every key, the entry with the greater timestamp ``(wall_ms, counter, node)``
wins, on both sides, whatever order the merges happen in. Consequences:

* Edits to *different* keys never conflict: both survive.
* Sequential edits (one side saw the other's before editing) keep the later
  one, even when the later editor's wall clock is behind, because its HLC has
  already moved past what it saw.
* Concurrent edits of one key (neither saw the other): the later wall time wins;
  a clock running ahead wins here, up to the ``max_ahead_ms`` a receiver accepts
  (default one day; further ahead is refused with ClockSkewError).
* Exactly equal wall time and counter: the greater node id wins (``"server"``
  beats ``"dev-1"``, ``"dev-b"`` beats ``"dev-a"``); it is arbitrary but the same
  everywhere, so every copy converges.
* A delete is a tombstone entry and competes by the same rule: a later delete
  beats an earlier set, and a later set resurrects a deleted key. Tombstones are
  kept (they are a few bytes), so a delete cannot be undone by a stale copy.

``merge`` is commutative, associative and idempotent (a join-semilattice), so
retries and re-deliveries are harmless — the same property the result sync has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fieldbox.errors import SyncError
from fieldbox.sync.hlc import Timestamp

MAX_KEYS = 1000
MAX_VALUE_BYTES = 64 * 1024
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Entry:
    """One key's state: ``value`` (any JSON) written at ``hlc``, or a tombstone if ``deleted``."""

    value: Any
    hlc: Timestamp
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The wire form of one entry."""
        return {"value": None if self.deleted else self.value, "hlc": str(self.hlc), "deleted": self.deleted}


Document = dict[str, Entry]


def check_key(key: object) -> str:
    """A config key: 1-128 characters of letters, digits, ``_ . -``, not starting with ``.`` or ``-``."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise SyncError(f"config key {str(key)[:80]!r} is not 1-128 characters of [A-Za-z0-9_.-]")
    return key


def value_bytes(value: Any) -> bytes:
    """Canonical JSON of a value (sorted keys, compact), checked against the size limit."""
    try:
        data = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SyncError(f"config value is not JSON: {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise SyncError(f"config value of {len(data)} bytes exceeds the limit of {MAX_VALUE_BYTES}")
    return data


def json_value(text: str | bytes) -> Any:
    """A value back from its canonical JSON (as stored in a database column)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SyncError(f"stored config value is not JSON: {exc}") from None


def wins(a: Entry, b: Entry) -> bool:
    """Whether ``a`` beats ``b`` under the rule; a deterministic order even for equal timestamps."""
    if a.hlc != b.hlc:
        return a.hlc > b.hlc
    # The same timestamp twice is the same edit; if a buggy peer sent two different
    # entries with one timestamp, still pick the same one everywhere.
    return _tiebreak(a) > _tiebreak(b)


def _tiebreak(e: Entry) -> tuple[bool, bytes]:
    return (e.deleted, value_bytes(None if e.deleted else e.value))


def merge(local: Mapping[str, Entry], remote: Mapping[str, Entry]) -> tuple[Document, set[str]]:
    """Merge ``remote`` into ``local``; return the merged document and the keys whose entry changed."""
    merged: Document = dict(local)
    changed: set[str] = set()
    for key, theirs in remote.items():
        ours = merged.get(key)
        if ours is None or wins(theirs, ours):
            if ours != theirs:
                changed.add(key)
            merged[key] = theirs
    return merged, changed


def live_values(doc: Mapping[str, Entry]) -> dict[str, Any]:
    """The document as plain config: values of keys that are not deleted."""
    return {k: e.value for k, e in sorted(doc.items()) if not e.deleted}


def encode(doc: Mapping[str, Entry]) -> bytes:
    """The wire form: ``{"entries": {key: {"value", "hlc", "deleted"}}}`` as UTF-8 JSON."""
    return json.dumps(
        {"entries": {k: e.to_json() for k, e in sorted(doc.items())}}, separators=(",", ":"), allow_nan=False
    ).encode()


def decode(data: bytes, source: str = "config document") -> Document:
    """Parse and validate the wire form; raises SyncError naming the bad key."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SyncError(f"{source} of {len(data)} bytes exceeds the limit of {MAX_DOCUMENT_BYTES}")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SyncError(f"{source} is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"entries"} or not isinstance(raw["entries"], dict):
        raise SyncError(f"{source} must be an object {{\"entries\": {{...}}}}")
    entries = raw["entries"]
    if len(entries) > MAX_KEYS:
        raise SyncError(f"{source} has {len(entries)} keys; the limit is {MAX_KEYS}")
    doc: Document = {}
    for key, item in entries.items():
        check_key(key)
        if not isinstance(item, dict) or set(item) != {"value", "hlc", "deleted"}:
            raise SyncError(f"{source}: {key}: expected an object with value, hlc, deleted")
        deleted = item["deleted"]
        if not isinstance(deleted, bool):
            raise SyncError(f"{source}: {key}: 'deleted' must be true or false")
        try:
            hlc = Timestamp.parse(item["hlc"])
        except SyncError as exc:
            raise SyncError(f"{source}: {key}: {exc.message}") from None
        value = None if deleted else item["value"]
        value_bytes(value)
        doc[key] = Entry(value=value, hlc=hlc, deleted=deleted)
    return doc
