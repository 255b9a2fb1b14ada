"""HTTP for the update client: one urllib3 pool for TUF metadata and for bundle byte ranges.

python-tuf fetches metadata through :class:`TufFetcher` (its public
``FetcherInterface``), so a pinned CA applies to both, and bundle chunks come
through :meth:`Http.range`, which reads exactly the bytes asked for: a server
that sends more (endless data), ignores the Range header, or stalls is an
:class:`~fieldbox.errors.UpdateError`, never a longer read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface

from fieldbox import __version__
from fieldbox.errors import ConfigError, UpdateError

log = logging.getLogger("fieldbox.ota")

READ_SIZE = 64 * 1024
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, OSError)
"""What a dropped, reset or stalled connection raises (urllib3's ProtocolError, ReadTimeoutError, ...)."""


class TransferBroken(UpdateError):
    """The connection ended early or the server is briefly unavailable: worth resuming."""


class Http:
    """A connection pool with the repository's TLS settings and timeouts."""

    def __init__(self, timeout_s: float, server_ca: Path | None = None, https_only: bool = False) -> None:
        kwargs: dict[str, Any] = {}
        if server_ca is not None:
            kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=str(server_ca))
        self.https_only = https_only or server_ca is not None
        self.pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            headers={"User-Agent": f"fieldbox-ota/{__version__}"},
            **kwargs,
        )
        self.received = 0
        """Body bytes received so far (metadata and bundle), for the bench and the resume test."""
        self.resumes = 0
        """Range requests made to resume a broken transfer."""

    def _check(self, url: str) -> None:
        if self.https_only and not url.startswith("https://"):
            raise ConfigError(f"{url}: plain http with a pinned server CA", "use an https:// repository_url")

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        """A streaming GET (the caller reads and releases it)."""
        self._check(url)
        return self.pool.request("GET", url, headers=headers, preload_content=False, redirect=False)

    def range(self, url: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``url``: exactly those, in pieces, or :class:`UpdateError`."""
        want = end - start
        resp = self.get(url, {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})
        try:
            if resp.status == 200 and start == 0:
                pass  # a server without Range support: the first bytes are the ones asked for
            elif resp.status in (502, 503, 504):
                raise TransferBroken(f"{url}: HTTP {resp.status} (server busy)")
            elif resp.status != 206:
                raise UpdateError(
                    f"{url}: HTTP {resp.status} for bytes {start}-{end - 1}",
                    "the server must serve the repository's files with Range support",
                )
            else:
                crange = resp.headers.get("Content-Range", "")
                if not crange.startswith(f"bytes {start}-"):
                    raise UpdateError(
                        f"{url}: asked for bytes {start}-{end - 1}, got {crange or 'no Content-Range'}"
                    )
            got = 0
            while got < want:
                piece = resp.read(min(READ_SIZE, want - got))
                if not piece:
                    raise TransferBroken(f"{url}: connection ended after {got} of {want} bytes")
                got += len(piece)
                self.received += len(piece)
                yield piece
        finally:
            if resp.length_remaining:  # more than asked for (or an abandoned read): never reuse it
                resp.close()
            resp.release_conn()

    def fetch(
        self, url: str, start: int, end: int, retries: int, sleep: Callable[[float], None] = time.sleep
    ) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``url``; a dropped connection resumes with a Range request from
        the first byte not yet received (``retries`` times in a row without progress, backing off)."""
        pos = start
        failures = 0
        while pos < end:
            try:
                for piece in self.range(url, pos, end):
                    pos += len(piece)
                    failures = 0
                    yield piece
            except (*NETWORK_ERRORS, TransferBroken) as exc:
                failures += 1
                if failures > retries:
                    raise UpdateError(
                        f"download of {url} keeps failing ({failures} times in a row): {exc}",
                        "the next check resumes where this one stopped",
                    ) from None
                self.resumes += 1
                wait = min(30.0, 2.0 ** (failures - 1))
                log.warning(
                    "download broke off at byte %d (%s); resuming in %.0f s with a Range request",
                    pos,
                    exc,
                    wait,
                )
                sleep(wait)


class TufFetcher(FetcherInterface):
    """python-tuf's fetcher over :class:`Http` (it enforces the metadata length limits itself)."""

    def __init__(self, http: Http) -> None:
        self.http = http

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            resp = self.http.get(url)
        except NETWORK_ERRORS as exc:
            raise tuf_exc.DownloadError(f"{url}: {exc}") from None
        if resp.status >= 400:
            resp.release_conn()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        return self._chunks(resp)

    def _chunks(self, resp: Any) -> Iterator[bytes]:
        try:
            while piece := resp.read(READ_SIZE):
                self.http.received += len(piece)
                yield piece
        except NETWORK_ERRORS as exc:
            raise tuf_exc.DownloadError(f"download broke off: {exc}") from None
        finally:
            resp.release_conn()
