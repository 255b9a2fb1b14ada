"""Checking for a release: python-tuf's ``Updater`` verifies the metadata, we judge the release.

TUF (``tuf.ngclient``) gives us signed, fresh, consistent metadata: a tampered
or wrongly signed file, an expired timestamp (a frozen mirror), an older
version than the device already trusts (rollback), or a snapshot and targets
from different releases (mix-and-match) all fail in ``refresh()``, and each
becomes one :class:`~fieldbox.errors.UpdateRefusedError` line naming the check.
On top of that, :func:`judge` applies the device's own rules, independent of
TUF's: the board, no downgrade below the installed version or the fleet floor,
``compatible_from``, the size limit, and versions that already failed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fieldbox.errors import ConfigError, UpdateError, UpdateRefusedError
from fieldbox.ota.config import OtaConfig, trusted_root_path
from fieldbox.ota.http import Http, TufFetcher
from fieldbox.ota.release import ReleaseInfo, board_prefix
from fieldbox.ota.state import ota_dir
from fieldbox.ota.version import is_version, newer, parse_version
from fieldbox.paths import etc_dir


@dataclass(frozen=True)
class Device:
    """What the running system is, for judging a release."""

    board: str
    version: str
    floor: str = "0"
    rejected: frozenset[str] = frozenset()


def build_info(path: Path | None = None) -> dict[str, str]:
    """``/etc/fieldbox/build-info`` (``KEY=value`` lines written by the image build)."""
    out: dict[str, str] = {}
    try:
        text = (path or etc_dir() / "build-info").read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def running_device(floor: str = "0", rejected: frozenset[str] = frozenset()) -> Device:
    """The running slot's board and version (environment first, then the image's build-info)."""
    info = build_info()
    board = os.environ.get("FIELDBOX_BOARD") or info.get("FIELDBOX_BOARD", "")
    version = os.environ.get("FIELDBOX_VERSION") or info.get("FIELDBOX_VERSION", "")
    if not board or not is_version(version):
        raise ConfigError(
            "this system does not say its board and version (FIELDBOX_BOARD, FIELDBOX_VERSION)",
            "updates need an image built by `fieldbox build`",
        )
    return Device(board, version, floor, rejected)


@dataclass(frozen=True)
class Candidate:
    """A release that passed every check and can be installed."""

    path: str
    length: int
    sha256: str
    info: ReleaseInfo
    url: str
    """Where the bundle's bytes are (consistent snapshots: ``<sha256>.<name>``)."""


@dataclass(frozen=True)
class CheckResult:
    """What a check found."""

    candidate: Candidate | None
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(target path, reason) of every newer release that was refused."""
    newest: str | None = None
    """The newest version published for this board, acceptable or not."""


def judge(device: Device, info: ReleaseInfo, length: int, cfg: OtaConfig) -> str | None:
    """Why this release must not be installed on ``device``, or None when it may."""
    v = info.version
    if info.board != device.board:
        return f"release {v} is for board {info.board}, this device is {device.board}"
    if not newer(v, device.version):
        return f"release {v} is not newer than the installed {device.version} (downgrade refused)"
    if newer(device.floor, v):
        return f"release {v} is below this fleet's minimum version {device.floor} (downgrade refused)"
    if info.compatible_from is not None and newer(info.compatible_from, device.version):
        return (
            f"release {v} installs only over {info.compatible_from} or later, this device runs "
            f"{device.version}: publish an intermediate release"
        )
    if length > cfg.max_bundle_bytes:
        return f"release {v}: bundle of {length} bytes exceeds max_bundle_bytes ({cfg.max_bundle_bytes})"
    if info.manifest_length >= length:
        return f"release {v}: its manifest ({info.manifest_length} bytes) is not shorter than the bundle"
    from fieldbox.store.migrations import LATEST

    if info.store_min_reader > LATEST:
        return (
            f"release {v} changes the encrypted store so that this release (schema {LATEST}) could not "
            f"open it after a rollback (needs schema {info.store_min_reader}): not installed"
        )
    if v in device.rejected:
        return f"release {v} already failed its trial boot on this device (waiting for a newer release)"
    return None


def _tuf_reason(exc: Exception) -> str:
    from tuf.api import exceptions as e

    name = type(exc).__name__
    if isinstance(exc, e.ExpiredMetadataError):
        return (
            f"expired metadata ({exc}): the repository was not refreshed in time (freeze attack?), or "
            "this device's clock is wrong"
        )
    if isinstance(exc, e.BadVersionNumberError):
        return f"metadata older than this device already trusts (rollback attack?): {exc}"
    if isinstance(exc, e.UnsignedMetadataError):
        return f"metadata not signed by the trusted keys: {exc}"
    if isinstance(exc, e.LengthOrHashMismatchError):
        return f"metadata does not match what the signed snapshot or timestamp names (mix-and-match?): {exc}"
    return f"{name}: {exc}"


class Checker:
    """One check against the repository (an ``Updater`` refreshes once per life, so one per check)."""

    def __init__(
        self,
        cfg: OtaConfig,
        http: Http | None = None,
        metadata_dir: Path | None = None,
        trusted_root: Path | None = None,
    ) -> None:
        if not cfg.repository_url:
            raise ConfigError(
                "no update repository is configured (ota.toml: repository_url)",
                "set repository_url, e.g. at provisioning",
            )
        self.cfg = cfg
        self.base = cfg.repository_url.rstrip("/") + "/"
        self.http = http or Http(cfg.timeout_s, cfg.server_ca, https_only=cfg.server_ca is not None)
        self.metadata_dir = metadata_dir or ota_dir() / "metadata"
        root_file = trusted_root or trusted_root_path()
        try:
            self.bootstrap = root_file.read_bytes()
        except OSError:
            raise ConfigError(
                f"{root_file}: this image trusts no update repository",
                "build the image with `fieldbox build --repo DIR`",
            ) from None
        self._updater: object | None = None

    def updater(self) -> object:
        """The refreshed ``tuf.ngclient.Updater``."""
        if self._updater is not None:
            return self._updater
        from tuf.api import exceptions as e
        from tuf.ngclient import Updater, UpdaterConfig

        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.base + "metadata/",
                None,
                self.base + "targets/",
                fetcher=TufFetcher(self.http),
                config=UpdaterConfig(app_user_agent="fieldbox-ota"),
                bootstrap=self.bootstrap,
            )
            updater.refresh()
        except e.DownloadError as exc:
            raise UpdateError(
                f"cannot fetch update metadata from {self.base}: {exc}",
                "check the network and repository_url; the next check retries",
            ) from None
        except e.RepositoryError as exc:
            raise UpdateRefusedError(f"repository metadata refused: {_tuf_reason(exc)}") from None
        except ValueError as exc:
            raise UpdateRefusedError(f"the trusted root metadata is unusable: {exc}") from None
        self._updater = updater
        return updater

    def _consistent(self) -> bool:
        from tuf.api.metadata import Metadata, Root

        root = Metadata[Root].from_file(str(self.metadata_dir / "root.json"))
        return bool(root.signed.consistent_snapshot)

    def _trusted_target_paths(self) -> list[str]:
        """Target paths of the (just verified and persisted) top-level targets metadata."""
        from tuf.api.metadata import Metadata, Targets

        targets = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json"))
        return list(targets.signed.targets)

    def check(self, device: Device) -> CheckResult:
        """Refresh the metadata and pick the newest release this device may install."""
        from tuf.api import exceptions as e

        updater = self.updater()
        prefix = board_prefix(device.board)
        found: list[tuple[ReleaseInfo, int, str, str]] = []
        refused: list[tuple[str, str]] = []
        for path in self._trusted_target_paths():
            if not path.startswith(prefix):
                continue
            try:
                target = updater.get_targetinfo(path)  # type: ignore[attr-defined]
            except e.RepositoryError as exc:
                refused.append((path, f"metadata refused: {_tuf_reason(exc)}"))
                continue
            if target is None:
                continue
            try:
                info = ReleaseInfo.from_custom(path, target.custom)
            except UpdateRefusedError as exc:
                refused.append((path, exc.message))
                continue
            sha = target.hashes.get("sha256", "")
            found.append((info, int(target.length), sha, path))
        found.sort(key=lambda f: parse_version(f[0].version), reverse=True)
        newest = found[0][0].version if found else None
        candidate = None
        for info, length, sha, path in found:
            reason = judge(device, info, length, self.cfg)
            if not newer(info.version, device.version):
                if newer(device.version, info.version) and info.version == newest:
                    refused.append((path, reason or "downgrade"))  # the repository went backwards
                break  # installed or older: nothing further down is an update
            if reason is None:
                if not sha:
                    refused.append((path, "target metadata has no sha256"))
                    continue
                parent, _, name = path.rpartition("/")
                url = self.base + "targets/" + (f"{parent}/{sha}.{name}" if self._consistent() else path)
                candidate = Candidate(path, length, sha, info, url)
                break
            refused.append((path, reason))
        return CheckResult(candidate, refused, newest)
