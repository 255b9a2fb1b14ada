"""Run a build tool; a failure becomes one :class:`ImageError` line with the tool's last words."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from fieldbox_host.image.errors import ImageError

log = logging.getLogger("fieldbox.image")


def run(
    cmd: Sequence[str | Path],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``cmd``; return its stdout. On failure raise ``ImageError("<what> failed: ...")``."""
    args = [str(a) for a in cmd]
    log.debug("run: %s", " ".join(args))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
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
