"""``fieldbox serve``: run the development ingest server (sync batches, config documents, device list)."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType

from fieldbox.errors import ConfigError, FieldboxError
from fieldbox_host.serve import IngestDB, IngestServer, TLSFiles

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8470"


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` verb."""
    parser = subparsers.add_parser(
        "serve",
        help="run the development sync ingest server",
        description="Receive sync batches from devices into a SQLite file (idempotently, by record id), "
        "serve their config documents, and list devices at / and /v1/devices.",
    )
    parser.add_argument("--db", type=Path, default=Path("build/serve/ingest.sqlite"), help="SQLite file")
    parser.add_argument(
        "--listen",
        type=_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--tls-key", type=Path, help="the server certificate's private key (PEM)")
    parser.add_argument(
        "--client-ca", type=Path, help="CA (PEM) that signs device certificates: require mutual TLS"
    )
    parser.add_argument(
        "--repo", type=Path,
        help="also serve this update repository (fieldbox release) at /repo/, with byte ranges",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    tls = None
    if args.tls_cert or args.tls_key or args.client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together", hint="give both, or neither for HTTP")
        tls = TLSFiles(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    db = IngestDB(args.db)
    try:
        if args.repo is not None and not (args.repo / "metadata/timestamp.json").is_file():
            raise ConfigError(f"{args.repo} is not an update repository (no metadata/timestamp.json)",
                              hint="create it with `fieldbox keys init --repo DIR`")  # fmt: skip
        server = IngestServer(args.listen, db, tls=tls, repo=args.repo)
    except OSError as exc:
        raise FieldboxError(
            f"cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}",
            hint="pick another port with --listen",
        ) from None

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    repo = f"; update repository {server.url}/repo/" if args.repo is not None else ""
    print(f"fieldbox serve: {server.url} (database {args.db}{repo}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        db.close()
    return 0
