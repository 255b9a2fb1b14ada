"""Serving the update repository's files as a static server or CDN would: GET/HEAD with byte ranges.

One range per request (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``): what the
update client sends to resume a download. A request outside the file is 416
with ``Content-Range: bytes */size``; several ranges are answered with the
whole file, as RFC 9110 allows. Paths are resolved inside the repository
only: ``..``, absolute paths and symlinks that lead out are 404. Cache hints
follow TUF's consistent snapshots: ``timestamp.json`` must be revalidated,
every other file never changes under its name.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SEND_SIZE = 64 * 1024


def resolve(root: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names inside ``root``, or None."""
    rel = unquote(relative).lstrip("/")
    if not rel or "\x00" in rel:
        return None
    base = root.resolve()
    try:
        path = (base / rel).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """``(start, end)`` (end exclusive) for a satisfiable single range, None for the whole file,
    False for an unsatisfiable one."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges or another unit: the whole file
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0:
            return False
        return (max(0, size - n), size)
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or (last and int(last) < start):
        return False
    return (start, end)


def send_file(handler: Any, path: Path, head: bool = False) -> None:
    """Answer a GET/HEAD for ``path`` on a ``BaseHTTPRequestHandler``."""
    size = path.stat().st_size
    wanted = parse_range(handler.headers.get("Range"), size)
    if wanted is False:
        handler.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        handler.send_header("Content-Range", f"bytes */{size}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    start, end = wanted if isinstance(wanted, tuple) else (0, size)
    handler.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(wanted, tuple) else HTTPStatus.OK)
    if isinstance(wanted, tuple):
        handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
    handler.send_header(
        "Content-Type", "application/json" if path.suffix == ".json" else "application/octet-stream"
    )
    handler.send_header("Content-Length", str(end - start))
    handler.send_header("Accept-Ranges", "bytes")
    immutable = path.name != "timestamp.json" and path.name != "root.json"
    handler.send_header("Cache-Control", "public, max-age=31536000, immutable" if immutable else "no-cache")
    handler.end_headers()
    if head:
        return
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            data = fh.read(min(SEND_SIZE, left))
            if not data:
                break
            handler.wfile.write(data)
            left -= len(data)
