"""Run a build tool; a failure becomes one :class:`ImageError` line with the tool's last words."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from fieldbox_host.image.errors import ImageError

log = logging.getLogger("fieldbox.image")


def run(
    cmd: Sequence[str | Path],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    cwd: Path | None = None,
    stream: bool = False,
) -> str:
    """Run ``cmd``; return its stdout. On failure raise ``ImageError("<what> failed: ...")``.

    ``stream``: a long step (mmdebstrap: minutes) logs each line of the tool's output
    (stdout and stderr together) as it comes, indented under the step's header, with
    the seconds since the step began, and a "still running" line after
    :data:`HEARTBEAT_S` without output, instead of minutes of silence.
    """
    args = [str(a) for a in cmd]
    log.debug("run: %s", " ".join(args))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if stream:
        return _run_streaming(args, what, full_env, cwd)
    try:
        proc = subprocess.run(
            args,
            input=input_text,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        raise ImageError(f"{what} failed: {args[0]} is not installed", "run `make host-deps`") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit code {proc.returncode}"
        log.error("%s failed; its output:\n%s%s", what, proc.stdout[-4000:], proc.stderr[-4000:])
        raise ImageError(f"{what} failed: {tail}")
    return proc.stdout


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_dir() -> Path:
    """The project checkout this build runs from (holds ``image/`` and ``app/``)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "image" / "packages.txt").is_file() and (parent / "app" / "fieldbox").is_dir():
            return parent
    raise ImageError(
        "cannot find the fieldbox source tree (image/packages.txt, app/fieldbox)",
        "run the build from a checkout of the project (editable install)",
    )


HEARTBEAT_S = 20.0
"""A streamed step that prints nothing for this long gets a "still running" line."""


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip())
    lines.put(None)


def _run_streaming(args: list[str], what: str, env: dict[str, str], cwd: Path | None) -> str:
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    out: list[str] = []
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
                                cwd=cwd)  # fmt: skip
    except FileNotFoundError:
        raise ImageError(f"{what} failed: {args[0]} is not installed", "run `make host-deps`") from None
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    with proc:
        reader.start()
        last = ""
        while True:
            try:
                line = lines.get(timeout=HEARTBEAT_S)
            except queue.Empty:  # a quiet stretch (dpkg under qemu-user): say it is alive
                log.info("   %5.0fs | ... still running (%s)", time.monotonic() - started, last or what)
                continue
            if line is None:
                break
            out.append(line)
            tail.append(line)
            if line.strip():
                last = line.strip()[:80]
                log.info("   %5.0fs | %s", time.monotonic() - started, line[:200])
        reader.join()
    if proc.returncode != 0:
        said = [ln for ln in tail if ln.strip()]
        raise ImageError(f"{what} failed: {said[-1] if said else f'exit code {proc.returncode}'}")
    return "\n".join(out) + ("\n" if out else "")
