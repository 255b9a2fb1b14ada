"""What the update system tests share: a fleet behind a cutting proxy, image builds, console waits."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fieldbox.ota import bundle
from fieldbox.ota.install import LocalIndex
from fieldbox_host.image.build import BuildOptions, BuildResult, build_image
from fieldbox_host.netfault import CutProxy
from fieldbox_host.qemu import GUESTFWD_ADDR, Machine
from fieldbox_host.release.publish import release_image
from ota_fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
GUEST_URL = f"http://{GUESTFWD_ADDR}"
OTA_TOML = """\
# test fleet: check often, settle fast
repository_url = ""
interval_s = 10.0
first_check_s = 1.0
reboot = "now"
timeout_s = 20.0
health_timeout_s = 400.0
health_stable_s = 5.0
"""
MONITOR_TOML = (
    (ROOT / "rootfs-overlay/etc/fieldbox/monitor.toml")
    .read_text()
    .replace("flush_s = 60.0", "flush_s = 10.0")
)


def ready_line(machine: Machine, timeout: float = 300) -> tuple[str, str]:
    """(slot, version) from the next "fieldbox ready" line."""
    match = machine.wait_for(
        r"fieldbox ready: .* slot (\w), version ([0-9.]+)|fieldbox degraded: [^\n]*", timeout
    )
    assert match.group(1), match.group(0)
    return match.group(1), match.group(2)


@dataclass
class World:
    """The fleet, its server behind a cutting proxy, and the image builds."""

    fleet: Fleet
    proxy: CutProxy
    work: Path
    overlay: Path

    builds: dict[str, BuildResult] = field(default_factory=dict)

    def build(self, version: str, overlay: Path | None = None) -> BuildResult:
        result = build_image(
            BuildOptions(
                build_dir=BUILD,
                output_dir=self.work / "images",
                version=version,
                repo=self.fleet.repo.directory,
                update_url=f"{GUEST_URL}/repo/",
                sync_url=GUEST_URL,
                overlay=overlay or self.overlay,
                compress=False,
            )
        )
        assert result.image is not None
        self.builds[version] = result
        return result

    def expected_download(self, new: BuildResult, running: BuildResult) -> tuple[int, int]:
        """Bytes the device must fetch to go from ``running`` to ``new`` (manifest + chunks it does
        not hold), computed with the device's own index code; and the largest compressed chunk."""
        assert new.image is not None and running.image is not None
        bundle_file = next(self.fleet.repo.targets_dir.rglob(f"*.fieldbox-{new.version}.fbb"))
        slot = self.work / "running-slot.img"
        part = next(p for p in running.partitions if p.name == "rootA")
        with open(running.image, "rb") as src, open(slot, "wb") as dst:
            src.seek(part.start_bytes)
            dst.write(src.read(part.size_bytes))
        with open(bundle_file, "rb") as fh:
            manifest = bundle.read_manifest(fh)
        index = LocalIndex(slot, manifest.block_size)
        try:
            located = index.locate(manifest)
            need = manifest.manifest_length
            for c in manifest.chunks():
                blocks = c.length // manifest.block_size
                if not c.zero and (
                    (located[c.index, :blocks] == LocalIndex.MISSING).any()
                    or index.assemble(c, located[c.index]) is None
                ):
                    need += c.compressed_length
        finally:
            index.close()
            slot.unlink()
        return need, max(c.compressed_length for c in manifest.chunks())

    def publish(self, result: BuildResult, **kw: str) -> int:
        assert result.image is not None
        published = release_image(result.image, self.fleet.repo, self.fleet.signers(), **kw)
        print(f"\npublished {published.path}: {published.length / 2**20:.1f} MiB", file=sys.stderr)
        return published.length

    def server_events(self, kind: str) -> list[dict[str, object]]:
        """Events of ``kind`` the server received (they travel in the telemetry records)."""
        out = []
        for *_, topic, _prio, payload in self.fleet.db.records():
            if topic != "telemetry":
                continue
            for _ts, k, detail in json.loads(payload).get("events", []):
                if k == kind:
                    out.append(detail)
        return out


def make_world(work: Path) -> World:
    """A fleet (keys, repository, server) behind a cutting proxy, and the test overlay."""
    fleet = Fleet(work / "fleet")
    proxy = CutProxy(int(fleet.server.server_address[1]), [])
    overlay = work / "overlay"
    (overlay / "etc/fieldbox").mkdir(parents=True)
    (overlay / "etc/fieldbox/ota.toml").write_text(OTA_TOML)
    (overlay / "etc/fieldbox/monitor.toml").write_text(MONITOR_TOML)
    return World(fleet, proxy, work, overlay)


def close_world(world: World) -> None:
    """Stop the proxy and the server."""
    world.proxy.close()
    world.fleet.close()


def wait_server(probe: object, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()  # type: ignore[operator]
        if found or time.monotonic() > deadline:
            assert found, f"nothing on the server after {timeout:.0f} s"
            return list(found)
        time.sleep(3)


def wait_text(machine: Machine, mark: int, pattern: str, timeout: float) -> str | None:
    """The first match of ``pattern`` on the console after position ``mark``, waiting up to ``timeout``."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = regex.search(machine.console_text(), mark)
        if found:
            return found.group(0)
        time.sleep(0.2)
    return None
