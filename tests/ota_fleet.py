"""A small fleet for update tests: keys, a TUF repository, ``fieldbox serve --repo``, a device.

Everything is real: the keys and metadata are made by the same code as
``fieldbox keys init`` and ``fieldbox release`` (python-tuf's metadata API),
the server is the real ingest server with the repository mounted at /repo/,
and the "device" is the update client with its two slots as files. Images are
small (a few MiB) so each test takes well under a second.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldbox.ota.client import Checker, Device
from fieldbox.ota.config import OtaConfig
from fieldbox.ota.install import Installer, InstallReport
from fieldbox_host.release import keys as keyring
from fieldbox_host.release.publish import release_image
from fieldbox_host.release.repository import Published, Repository
from fieldbox_host.serve import IngestDB, IngestServer

ROOT_MIB = 2


def rootfs_bytes(seed: int, size: int = ROOT_MIB << 20) -> bytes:
    """A slot image: random 'files', repeated text and zero stretches, as a filesystem looks."""
    rng = random.Random(seed)
    out = bytearray(size)
    pos = 0
    while pos < size:
        n = rng.randrange(4096, 96 * 1024, 4096)
        kind = rng.random()
        if kind < 0.45:
            out[pos : pos + n] = rng.randbytes(min(n, size - pos))
        elif kind < 0.7:
            out[pos : pos + n] = (b"fieldbox slot " * (n // 14 + 1))[: min(n, size - pos)]
        pos += n
    return bytes(out)


def change_app(image: bytes, seed: int) -> bytes:
    """An 'app-only change': a few blocks rewritten near the end, as a small file change looks."""
    rng = random.Random(seed)
    out = bytearray(image)
    for _ in range(3):
        at = rng.randrange(len(out) * 3 // 4, len(out) - 8192) // 4096 * 4096
        out[at : at + 4096] = rng.randbytes(4096)
    return bytes(out)


def write_image(directory: Path, version: str, rootfs: bytes, board: str = "qemu-arm64") -> Path:
    """A disk image file with ``rootfs`` in slot A at 1 MiB, and its build manifest beside it."""
    image = directory / f"fieldbox-{version}-arm64.img"
    with open(image, "wb") as fh:
        fh.write(bytes(1 << 20))
        fh.write(rootfs)
    parts = [{"number": 2, "name": "rootA", "start_mib": 1, "size_mib": len(rootfs) >> 20}]
    (directory / f"fieldbox-{version}-arm64.manifest.json").write_text(
        json.dumps({"version": version, "board": board, "partitions": parts, "source_date_epoch": 1700000000})
    )
    return image


@dataclass
class Fleet:
    """Keys, repository and a running server in ``root``."""

    root: Path
    keys: Path = field(init=False)
    repo: Repository = field(init=False)
    server: IngestServer = field(init=False)

    def __post_init__(self) -> None:
        self.keys = self.root / "keys"
        keyring.init_keys(self.keys, passphrase=None)
        ring = keyring.KeyRing(self.keys)
        self.repo = Repository(self.root / "repo")
        self.repo.create({r: ring.public_key(r) for r in keyring.ROLES}, self.signers())
        self.images = self.root / "images"
        self.images.mkdir()
        self.db = IngestDB(self.root / "ingest.sqlite")
        self.server = IngestServer(("127.0.0.1", 0), self.db, repo=self.repo.directory)
        self.server.serve_in_thread()

    def signers(self) -> dict[str, Any]:
        """Every role's signer."""
        ring = keyring.KeyRing(self.keys)
        return {r: ring.signer(r) for r in keyring.ROLES}

    @property
    def url(self) -> str:
        """The repository URL a device is configured with."""
        return f"{self.server.url}/repo/"

    def publish(self, version: str, rootfs: bytes, board: str = "qemu-arm64", **kw: Any) -> Published:
        """Release an image holding ``rootfs`` (``fieldbox release``'s code path)."""
        image = write_image(self.images, version, rootfs, board)
        return release_image(image, self.repo, self.signers(), **kw)

    def close(self) -> None:
        """Stop the server."""
        self.server.shutdown()
        self.server.server_close()
        self.db.close()


@dataclass
class FakeSlots:
    """The device's two root slots as files: A running ``running``, B the update target."""

    root: Path
    running: bytes

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.a = self.root / "slotA.img"
        self.b = self.root / "slotB.img"
        self.a.write_bytes(self.running)
        self.b.write_bytes(bytes(len(self.running)))
        self.state = self.root / "ota"


def device_check(
    fleet: Fleet,
    version: str,
    work: Path,
    *,
    url: str | None = None,
    floor: str = "0",
    cfg: OtaConfig | None = None,
) -> Any:
    """One check as the device makes it, trusting root v1 of the fleet."""
    cfg = cfg or OtaConfig(repository_url=url or fleet.url, timeout_s=5.0)
    checker = Checker(
        cfg, metadata_dir=work / "ota/metadata", trusted_root=fleet.repo.metadata_dir / "1.root.json"
    )
    return checker, checker.check(Device("qemu-arm64", version, floor))


def install(checker: Checker, candidate: Any, slots: FakeSlots, **kw: Any) -> InstallReport:
    """Install into slot B with slot A as the local source."""
    inst = Installer(checker.http, slots.b, slots.a, "B", state_dir=slots.state, sleep=lambda s: None, **kw)
    return inst.install(candidate)
