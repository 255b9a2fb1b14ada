"""The update client's settings (``ota.toml``), one typed schema.

Read from ``$FIELDBOX_DATA/config/ota.toml`` when it exists (written at
provisioning), else ``$FIELDBOX_ETC/ota.toml`` (baked into the image). The
trusted root metadata is never a setting: it is the file the image build
baked into the read-only root slot (``$FIELDBOX_ETC/update/root.json``), so a
device trusts only its own fleet's repository from its first boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fieldbox.paths import data_dir, etc_dir
from fieldbox.schema import doc_field, load, positive


def _url(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        return "must start with http:// or https:// (or be empty: no updates)"
    return None


@dataclass(frozen=True)
class OtaConfig:
    """``ota.toml``."""

    repository_url: str = doc_field(
        "the TUF repository (its metadata/ and targets/ below this URL); empty: never check",
        default="",
        check=_url,
    )
    interval_s: float = doc_field("seconds between checks", default=3600.0, check=positive)
    first_check_s: float = doc_field(
        "seconds after boot before the first check", default=60.0, check=positive
    )
    auto_install: bool = doc_field("install a newer release as soon as a check finds one", default=True)
    reboot: Literal["now", "later"] = doc_field(
        "after an automatic install: reboot into the new slot at once, or wait for the next reboot",
        default="now",
    )
    timeout_s: float = doc_field("HTTP connect and read timeout", default=30.0, check=positive)
    retries: int = doc_field(
        "a broken download resumes this many times in a row (Range request from the first missing chunk)",
        default=8,
        check=positive,
    )
    health_timeout_s: float = doc_field(
        "a trial boot must pass its health check within this long, or it rolls back",
        default=600.0,
        check=positive,
    )
    trial_deadline_s: float = doc_field(
        "a trial boot that is neither committed nor rolled back this long after boot stops feeding the "
        "hardware watchdog: the board resets and U-Boot counts the trial (fieldbox-watchdog); keep it "
        "above health_timeout_s plus the boot",
        default=900.0,
        check=positive,
    )
    health_stable_s: float = doc_field(
        "every supervisord program must have been RUNNING this long without a restart",
        default=15.0,
        check=positive,
    )
    server_ca: Path | None = doc_field(
        "pinned CA (PEM) for an https repository; the system CAs are not used when set", default=None
    )
    max_bundle_bytes: int = doc_field(
        "refuse a release whose metadata claims a larger bundle", default=4 * 1024**3, check=positive
    )


def config_path() -> Path:
    """The file the settings come from (the provisioned one wins over the image's)."""
    provisioned = data_dir() / "config/ota.toml"
    return provisioned if provisioned.is_file() else etc_dir() / "ota.toml"


def load_config(path: Path | None = None) -> OtaConfig:
    """Read ``ota.toml``; a missing file means all defaults (no repository: no checks)."""
    path = path or config_path()
    if not path.is_file():
        return OtaConfig()
    return load(OtaConfig, path)


def trusted_root_path() -> Path:
    """The root metadata baked into the image."""
    return etc_dir() / "update/root.json"
