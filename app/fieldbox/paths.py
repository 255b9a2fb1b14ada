"""Where things live on the device, overridable by environment for the host.

The same supervisord program files run on the appliance and on a developer's
host (``fieldbox dev up``); only these environment variables differ:

=================  ===============================  =======================================
variable           device default                   holds
=================  ===============================  =======================================
FIELDBOX_DATA      /data                            the writable data partition: store, keys,
                                                    inbox, logs
FIELDBOX_ETC       /etc/fieldbox                    declarative config: agents/, workflows/
FIELDBOX_RUN       /run/fieldbox                    sockets and pid files (tmpfs)
FIELDBOX_MODELS    /usr/share/fieldbox/models       model files (os.pathsep-separated list)
=================  ===============================  =======================================
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


def data_dir() -> Path:
    """The writable, persistent data directory (the data partition on a device)."""
    return _env_path("FIELDBOX_DATA", "/data")


def etc_dir() -> Path:
    """Declarative configuration: ``agents/*.toml``, ``workflows/*.toml``."""
    return _env_path("FIELDBOX_ETC", "/etc/fieldbox")


def run_dir() -> Path:
    """Runtime sockets; a tmpfs on the device."""
    return _env_path("FIELDBOX_RUN", "/run/fieldbox")


def model_dirs() -> list[Path]:
    """Directories searched for a manifest's model file when its path is relative."""
    raw = os.environ.get("FIELDBOX_MODELS") or "/usr/share/fieldbox/models"
    return [Path(p) for p in raw.split(os.pathsep) if p]
