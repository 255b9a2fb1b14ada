"""What a release says about itself in its TUF target: the one definition for host and device.

A root-slot release is the TUF target ``rootfs/<board>/fieldbox-<version>.fbb``.
Its ``length`` and ``hashes`` cover the whole bundle; its ``custom`` metadata
(signed with the rest of the targets role) says::

    {"fieldbox": {"kind": "rootfs", "version": "0.2.0", "board": "qemu-arm64",
                  "compatible_from": "0.1.0", "min_version": "0.1.0",
                  "manifest_length": 609209, "manifest_sha256": "..."}}

- ``compatible_from``: the oldest installed version that may install this
  release directly (older devices must take an intermediate release first).
- ``min_version``: the fleet's floor. A device remembers the highest floor it
  has seen and never installs anything below it, whatever later metadata says
  (anti-downgrade that does not depend on TUF's own rollback checks).
- ``manifest_*``: the bundle's manifest (header and chunk index), so a device
  trusts the manifest before it downloads a single chunk.
- ``store_min_reader``: the oldest store schema that can still read the store
  after this release migrated it (:data:`fieldbox.store.migrations.MIN_READER`);
  a device refuses a release it could not roll back from.

Keys stay ASCII (other TUF clients canonicalise non-ASCII keys differently).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fieldbox.errors import UpdateRefusedError
from fieldbox.ota.bundle import KIND_ROOTFS, SUFFIX
from fieldbox.ota.version import is_version

ROOTFS_DIR = "rootfs"
_BOARD = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def valid_board(name: str) -> bool:
    """Board names: lower-case letters, digits and dashes, at most 32."""
    return bool(_BOARD.match(name))


def target_path(board: str, version: str) -> str:
    """The TUF target path of a root-slot release."""
    return f"{ROOTFS_DIR}/{board}/fieldbox-{version}{SUFFIX}"


def board_prefix(board: str) -> str:
    """Every release for ``board`` has a target path starting with this."""
    return f"{ROOTFS_DIR}/{board}/"


@dataclass(frozen=True)
class ReleaseInfo:
    """The ``custom.fieldbox`` object of a release target."""

    version: str
    board: str
    manifest_length: int
    manifest_sha256: str
    compatible_from: str | None = None
    min_version: str | None = None
    store_min_reader: int = 1
    kind: str = KIND_ROOTFS

    def to_custom(self) -> dict[str, Any]:
        """The target's ``custom`` metadata."""
        body: dict[str, Any] = {
            "kind": self.kind,
            "version": self.version,
            "board": self.board,
            "manifest_length": self.manifest_length,
            "manifest_sha256": self.manifest_sha256,
            "store_min_reader": self.store_min_reader,
        }
        if self.compatible_from is not None:
            body["compatible_from"] = self.compatible_from
        if self.min_version is not None:
            body["min_version"] = self.min_version
        return {"fieldbox": body}

    @classmethod
    def from_custom(cls, path: str, custom: Mapping[str, Any] | None) -> ReleaseInfo:
        """Read a target's custom metadata; :class:`UpdateRefusedError` if it is not a release of ours."""
        body = (custom or {}).get("fieldbox")
        if not isinstance(body, Mapping):
            raise UpdateRefusedError(f"target {path} carries no fieldbox release metadata")

        def text(key: str, optional: bool = False) -> str | None:
            value = body.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise UpdateRefusedError(f"target {path}: custom.fieldbox.{key} is missing or not text")
            return value

        version, board, kind = text("version"), text("board"), text("kind")
        assert version is not None and board is not None and kind is not None
        if kind != KIND_ROOTFS:
            raise UpdateRefusedError(f"target {path} is a {kind!r} release, not a root-slot release")
        for key, value in (
            ("version", version),
            ("compatible_from", text("compatible_from", True)),
            ("min_version", text("min_version", True)),
        ):
            if value is not None and not is_version(value):
                raise UpdateRefusedError(f"target {path}: {key} {value!r} is not a release version")
        if not valid_board(board):
            raise UpdateRefusedError(f"target {path}: board {board!r} is not a board name")
        length = body.get("manifest_length")
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise UpdateRefusedError(
                f"target {path}: custom.fieldbox.manifest_length is not a positive number"
            )
        digest = text("manifest_sha256")
        assert digest is not None
        if not _HEX64.match(digest):
            raise UpdateRefusedError(f"target {path}: custom.fieldbox.manifest_sha256 is not a sha256")
        reader = body.get("store_min_reader", 1)
        if not isinstance(reader, int) or isinstance(reader, bool) or reader < 1:
            raise UpdateRefusedError(f"target {path}: custom.fieldbox.store_min_reader is not a version")
        if path != target_path(board, version):
            raise UpdateRefusedError(
                f"target {path} does not match its metadata ({target_path(board, version)})"
            )
        return cls(
            version, board, length, digest, text("compatible_from", True), text("min_version", True), reader
        )
