"""What the update client remembers on ``/data/ota``, written so that a power cut loses nothing.

::

    /data/ota/state.json      floor, rejected versions, the pending trial, when it last checked
    /data/ota/progress.json   how far the slot write got (resume after a power cut)
    /data/ota/history.jsonl   one line per outcome (checked, refused, installed, committed, rolled back)
    /data/ota/metadata/       python-tuf's trusted metadata cache

``state.json`` and ``progress.json`` are replaced whole (temp file, fsync,
rename, fsync of the directory); history lines are appended and fsynced, and
the file is cut to its last :data:`HISTORY_KEEP` lines when it grows past twice
that. A torn last history line (power cut mid-append) is skipped on read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fieldbox.durable import atomic_write
from fieldbox.paths import data_dir

HISTORY_KEEP = 200


def ota_dir() -> Path:
    """``$FIELDBOX_DATA/ota``."""
    return data_dir() / "ota"


@dataclass
class Pending:
    """An installed release waiting for (or in) its trial boot."""

    version: str
    slot: str
    generation: int
    """The slot-state generation ``set-trial`` wrote: a later one on the old slot means a rollback."""
    installed_at: float
    floor: str = ""
    """The release's ``min_version``: the device's floor once it is committed."""


@dataclass
class OtaState:
    """``state.json``."""

    floor: str = "0"
    """The highest ``min_version`` of a committed release: nothing older is installed again."""
    rejected: list[str] = field(default_factory=list)
    """Versions that failed their trial here; not installed again automatically."""
    pending: Pending | None = None
    last_check: float = 0.0
    last_result: str = ""
    reported_until: float = 0.0
    """Time of the newest history entry sent to the store's event log."""

    @classmethod
    def load(cls, directory: Path | None = None) -> OtaState:
        """The saved state, or a fresh one (missing or unreadable file: start over, nothing is lost
        that the slot state on the boot partition does not also say)."""
        path = (directory or ota_dir()) / "state.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            pending = doc.get("pending")
            return cls(
                floor=str(doc.get("floor", "0")),
                rejected=[str(v) for v in doc.get("rejected", [])],
                pending=Pending(**pending) if isinstance(pending, dict) else None,
                last_check=float(doc.get("last_check", 0.0)),
                last_result=str(doc.get("last_result", "")),
                reported_until=float(doc.get("reported_until", 0.0)),
            )
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, directory: Path | None = None) -> None:
        """Replace ``state.json`` durably."""
        d = directory or ota_dir()
        d.mkdir(parents=True, exist_ok=True)
        doc = asdict(self)
        atomic_write(d / "state.json", (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class Progress:
    """How far a slot write got: chunks before ``next_chunk`` are on the slot and synced."""

    bundle_sha256: str
    slot: str
    next_chunk: int

    @staticmethod
    def path(directory: Path | None = None) -> Path:
        """``progress.json``."""
        return (directory or ota_dir()) / "progress.json"

    @classmethod
    def load(cls, directory: Path | None = None) -> Progress | None:
        """The saved progress, or None."""
        try:
            doc = json.loads(cls.path(directory).read_text(encoding="utf-8"))
            return cls(str(doc["bundle_sha256"]), str(doc["slot"]), int(doc["next_chunk"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, directory: Path | None = None) -> None:
        """Replace ``progress.json`` durably."""
        path = self.path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(asdict(self)).encode())

    @classmethod
    def clear(cls, directory: Path | None = None) -> None:
        """Forget the progress (the slot is about to be overwritten from the start, or is done)."""
        cls.path(directory).unlink(missing_ok=True)


def record(
    event: str, *, version: str | None = None, reason: str = "", directory: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """Append one outcome to ``history.jsonl`` (fsynced); return the entry."""
    d = directory or ota_dir()
    d.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"time": round(time.time(), 3), "event": event}
    if version is not None:
        entry["version"] = version
    if reason:
        entry["reason"] = reason
    entry.update(extra)
    path = d / "history.jsonl"
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.stat().st_size > 2 * HISTORY_KEEP * 200:
        entries = history(d)
        if len(entries) > HISTORY_KEEP:
            body = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[-HISTORY_KEEP:])
            atomic_write(path, body.encode(), mode=0o640)
    return entry


def history(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every readable history entry, oldest first."""
    path = (directory or ota_dir()) / "history.jsonl"
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # torn by a power cut
        if isinstance(entry, dict):
            out.append(entry)
    return out
