"""HTTP for the update client: one urllib3 pool for TUF metadata and for bundle byte ranges.

python-tuf fetches metadata through :class:`TufFetcher` (its public
``FetcherInterface``), so a pinned CA applies to both, and bundle chunks come
through :meth:`Http.range`, which reads exactly the bytes asked for: a server
that sends more (endless data), ignores the Range header, or stalls is an
:class:`~fieldbox.errors.UpdateError`, never a longer read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface

from fieldbox import __version__
from fieldbox.errors import ConfigError, UpdateError

READ_SIZE = 64 * 1024
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, OSError)
"""What a dropped, reset or stalled connection raises (urllib3's ProtocolError, ReadTimeoutError, ...)."""


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
                    raise UpdateError(f"{url}: connection ended after {got} of {want} bytes")
                got += len(piece)
                self.received += len(piece)
                yield piece
        finally:
            if resp.length_remaining:  # more than asked for (or an abandoned read): never reuse it
                resp.close()
            resp.release_conn()


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
