"""The dev ingest server over real HTTP(S) on loopback: idempotent ingest, errors, device list, mutual TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sync_support import free_port, open_store, put_results, running_server

from fieldbox.sync import batch as wire
from fieldbox.sync import outbox
from fieldbox.sync.batch import Batch, Record
from fieldbox.sync.client import SyncClient
from fieldbox.sync.config import BackoffSettings, SyncConfig, TLSSettings
from fieldbox_host.serve import TLSFiles

pytestmark = pytest.mark.integration


def _batch(device: str = "dev-1", n: int = 3, batch_id: str = "b1") -> bytes:
    records = tuple(Record(f"r{i}", "results", 5, 1.0 + i, b'{"x":1}') for i in range(n))
    return wire.encode(Batch(device, batch_id, records))


def test_ingest_is_idempotent_and_acks_after_commit(tmp_path: Path) -> None:
    with running_server(tmp_path / "s.sqlite") as server:
        url = server.url + "/v1/batches"
        first = requests.post(url, data=_batch(), timeout=5)
        again = requests.post(url, data=_batch(batch_id="b2"), timeout=5)
        assert first.status_code == again.status_code == 200
        assert wire.decode_ack(first.content).accepted == ("r0", "r1", "r2")
        assert wire.decode_ack(again.content).accepted == ("r0", "r1", "r2")
        assert len(server.db.records()) == 3
        (device,) = requests.get(server.url + "/v1/devices", timeout=5).json()["devices"]
        assert device["records"] == 3 and device["duplicates_ignored"] == 3 and device["batches"] == 2
        page = requests.get(server.url + "/", timeout=5)
        assert page.headers["Content-Type"].startswith("text/html") and "dev-1" in page.text


def test_bad_requests_get_clear_errors(tmp_path: Path) -> None:
    with running_server(tmp_path / "s.sqlite") as server:
        url = server.url + "/v1/batches"
        r = requests.post(url, data=b"not a batch at all", timeout=5)
        assert r.status_code == 400 and "magic" in r.json()["error"]
        r = requests.post(url, data=_batch()[:-3], timeout=5)
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        r = requests.get(server.url + "/v1/nothing", timeout=5)
        assert r.status_code == 404
        with socket.create_connection(server.server_address[:2]) as s:
            s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
            assert b" 413 " in s.recv(4096)
        with socket.create_connection(server.server_address[:2]) as s:
            s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 411 " in s.recv(4096)
        r = requests.put(server.url + "/v1/devices/dev-1/config", json={"set": {"bad key": 1}}, timeout=5)
        assert r.status_code == 400 and "config key" in r.json()["error"]
        assert server.db.records() == []


FIELDBOX = [sys.executable, "-c", "from fieldbox_host.cli import main; main()"]


def test_fieldbox_serve_command(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*FIELDBOX, "serve", "--db", str(tmp_path / "s.sqlite"),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "fieldbox serve did not come up"
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).text == "ok\n":
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        r = requests.post(f"http://127.0.0.1:{port}/v1/batches", data=_batch(), timeout=5)
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"fieldbox serve: http://127.0.0.1" in out
    bad = subprocess.run(
        [*FIELDBOX, "serve", "--tls-cert", str(tmp_path / "missing.pem")],
        capture_output=True, text=True, timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("fieldbox: error: --tls-cert and --tls-key go together")


# -- mutual TLS ---------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, other_key = _key(), _key()
    ca = _cert("fleet-ca", ca_key, None, ca=True)
    other_ca = _cert("evil-ca", other_key, None, ca=True)
    _write(d / "ca.pem", ca)
    _write(d / "other-ca.pem", other_ca)
    server_key = _key()
    _write(d / "server.pem", _cert("127.0.0.1", server_key, ("fleet-ca", ca_key), ip="127.0.0.1"), server_key)
    for device in ("dev-1", "dev-2"):
        k = _key()
        _write(d / f"{device}.pem", _cert(device, k, ("fleet-ca", ca_key)), k)
    k = _key()
    _write(d / "rogue.pem", _cert("dev-1", k, ("evil-ca", other_key)), k)
    return d


def _tls_client(store, url: str, pki: Path, cert: str | None, ca: str = "ca.pem") -> SyncClient:
    tls = TLSSettings(
        client_cert=pki / f"{cert}.pem" if cert else None,
        client_key=pki / f"{cert}.key" if cert else None,
        server_ca=pki / ca,
    )
    config = SyncConfig(server_url=url, device_id="dev-1", idle_s=0.05, timeout_s=5.0, tls=tls,
                        backoff=BackoffSettings(base_s=0.01, cap_s=0.05))
    return SyncClient(store, config)


def test_mutual_tls(tmp_path: Path, pki: Path) -> None:
    store = open_store(tmp_path / "data")
    put_results(store, 20)
    tls = TLSFiles(cert=pki / "server.pem", key=pki / "server.key", client_ca=pki / "ca.pem")
    with running_server(tmp_path / "s.sqlite", tls=tls) as server:
        assert server.url.startswith("https://")
        # No client certificate: the handshake fails, nothing is sent, nothing is lost.
        bare = _tls_client(store, server.url, pki, None)
        assert not bare.drain(timeout_s=1.0) and bare.stats.failures > 0
        # A certificate from another CA: refused in the handshake.
        rogue = _tls_client(store, server.url, pki, "rogue")
        assert not rogue.drain(timeout_s=1.0) and rogue.stats.records_acked == 0
        # A valid certificate for another device: the server refuses to take dev-1's data from it.
        other = _tls_client(store, server.url, pki, "dev-2")
        assert not other.drain(timeout_s=1.0)
        assert other.stats.statuses.get(403, 0) > 0, other.stats
        # Pinned server CA that did not sign the server's certificate: the client refuses the server.
        pinned_wrong = _tls_client(store, server.url, pki, "dev-1", ca="other-ca.pem")
        assert not pinned_wrong.drain(timeout_s=1.0) and "SSL" in pinned_wrong.stats.last_error
        assert server.db.records() == [] and outbox.totals(store)[0] == 20
        # The right certificate, the right CA: everything arrives.
        good = _tls_client(store, server.url, pki, "dev-1")
        assert good.drain(timeout_s=30)
        assert len(server.db.records()) == 20
    store.close()
