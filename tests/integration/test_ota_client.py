"""The update client against a real TUF repository served over loopback: installs and every refusal.

Each attack is crafted with python-tuf's own metadata API (or by editing the
served files as a hostile mirror would), then the device's real client
checks and installs into slot files. What must hold: nothing unverified is
ever written to the slot as a finished image, and every refusal is one
line naming the check that failed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import socket
import threading
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, TargetFile

from fieldbox.errors import BundleError, UpdateError, UpdateRefusedError
from fieldbox.ota.bundle import read_manifest
from fieldbox.ota.config import OtaConfig
from fieldbox.ota.http import Http
from fieldbox.ota.release import ReleaseInfo, target_path
from fieldbox.ota.state import Progress
from fieldbox_host.netfault import CutProxy
from fieldbox_host.release import keys as keyring
from fieldbox_host.release.repository import Published, _sign, utcnow
from ota_fleet import FakeSlots, Fleet, change_app, device_check, install, rootfs_bytes

pytestmark = pytest.mark.integration

V1 = rootfs_bytes(seed=1)


@pytest.fixture
def slots(tmp_path: Path) -> FakeSlots:
    return FakeSlots(tmp_path / "dev", V1)


def test_app_change_installs_from_local_chunks_and_reads_back(fleet: Fleet, slots: FakeSlots) -> None:
    v2 = change_app(V1, seed=2)
    published = fleet.publish("0.2.0", v2, compatible_from="0.1.0", min_version="0.1.0")
    checker, result = device_check(fleet, "0.1.0", slots.root)
    assert result.candidate is not None and result.candidate.info.version == "0.2.0"
    assert result.candidate.info.min_version == "0.1.0"
    report = install(checker, result.candidate, slots)
    assert slots.b.read_bytes() == v2
    assert report.chunks_local > 0 and report.chunks_remote <= 3
    # the manifest and three changed chunks, not the bundle
    assert report.downloaded < published.info.manifest_length + 4 * 64 * 1024 + 8192
    assert Progress.load(slots.state) is None


def test_nothing_newer_is_up_to_date(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.1.0", V1)
    _, result = device_check(fleet, "0.1.0", slots.root)
    assert result.candidate is None and result.refused == [] and result.newest == "0.1.0"


def test_downgrade_and_fleet_floor_are_refused(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    _, result = device_check(fleet, "0.3.0", slots.root)
    assert result.candidate is None
    assert "not newer than the installed 0.3.0 (downgrade refused)" in result.refused[0][1]
    _, result = device_check(fleet, "0.1.0", slots.root / "b", floor="0.5")
    assert result.candidate is None and "below this fleet's minimum version 0.5" in result.refused[0][1]


def test_compatible_from_needs_an_intermediate_release(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.3.0", V1, compatible_from="0.2.0")
    _, result = device_check(fleet, "0.1.0", slots.root)
    assert result.candidate is None and "installs only over 0.2.0" in result.refused[0][1]


def _republish(fleet: Fleet, mutate: object) -> None:
    """Re-sign targets (and snapshot, timestamp) after ``mutate(targets_metadata)``."""
    repo = fleet.repo
    targets = repo.load("targets")
    mutate(targets)  # type: ignore[operator]
    repo._commit(fleet.signers(), utcnow(), targets=targets)


def test_a_release_for_another_board_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    published = fleet.publish("0.2.0", V1)

    def add_rpi_under_our_path(t: Metadata) -> None:  # type: ignore[type-arg]
        info = ReleaseInfo("0.3.0", "rpi", published.info.manifest_length, published.info.manifest_sha256)
        path = target_path("qemu-arm64", "0.3.0")
        t.signed.targets[path] = TargetFile(
            published.length,
            {"sha256": published.sha256},
            path,
            unrecognized_fields={"custom": info.to_custom()},
        )

    _republish(fleet, add_rpi_under_our_path)
    _, result = device_check(fleet, "0.1.0", slots.root)
    assert any("does not match its metadata" in r for _, r in result.refused)
    assert result.candidate is not None and result.candidate.info.version == "0.2.0"


def test_manifest_board_must_match_the_signed_metadata(
    fleet: Fleet, slots: FakeSlots, tmp_path: Path
) -> None:
    rpi = fleet.publish("0.2.0", V1, board="rpi")
    # the same bundle bytes listed as a qemu-arm64 release: the manifest inside says rpi
    src = fleet.repo.target_file(rpi.path, rpi.sha256)
    path = target_path("qemu-arm64", "0.2.0")
    dst = fleet.repo.target_file(path, rpi.sha256)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    fake = Published(
        path,
        rpi.length,
        rpi.sha256,
        ReleaseInfo("0.2.0", "qemu-arm64", rpi.info.manifest_length, rpi.info.manifest_sha256),
    )
    fleet.repo.add_target(fake, fleet.signers())
    checker, result = device_check(fleet, "0.1.0", slots.root)
    assert result.candidate is not None
    with pytest.raises(UpdateRefusedError, match="manifest says rpi 0.2.0"):
        install(checker, result.candidate, slots)


def test_tampered_bundle_bytes_never_reach_the_slot_as_an_image(fleet: Fleet, slots: FakeSlots) -> None:
    published = fleet.publish("0.2.0", rootfs_bytes(seed=9))
    bundle_file = fleet.repo.target_file(published.path, published.sha256)
    data = bytearray(bundle_file.read_bytes())
    data[published.info.manifest_length + 100] ^= 0xFF  # inside the first chunk's compressed bytes
    bundle_file.write_bytes(bytes(data))
    checker, result = device_check(fleet, "0.1.0", slots.root)
    with pytest.raises(BundleError, match="twice"):
        install(checker, result.candidate, slots)


def test_tampered_manifest_is_refused_before_any_chunk(fleet: Fleet, slots: FakeSlots) -> None:
    published = fleet.publish("0.2.0", rootfs_bytes(seed=9))
    bundle_file = fleet.repo.target_file(published.path, published.sha256)
    data = bytearray(bundle_file.read_bytes())
    data[40] ^= 0x01  # in the JSON header
    bundle_file.write_bytes(bytes(data))
    checker, result = device_check(fleet, "0.1.0", slots.root)
    with pytest.raises(UpdateRefusedError, match="manifest does not match its signed sha256"):
        install(checker, result.candidate, slots)
    assert slots.b.read_bytes() == bytes(len(V1))


def test_targets_signed_by_the_wrong_key_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    intruder = CryptoSigner.generate_ed25519()
    targets = fleet.repo.load("targets")
    targets.signed.version += 1
    _sign(targets, [intruder])
    fleet.repo._write(f"{targets.signed.version}.targets.json", targets)
    snapshot = fleet.repo.load("snapshot")
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    snapshot.signed.version += 1
    _sign(snapshot, [fleet.signers()["snapshot"]])
    fleet.repo._write(f"{snapshot.signed.version}.snapshot.json", snapshot)
    ts = fleet.repo.load("timestamp")
    ts.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    ts.signed.version += 1
    _sign(ts, [fleet.signers()["timestamp"]])
    fleet.repo._write("timestamp.json", ts)
    with pytest.raises(UpdateRefusedError, match="not signed by the trusted keys"):
        device_check(fleet, "0.1.0", slots.root)


def test_expired_timestamp_is_refused_as_a_freeze(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    ts = fleet.repo.load("timestamp")
    ts.signed.version += 1
    ts.signed.expires = utcnow() - dt.timedelta(hours=1)
    _sign(ts, [fleet.signers()["timestamp"]])
    fleet.repo._write("timestamp.json", ts)
    with pytest.raises(UpdateRefusedError, match="expired metadata.*freeze attack"):
        device_check(fleet, "0.1.0", slots.root)


def test_replayed_older_timestamp_is_refused_as_a_rollback(fleet: Fleet, slots: FakeSlots) -> None:
    old = (fleet.repo.metadata_dir / "timestamp.json").read_bytes()
    fleet.publish("0.2.0", V1)
    device_check(fleet, "0.1.0", slots.root)  # the device now trusts the newer timestamp
    (fleet.repo.metadata_dir / "timestamp.json").write_bytes(old)
    with pytest.raises(UpdateRefusedError, match="rollback attack"):
        device_check(fleet, "0.1.0", slots.root)


def test_snapshot_naming_an_older_targets_version_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    device_check(fleet, "0.1.0", slots.root)
    snapshot = fleet.repo.load("snapshot")
    snapshot.signed.meta["targets.json"] = MetaFile(version=1)  # the targets before 0.2.0
    fleet.repo._commit(fleet.signers(), utcnow(), snapshot=False)
    ts_md = fleet.repo.load("timestamp")
    snapshot.signed.version = ts_md.signed.snapshot_meta.version + 1
    _sign(snapshot, [fleet.signers()["snapshot"]])
    fleet.repo._write(f"{snapshot.signed.version}.snapshot.json", snapshot)
    ts_md.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    ts_md.signed.version += 1
    _sign(ts_md, [fleet.signers()["timestamp"]])
    fleet.repo._write("timestamp.json", ts_md)
    with pytest.raises(UpdateRefusedError, match="rollback attack"):
        device_check(fleet, "0.1.0", slots.root)


def test_targets_from_another_release_is_refused_as_mix_and_match(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    fleet.publish("0.3.0", change_app(V1, 3))
    version = fleet.repo.load("snapshot").signed.meta["targets.json"].version
    md = fleet.repo.metadata_dir
    shutil.copy(md / f"{version - 1}.targets.json", md / f"{version}.targets.json")
    with pytest.raises(UpdateRefusedError, match="rollback attack|mix-and-match"):
        device_check(fleet, "0.1.0", slots.root)


def test_bundle_longer_than_its_metadata_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    published = fleet.publish("0.2.0", rootfs_bytes(seed=4))

    def shorter(t: Metadata) -> None:  # type: ignore[type-arg]
        t.signed.targets[published.path].length = published.length - 1000

    _republish(fleet, shorter)
    checker, result = device_check(fleet, "0.1.0", slots.root)
    with pytest.raises(UpdateRefusedError, match="bundle is larger .* than its signed metadata says"):
        install(checker, result.candidate, slots)


class _EndlessServer:
    """An HTTP server that answers every request with 206 and never stops sending."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/100\r\n\r\n")
        try:
            while self.sent < 50 << 20:
                conn.sendall(b"\xff" * 65536)
                self.sent += 65536
        except OSError:
            pass
        conn.close()


def test_endless_data_is_read_only_as_far_as_asked() -> None:
    server = _EndlessServer()
    http = Http(timeout_s=5.0)
    got = b"".join(http.range(f"http://127.0.0.1:{server.port}/x", 0, 100))
    assert got == b"\xff" * 100 and http.received == 100


def test_a_rotated_timestamp_key_is_followed_and_the_old_key_refused(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", V1)
    device_check(fleet, "0.1.0", slots.root)
    old_signer = fleet.signers()["timestamp"]
    ring = keyring.KeyRing(fleet.keys)
    old = ring.entry("timestamp")
    new = keyring.generate("timestamp", fleet.keys, file="timestamp.key.new")
    keyring.retire(fleet.keys, old)
    (fleet.keys / "timestamp.key.new").rename(fleet.keys / "timestamp.key")
    entries = ring.entries()
    entries["timestamp"] = keyring.KeyEntry(
        "timestamp", new.keyid, new.scheme, "timestamp.key", False, False, new.public
    )
    ring.save(entries)
    version = fleet.repo.rotate(
        "timestamp", ring.public_key("timestamp"), [ring.signer("root")], fleet.signers()
    )
    assert version == 2
    _, result = device_check(fleet, "0.1.0", slots.root)  # walks root v1 -> v2, takes the new timestamp
    assert result.candidate is not None
    # a mirror still signing with the old (compromised) key is refused from now on
    ts = fleet.repo.load("timestamp")
    ts.signed.version += 1
    _sign(ts, [old_signer])
    fleet.repo._write("timestamp.json", ts)
    with pytest.raises(UpdateRefusedError, match="not signed by the trusted keys"):
        device_check(fleet, "0.1.0", slots.root)


def test_download_cut_several_times_resumes_with_range_requests(fleet: Fleet, slots: FakeSlots) -> None:
    published = fleet.publish("0.2.0", rootfs_bytes(seed=5))  # nothing in common with slot A
    port = fleet.server.server_address[1]
    cuts = [published.info.manifest_length + k * published.length // 5 for k in range(1, 5)]
    proxy = CutProxy(int(port), cuts)
    try:
        url = f"http://127.0.0.1:{proxy.port}/repo/"
        checker, result = device_check(fleet, "0.1.0", slots.root, url=url)
        report = install(checker, result.candidate, slots)
    finally:
        proxy.close()
    assert proxy.cut_count == 4 and report.retries == 4
    assert (
        hashlib.sha256(slots.b.read_bytes()).hexdigest() == hashlib.sha256(rootfs_bytes(seed=5)).hexdigest()
    )
    # each cut costs at most the chunk that was in flight (plus the metadata before the bundle)
    with open(fleet.repo.target_file(published.path, published.sha256), "rb") as fh:
        biggest = max(c.compressed_length for c in read_manifest(fh).chunks())
    assert report.downloaded <= published.length + 4 * biggest


def test_power_cut_mid_write_resumes_from_the_saved_chunk(fleet: Fleet, slots: FakeSlots) -> None:
    target = rootfs_bytes(seed=6)
    fleet.publish("0.2.0", target)
    checker, result = device_check(fleet, "0.1.0", slots.root)
    calls = {"n": 0}

    class PowerCut(Exception):
        pass

    def cut(done: int, total: int) -> None:
        calls["n"] += 1
        if done > total // 2:
            raise PowerCut

    import fieldbox.ota.install as inst_mod

    old_sync = inst_mod.SYNC_BYTES
    inst_mod.SYNC_BYTES = 256 * 1024
    try:
        with pytest.raises(PowerCut):
            install(checker, result.candidate, slots, progress=cut)
        saved = Progress.load(slots.state)
        assert saved is not None and saved.next_chunk > 0
        report = install(checker, result.candidate, slots)
    finally:
        inst_mod.SYNC_BYTES = old_sync
    assert report.chunks_resumed == saved.next_chunk
    assert slots.b.read_bytes() == target


def test_a_slot_too_small_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    fleet.publish("0.2.0", rootfs_bytes(seed=8))
    slots.b.write_bytes(bytes(4096))
    checker, result = device_check(fleet, "0.1.0", slots.root)
    with pytest.raises(UpdateRefusedError, match="slot B holds 4096"):
        install(checker, result.candidate, slots)


def test_an_unreachable_repository_is_one_line_with_a_hint(slots: FakeSlots, fleet: Fleet) -> None:
    cfg = OtaConfig(repository_url="http://127.0.0.1:9/repo/", timeout_s=2.0)
    with pytest.raises(UpdateError, match="cannot fetch update metadata") as exc:
        device_check(fleet, "0.1.0", slots.root, cfg=cfg)
    assert "\n" not in str(exc.value)


def test_a_release_whose_store_an_older_slot_cannot_open_is_refused(fleet: Fleet, slots: FakeSlots) -> None:
    from fieldbox.store.migrations import LATEST

    published = fleet.publish("0.2.0", V1)

    def breaking(t: Metadata) -> None:  # type: ignore[type-arg]
        custom = t.signed.targets[published.path].unrecognized_fields["custom"]
        custom["fieldbox"]["store_min_reader"] = LATEST + 1

    _republish(fleet, breaking)
    _, result = device_check(fleet, "0.1.0", slots.root)
    assert result.candidate is None and "could not open it after a rollback" in result.refused[0][1]
