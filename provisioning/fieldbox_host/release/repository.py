"""The TUF repository directory: signed metadata and release bundles, servable by any static server.

::

    repo/
      metadata/1.root.json, 2.root.json, ...   every root version (clients walk the chain)
      metadata/root.json                       a copy of the newest root (to bake into images)
      metadata/timestamp.json                  the only file a client asks for by a fixed name
      metadata/<N>.snapshot.json, <N>.targets.json
      targets/rootfs/<board>/<sha256>.fieldbox-<version>.fbb

Consistent snapshots: every file but ``timestamp.json`` is written under a
new name and never changed, and ``timestamp.json`` is replaced last, by
rename, so a client (or a CDN cache) never sees a mix of two releases.
Metadata is written with python-tuf's stable ``tuf.api.metadata`` classes.

Default lifetimes (``EXPIRY_DAYS``): timestamp 1 day, snapshot 7 days, targets
90 days, root 1 year. A timestamp that is not re-signed in time makes every
device refuse the repository (that is TUF's protection against a frozen
mirror), so run ``fieldbox release refresh`` from cron, e.g. every 6 hours.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox.durable import atomic_write
from fieldbox.errors import UpdateRefusedError
from fieldbox.ota.release import ReleaseInfo
from fieldbox_host.release.errors import ReleaseError

EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")


def utcnow() -> dt.datetime:
    """Now, in UTC, to the second (what TUF metadata records)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def expiry(role: str, now: dt.datetime, days: dict[str, int] | None = None) -> dt.datetime:
    """When metadata of ``role`` signed ``now`` expires."""
    return now + dt.timedelta(days=(days or EXPIRY_DAYS)[role])


@dataclass(frozen=True)
class Published:
    """One release target in the repository."""

    path: str
    length: int
    sha256: str
    info: ReleaseInfo


def _sign(md: Any, signers: Iterable[Any]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


class Repository:
    """A TUF repository on disk (see the module docstring for its layout)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.metadata_dir = self.directory / "metadata"
        self.targets_dir = self.directory / "targets"

    # -- reading ---------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the directory holds a repository."""
        return (self.metadata_dir / "timestamp.json").is_file() and self.root_version() > 0

    def require(self) -> None:
        """:class:`ReleaseError` unless the repository exists."""
        if not self.exists():
            raise ReleaseError(
                f"{self.directory} is not an update repository (no metadata/timestamp.json)",
                "create it with `fieldbox keys init --repo DIR`",
            )

    def root_version(self) -> int:
        """The newest root version on disk (0 if none)."""
        if not self.metadata_dir.is_dir():
            return 0
        versions = [int(m.group(1)) for p in self.metadata_dir.iterdir() if (m := ROOT_FILE.match(p.name))]
        return max(versions, default=0)

    def _read(self, name: str) -> Any:
        from tuf.api.exceptions import RepositoryError
        from tuf.api.metadata import Metadata

        path = self.metadata_dir / name
        try:
            return Metadata.from_file(str(path))
        except FileNotFoundError:
            raise ReleaseError(f"{path} is missing", "the repository is incomplete; restore it") from None
        except (OSError, ValueError, RepositoryError) as exc:
            raise ReleaseError(f"{path} is not readable TUF metadata: {exc}") from None

    def load(self, role: str) -> Any:
        """The current ``Metadata`` of a top-level role."""
        if role == "root":
            return self._read(f"{self.root_version()}.root.json")
        timestamp = self._read("timestamp.json")
        if role == "timestamp":
            return timestamp
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
        if role == "snapshot":
            return snapshot
        if role == "targets":
            return self._read(f"{snapshot.signed.meta['targets.json'].version}.targets.json")
        raise ReleaseError(f"unknown role {role!r}")

    def trusted_root(self) -> bytes:
        """The newest root metadata's bytes: what ``fieldbox build --repo`` bakes into an image."""
        self.require()
        return (self.metadata_dir / f"{self.root_version()}.root.json").read_bytes()

    def releases(self) -> list[Published]:
        """Every release target, oldest version first."""
        from fieldbox.ota.version import parse_version

        out = []
        for path, target in self.load("targets").signed.targets.items():
            try:
                info = ReleaseInfo.from_custom(path, target.custom)
            except UpdateRefusedError:
                continue  # a target that is not one of our releases
            out.append(Published(path, target.length, target.hashes.get("sha256", ""), info))
        return sorted(out, key=lambda p: (p.info.board, parse_version(p.info.version)))

    def target_file(self, path: str, sha256: str) -> Path:
        """Where a target's bytes lie (consistent snapshots: ``<sha256>.<name>``)."""
        parent, _, name = path.rpartition("/")
        return self.targets_dir / parent / f"{sha256}.{name}"

    # -- writing ---------------------------------------------------------------------
    def _write(self, name: str, md: Any) -> None:
        from tuf.api.serialization.json import JSONSerializer

        atomic_write(self.metadata_dir / name, md.to_bytes(JSONSerializer(compact=False)))

    def _write_root(self, md: Any) -> None:
        self._write(f"{md.signed.version}.root.json", md)
        self._write("root.json", md)

    def create(self, keys: dict[str, Any], signers: dict[str, Any], now: dt.datetime | None = None) -> None:
        """Version 1 of every role. ``keys``: role -> public key; ``signers``: role -> signer (all four)."""
        from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

        if self.root_version() or (self.metadata_dir / "timestamp.json").exists():
            raise ReleaseError(f"{self.directory} already holds a repository", "use another --repo")
        now = now or utcnow()
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        root = Root(expires=expiry("root", now), consistent_snapshot=True)
        for role, key in keys.items():
            root.add_key(key, role)
        root_md = Metadata(root)
        _sign(root_md, [signers["root"]])
        self._write_root(root_md)
        targets = Metadata(Targets(version=1, expires=expiry("targets", now)))
        _sign(targets, [signers["targets"]])
        self._write("1.targets.json", targets)
        snapshot = Metadata(
            Snapshot(version=1, expires=expiry("snapshot", now), meta={"targets.json": MetaFile(version=1)})
        )
        _sign(snapshot, [signers["snapshot"]])
        self._write("1.snapshot.json", snapshot)
        timestamp = Metadata(
            Timestamp(version=1, expires=expiry("timestamp", now), snapshot_meta=MetaFile(version=1))
        )
        _sign(timestamp, [signers["timestamp"]])
        self._write("timestamp.json", timestamp)

    def _commit(
        self, signers: dict[str, Any], now: dt.datetime, targets: Any = None, snapshot: bool = False
    ) -> None:
        """Sign and write new ``targets`` (if given), then a new snapshot (if targets changed or
        ``snapshot``), then a new timestamp: in that order, so ``timestamp.json``, replaced last,
        only ever names files that are already there."""
        from tuf.api.metadata import MetaFile

        snap = self.load("snapshot")
        if targets is not None:
            targets.signed.version += 1
            targets.signed.expires = expiry("targets", now)
            _sign(targets, [signers["targets"]])
            self._write(f"{targets.signed.version}.targets.json", targets)
            snap.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
            snapshot = True
        if snapshot:
            snap.signed.version += 1
            snap.signed.expires = expiry("snapshot", now)
            _sign(snap, [signers["snapshot"]])
            self._write(f"{snap.signed.version}.snapshot.json", snap)
        timestamp = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snap.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.expires = expiry("timestamp", now)
        _sign(timestamp, [signers["timestamp"]])
        self._write("timestamp.json", timestamp)

    def add_target(
        self, published: Published, signers: dict[str, Any], now: dt.datetime | None = None
    ) -> None:
        """Publish one release target whose bytes are already at :meth:`target_file`."""
        from tuf.api.metadata import TargetFile

        self.require()
        targets = self.load("targets")
        if published.path in targets.signed.targets:
            raise ReleaseError(
                f"{published.path} is already published",
                "a release is never replaced: " "build a new version",
            )
        targets.signed.targets[published.path] = TargetFile(
            published.length,
            {"sha256": published.sha256},
            published.path,
            unrecognized_fields={"custom": published.info.to_custom()},
        )
        self._commit(signers, now or utcnow(), targets=targets)

    def due(self, role: str, now: dt.datetime) -> bool:
        """Whether ``role``'s metadata has less than half of its lifetime left."""
        left: dt.timedelta = self.load(role).signed.expires - now
        return left < dt.timedelta(days=EXPIRY_DAYS[role]) / 2

    def refresh(
        self,
        signers: dict[str, Any],
        now: dt.datetime | None = None,
        *,
        snapshot: bool = False,
        targets: bool = False,
    ) -> list[str]:
        """Re-sign the timestamp, and snapshot/targets when asked or past half their lifetime.

        Returns the roles re-signed. Targets are re-signed only when a targets signer is given.
        """
        self.require()
        now = now or utcnow()
        redo_targets = "targets" in signers and (targets or self.due("targets", now))
        redo_snapshot = redo_targets or snapshot or self.due("snapshot", now)
        self._commit(
            signers, now, targets=self.load("targets") if redo_targets else None, snapshot=redo_snapshot
        )
        return (["targets"] if redo_targets else []) + (["snapshot"] if redo_snapshot else []) + ["timestamp"]

    def rotate(
        self,
        role: str,
        new_key: Any,
        root_signers: list[Any],
        signers: dict[str, Any],
        now: dt.datetime | None = None,
    ) -> int:
        """Replace ``role``'s key with ``new_key`` in a new root version signed by ``root_signers``
        (for a root rotation: the old and the new root key), then re-sign what that role signs
        (and the roles above it) with ``signers``. Returns the new root version."""
        self.require()
        now = now or utcnow()
        root = self.load("root")
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(new_key, role)
        root.signed.version += 1
        root.signed.expires = expiry("root", now)
        _sign(root, root_signers)
        self._write_root(root)
        if role == "targets":
            self._commit(signers, now, targets=self.load("targets"))
        elif role in ("snapshot", "timestamp"):
            self._commit(signers, now, snapshot=role == "snapshot")
        return int(root.signed.version)

    def expiries(self) -> dict[str, tuple[int, dt.datetime]]:
        """role -> (version, expires) of the current metadata."""
        out = {}
        for role in ("root", "targets", "snapshot", "timestamp"):
            md = self.load(role)
            out[role] = (int(md.signed.version), md.signed.expires)
        return out
