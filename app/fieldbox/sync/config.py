"""The sync program's settings (``/etc/fieldbox/sync.toml``), one typed schema.

Priorities follow the store: 0 is the most urgent (sent first, evicted last),
9 the least. See :mod:`fieldbox.sync.outbox` for the eviction rule these bounds
drive.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fieldbox.errors import ConfigError
from fieldbox.paths import data_dir, etc_dir
from fieldbox.schema import doc_field, load, positive, unit_interval

DAY = 86400.0


def _url(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        return "must start with http:// or https:// (or be empty to disable sending)"
    return None


def _ttl_keys(value: dict[str, float]) -> str | None:
    for key, seconds in value.items():
        if key not in {str(p) for p in range(10)}:
            return f"keys are priorities '0' to '9', got {key!r}"
        if seconds <= 0:
            return f"TTL of priority {key} must be greater than 0"
    return None


def _default_ttl() -> dict[str, float]:
    # Urgent results wait a month for a link; telemetry (8) a week; debug (9) a day.
    ttl = {str(p): 30 * DAY for p in range(0, 5)}
    ttl.update({"5": 14 * DAY, "6": 14 * DAY, "7": 14 * DAY, "8": 7 * DAY, "9": 1 * DAY})
    return ttl


@dataclass(frozen=True)
class BackoffSettings:
    """Exponential backoff with full jitter after a failed send."""

    base_s: float = doc_field("first retry waits up to this long", default=1.0, check=positive)
    cap_s: float = doc_field("no wait is longer than this", default=300.0, check=positive)
    max_retry_after_s: float = doc_field(
        "a server's Retry-After is honoured up to this long", default=3600.0, check=positive
    )


@dataclass(frozen=True)
class OutboxBounds:
    """How much the outbox may hold while the link is down; past it, the eviction rule applies."""

    max_rows: int = doc_field("records kept at most", default=200_000, check=positive)
    max_bytes: int = doc_field("payload bytes kept at most", default=256 * 1024 * 1024, check=positive)
    ttl_s: dict[str, float] = doc_field(
        "per priority ('0'..'9'): a record older than this is dropped (and counted)",
        default_factory=_default_ttl,
        check=_ttl_keys,
    )
    max_disk_fraction: float = doc_field(
        "payload bytes kept at most as a share of the data partition (the lower of this and "
        "max_bytes applies; the store holds each queued result about twice, see budget.toml)",
        default=0.2,
        check=unit_interval,
    )

    def for_disk(self, total_bytes: int) -> OutboxBounds:
        """These bounds with ``max_bytes`` lowered to ``max_disk_fraction`` of a ``total_bytes`` partition."""
        cap = max(1, int(self.max_disk_fraction * total_bytes))
        return dataclasses.replace(self, max_bytes=min(self.max_bytes, cap))


@dataclass(frozen=True)
class TLSSettings:
    """Mutual TLS: the device's certificate and key, and the one CA the server's certificate must chain to."""

    client_cert: Path | None = doc_field("device certificate (PEM)", default=None)
    client_key: Path | None = doc_field("device private key (PEM)", default=None)
    server_ca: Path | None = doc_field(
        "pinned CA (PEM) for the server's certificate; the system CAs are not used when set", default=None
    )


@dataclass(frozen=True)
class SyncConfig:
    """``sync.toml``."""

    server_url: str = doc_field(
        "ingest server base URL, e.g. https://ingest.example.net; empty: keep everything in the outbox",
        default="",
        check=_url,
    )
    device_id: str = doc_field(
        "this device's id; empty: the file $FIELDBOX_DATA/device_id (written at provisioning), "
        "else the host name",
        default="",
    )
    batch_max_records: int = doc_field("records per batch at most", default=1000, check=positive)
    batch_max_bytes: int = doc_field(
        "uncompressed bytes per batch at most (one larger record still goes alone)",
        default=1024 * 1024,
        check=positive,
    )
    codec: Literal["auto", "zlib", "zstd"] = doc_field(
        "batch compression; auto = zstd where python3-zstandard is installed", default="auto"
    )
    idle_s: float = doc_field("how often to look at an empty outbox", default=5.0, check=positive)
    timeout_s: float = doc_field("HTTP connect/read timeout", default=30.0, check=positive)
    config_interval_s: float = doc_field(
        "how often to exchange the config document with the server", default=300.0, check=positive
    )
    backoff: BackoffSettings = field(default_factory=BackoffSettings, metadata={"doc": "retry waits"})
    outbox: OutboxBounds = field(default_factory=OutboxBounds, metadata={"doc": "outbox bounds"})
    tls: TLSSettings = field(default_factory=TLSSettings, metadata={"doc": "mutual TLS"})

    def ttl_for(self, priority: int) -> float:
        """Seconds a record of ``priority`` may wait."""
        return self.outbox.ttl_s.get(str(priority), 30 * DAY)

    def resolved_device_id(self) -> str:
        """The configured id, else the device's own (``$FIELDBOX_DATA/device_id``: on the device
        ``fieldbox-init`` makes it at first boot from the board's serial number or 64 random
        bits, so no two devices share one), else the host name (a developer's host)."""
        if self.device_id:
            return self.device_id
        path = data_dir() / "device_id"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        return text or socket.gethostname()


def default_path() -> Path:
    """``$FIELDBOX_ETC/sync.toml``."""
    return etc_dir() / "sync.toml"


def load_config(path: Path | None = None) -> SyncConfig:
    """Read ``sync.toml``; a missing file means all defaults (sending disabled)."""
    path = default_path() if path is None else path
    if not path.exists():
        return SyncConfig()
    return load(SyncConfig, path)
