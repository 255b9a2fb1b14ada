"""The monitor's settings (``$FIELDBOX_ETC/monitor.toml``, optional), one typed schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fieldbox.monitor.telemetry import DEFAULT_TIERS, Tier
from fieldbox.paths import etc_dir
from fieldbox.schema import doc_field, load, positive


def _priority(value: int) -> str | None:
    return None if 0 <= value <= 9 else "must be a priority from 0 to 9"


@dataclass(frozen=True)
class MonitorConfig:
    """``monitor.toml``."""

    interval_s: float = doc_field("seconds between samples", default=10.0, check=positive)
    flush_s: float = doc_field(
        "seconds between writes to the store (one transaction each)", default=60.0, check=positive
    )
    raw_keep_s: float = doc_field(
        "raw samples are kept this long", default=DEFAULT_TIERS[0].keep_s, check=positive
    )
    minute_keep_s: float = doc_field(
        "1-minute averages are kept this long", default=DEFAULT_TIERS[1].keep_s, check=positive
    )
    ten_minute_keep_s: float = doc_field(
        "10-minute averages are kept this long", default=DEFAULT_TIERS[2].keep_s, check=positive
    )
    max_rows: int = doc_field(
        "telemetry rows at most (oldest, coarsest dropped first)", default=200_000, check=positive
    )
    max_events: int = doc_field("event rows at most (oldest dropped first)", default=10_000, check=positive)
    sync_priority: int = doc_field("outbox priority of telemetry (0 urgent .. 9)", default=8, check=_priority)
    sync: bool = doc_field("queue telemetry and events for sync", default=True)

    def tiers(self) -> tuple[Tier, ...]:
        """The down-sampling tiers these settings describe."""
        return (Tier(0, self.raw_keep_s), Tier(60, self.minute_keep_s), Tier(600, self.ten_minute_keep_s))


def load_config(path: Path | None = None) -> MonitorConfig:
    """Read ``monitor.toml``; a missing file means the defaults."""
    path = etc_dir() / "monitor.toml" if path is None else path
    if not path.exists():
        return MonitorConfig()
    return load(MonitorConfig, path)
