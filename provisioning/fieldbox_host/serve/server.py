"""The dev server's HTTP API (stdlib ``http.server``, one thread per connection, optional mutual TLS).

=======  ============================  ==========================================================
method   path                          what
=======  ============================  ==========================================================
POST     /v1/batches                   a sync batch (:mod:`fieldbox.sync.batch`); answers the ack
                                       (ids committed) only after the transaction commits
POST     /v1/records                   one record as JSON (curl, simple clients; the naive design
                                       the benchmark compares with)
GET      /v1/devices                   JSON: devices, last seen, counts
GET      /                             the same as an HTML page
GET      /v1/devices/<id>/config       the server's copy of a device's config document
POST     /v1/devices/<id>/config       a device pushes its document; the server merges and
                                       answers with the merged document
PUT      /v1/devices/<id>/config       an operator edit: ``{"set": {k: v}, "delete": [k]}``
GET      /healthz                      ``ok``
GET/HEAD /repo/<path>                  with ``--repo``: the TUF update repository's files
                                       (metadata, bundles), byte ranges supported
=======  ============================  ==========================================================

Errors are JSON ``{"error": "..."}``: 400 malformed, 403 certificate does not
match the device, 404, 411 no length, 413 too large, 422 clock too far ahead,
500/503 server trouble (a client retries those with backoff).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fieldbox.errors import BatchFormatError, ClockSkewError, FieldboxError, SyncError
from fieldbox.sync import batch as wire
from fieldbox.sync import configdoc
from fieldbox.sync.batch import Batch, Limits, Record
from fieldbox_host.serve import static
from fieldbox_host.serve.ingestdb import IngestDB

log = logging.getLogger(__name__)

_CONFIG_PATH = re.compile(r"/v1/devices/([A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127})/config")
MAX_JSON_BYTES = 4 * 1024 * 1024
REPO_PREFIX = "/repo/"


@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key; with ``client_ca``, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def tls_context(files: TLSFiles) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+), requiring client certificates when a client CA is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
        if files.client_ca is not None:
            ctx.load_verify_locations(cafile=str(files.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise FieldboxError(
            f"cannot load TLS files ({files.cert}, {files.key}, {files.client_ca}): {exc}",
            hint="give PEM files: the server certificate, its private key, and the CA that signs devices",
        ) from None
    return ctx


class IngestServer(ThreadingHTTPServer):
    """A threading HTTP(S) server bound to one :class:`IngestDB`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        db: IngestDB,
        tls: TLSFiles | None = None,
        limits: Limits = wire.DEFAULT_LIMITS,
        repo: Path | None = None,
    ) -> None:
        self.db = db
        self.repo = repo
        self.limits = limits
        self.tls = tls
        super().__init__(address, IngestHandler)
        if tls is not None:
            # Handshakes happen in the handler threads, so one slow client cannot stall accept().
            self.socket = tls_context(tls).wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host, port = self.server_address[:2]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host!s}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is one quiet line, not a traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
            log.info("client %s went away: %s", client_address[0], exc)
            return
        super().handle_error(request, client_address)

    def serve_in_thread(self) -> threading.Thread:
        """Start serving in a daemon thread (tests, benchmarks); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="ingest-server", daemon=True)
        thread.start()
        return thread


class _Reject(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class IngestHandler(BaseHTTPRequestHandler):
    """One connection; keep-alive, so a client's session reuses it for many batches."""

    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle on, each answer waits for the
    # peer's delayed ACK (~40 ms on Linux), which would make one-record requests crawl.
    disable_nagle_algorithm = True
    server: IngestServer
    server_version = "fieldbox-serve/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Access log lines at debug level."""
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode())

    def _body(self, limit: int) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _Reject(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise _Reject(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length < 0:
            raise _Reject(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
        if length > limit:
            raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ConnectionError("client closed the connection mid-body")
        return data

    def _peer_cn(self) -> str | None:
        if not isinstance(self.connection, ssl.SSLSocket):
            return None
        cert = self.connection.getpeercert()
        if not cert:
            return None
        subject: Any = cert.get("subject", ())
        for rdn in subject:
            for name, value in rdn:
                if name == "commonName":
                    return str(value)
        return None

    def _check_device(self, device: str) -> None:
        """With client certificates, a device may only write as itself."""
        cn = self._peer_cn()
        if cn is not None and cn != device:
            raise _Reject(HTTPStatus.FORBIDDEN, f"certificate is for {cn!r}, not device {device!r}")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            handler = self._route(method, path)
            if handler is None:
                raise _Reject(HTTPStatus.NOT_FOUND, f"no {method} {path}")
            handler()
        except _Reject as exc:
            self._json(exc.status, {"error": exc.message})
        except ClockSkewError as exc:
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
        except (BatchFormatError, SyncError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except FieldboxError as exc:
            log.error("%s %s: %s", method, path, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        except Exception as exc:  # a bug or a database failure: the client retries later
            log.exception("%s %s failed", method, path)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"server error: {type(exc).__name__}"})

    def _route(self, method: str, path: str) -> Any:
        if method in ("GET", "HEAD") and path.startswith(REPO_PREFIX) and self.server.repo is not None:
            return lambda: self._get_repo_file(path[len(REPO_PREFIX) :], head=method == "HEAD")
        if method == "POST" and path == "/v1/batches":
            return self._post_batch
        if method == "POST" and path == "/v1/records":
            return self._post_record
        if method == "GET" and path == "/v1/devices":
            return self._get_devices
        if method == "GET" and path in ("/", "/index.html"):
            return self._get_index
        if method == "GET" and path == "/healthz":
            return lambda: self._send(200, b"ok\n", "text/plain")
        match = _CONFIG_PATH.fullmatch(path)
        if match:
            device = match.group(1)
            if method == "GET":
                return lambda: self._send(200, configdoc.encode(self.server.db.config(device)))
            if method == "POST":
                return lambda: self._post_config(device)
            if method == "PUT":
                return lambda: self._put_config(device)
        return None

    def do_GET(self) -> None:
        """GET requests."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """HEAD requests (the update repository)."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """POST requests."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """PUT requests."""
        self._dispatch("PUT")

    # -- endpoints -----------------------------------------------------------------------

    def _post_batch(self) -> None:
        data = self._body(self.server.limits.max_wire_bytes)
        batch = wire.decode(data, self.server.limits)
        self._check_device(batch.device_id)
        accepted = self.server.db.ingest(batch, wire_bytes=len(data))
        self._send(200, wire.encode_ack(wire.Ack(batch.batch_id, accepted)), wire.ACK_CONTENT_TYPE)

    def _post_record(self) -> None:
        doc = self._json_body()
        try:
            record = Record(
                id=doc["id"],
                topic=doc["topic"],
                priority=doc["priority"],
                created_at=float(doc["created_at"]),
                payload=base64.b64decode(doc["payload_b64"], validate=True)
                if "payload_b64" in doc
                else json.dumps(doc["payload"], separators=(",", ":")).encode(),
            )
            device = doc["device"]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise _Reject(
                HTTPStatus.BAD_REQUEST,
                f"a record needs device, id, topic, priority, created_at and payload: {exc}",
            ) from None
        batch = Batch(device_id=device, batch_id=record.id, records=(record,))
        # The same checks the batch path applies.
        wire.decode(wire.encode(batch, limits=self.server.limits), self.server.limits)
        self._check_device(device)
        accepted = self.server.db.ingest(batch, wire_bytes=int(self.headers.get("Content-Length", "0")))
        self._json(200, {"batch": record.id, "accepted": list(accepted)})

    def _json_body(self) -> Any:
        data = self._body(MAX_JSON_BYTES)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise _Reject(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None

    def _get_repo_file(self, relative: str, head: bool) -> None:
        assert self.server.repo is not None
        path = static.resolve(self.server.repo, relative)
        if path is None:
            raise _Reject(HTTPStatus.NOT_FOUND, f"no file {relative!r} in the update repository")
        static.send_file(self, path, head=head)

    def _get_devices(self) -> None:
        self._json(200, {"devices": [d.to_json() for d in self.server.db.devices()]})

    def _post_config(self, device: str) -> None:
        self._check_device(device)
        incoming = configdoc.decode(self._body(configdoc.MAX_DOCUMENT_BYTES), f"config of {device}")
        merged = self.server.db.merge_config(device, incoming)
        self._send(200, configdoc.encode(merged))

    def _put_config(self, device: str) -> None:
        if self._peer_cn() is not None:
            raise _Reject(HTTPStatus.FORBIDDEN, "operator edits are not taken from device certificates")
        doc = self._json_body()
        if not isinstance(doc, dict) or not set(doc) <= {"set", "delete"}:
            raise _Reject(HTTPStatus.BAD_REQUEST, 'expected {"set": {key: value}, "delete": [key]}')
        set_values = doc.get("set", {})
        delete = doc.get("delete", [])
        if not isinstance(set_values, dict) or not isinstance(delete, list):
            raise _Reject(HTTPStatus.BAD_REQUEST, '"set" must be an object and "delete" a list')
        merged = self.server.db.edit_config(device, set_values, delete)
        self._send(200, configdoc.encode(merged))

    def _get_index(self) -> None:
        rows = []
        now = time.time()
        for d in self.server.db.devices():
            topics = ", ".join(f"{html.escape(t)}: {n}" for t, n in sorted(d.by_topic.items()))
            rows.append(
                "<tr>"
                f"<td>{html.escape(d.device)}</td>"
                f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d.last_seen))} UTC "
                f"({now - d.last_seen:.0f} s ago)</td>"
                f"<td>{d.records}</td><td>{d.duplicates}</td><td>{d.batches}</td>"
                f"<td>{d.wire_bytes}</td><td>{topics}</td>"
                "</tr>"
            )
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>fieldbox devices</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;text-align:left}"
            "tr:nth-child(even){background:#eee}</style></head><body>"
            f"<h1>fieldbox devices</h1><p>{len(rows)} device(s). "
            "JSON: <a href='/v1/devices'>/v1/devices</a></p>"
            "<table><tr><th>device</th><th>last seen</th><th>records</th><th>duplicates ignored</th>"
            "<th>batches</th><th>bytes received</th><th>by topic</th></tr>"
            + "".join(rows)
            + "</table></body></html>"
        )
        self._send(200, body.encode(), "text/html; charset=utf-8")
