"""What goes into the store and what comes out: plain frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PRIORITY = 5
"""Priorities run from 0 (most urgent, synced first) to 9 (least)."""


@dataclass(frozen=True, slots=True)
class ResultIn:
    """One result to store. ``key`` makes storing idempotent: the same key twice is stored once.

    ``created_at`` (Unix seconds) defaults to the time of the write.
    """

    key: str
    workflow: str
    agent: str
    item: str
    result: Mapping[str, Any]
    priority: int = DEFAULT_PRIORITY
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class ResultRow:
    """A stored result, as read back."""

    id: int
    key: str
    workflow: str
    agent: str
    item: str
    created_at: float
    priority: int
    result: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "id": self.id,
            "key": self.key,
            "workflow": self.workflow,
            "agent": self.agent,
            "item": self.item,
            "created_at": self.created_at,
            "priority": self.priority,
            "result": self.result,
        }


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    """One monitor sample (or a down-sampled point when ``resolution`` > 0 seconds)."""

    ts: float
    metric: str
    value: float
    tags: Mapping[str, Any] | None = None
    resolution: int = 0


@dataclass(frozen=True, slots=True)
class EventRow:
    """Something that happened on the device, as read back."""

    id: int
    ts: float
    kind: str
    detail: Any


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What ``fieldbox store info`` shows."""

    path: str
    schema_version: int
    code_schema_version: int
    counts: dict[str, int]
    file_sizes: dict[str, int]
    key_provider: str
    key_warning: str | None
    cipher_version: str
    page_size: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "path": self.path,
            "schema_version": self.schema_version,
            "code_schema_version": self.code_schema_version,
            "counts": self.counts,
            "file_sizes": self.file_sizes,
            "key_provider": self.key_provider,
            "key_warning": self.key_warning,
            "cipher_version": self.cipher_version,
            "page_size": self.page_size,
        }
