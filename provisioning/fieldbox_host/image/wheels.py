"""aarch64 PyPI wheels for what Debian lacks (``image/wheels.txt``), laid into the rootfs.

``pip download --platform ... --only-binary=:all: --python-version 3.11 --no-deps``
fetches exactly the pinned aarch64 cp311 wheels (pip matches ``--platform``
tags literally, so every manylinux level we accept is listed). They are kept in
``build/cache/wheels/`` and unzipped into ``/usr/local/lib/python3.11/dist-packages``
(on Debian's ``sys.path``); their dependencies come from Debian packages.
"""

from __future__ import annotations

import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.kmods import read_patterns
from fieldbox_host.image.proc import run

log = logging.getLogger("fieldbox.image")

SITE = "usr/local/lib/python3.11/dist-packages"
PLATFORMS = (
    "manylinux_2_34_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
)


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the file it came from."""

    name: str
    version: str
    path: Path


def requirements(source: Path) -> list[tuple[str, str]]:
    """(name, version) pairs from ``image/wheels.txt``; every line must pin with ``==``."""
    out: list[tuple[str, str]] = []
    for line in read_patterns(source / "image/wheels.txt"):
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise ImageError(f"image/wheels.txt: {line!r} is not pinned", "write it as name==version")
        out.append((name.strip(), version.strip()))
    return out


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def _find(wheel_dir: Path, name: str, version: str) -> Path | None:
    for p in wheel_dir.glob("*.whl"):
        parts = p.name.split("-")
        if _norm(parts[0]) == _norm(name) and parts[1] == version:
            return p
    return None


def fetch(source: Path, cache_dir: Path) -> list[Wheel]:
    """Every pinned wheel, downloading the ones not in the cache."""
    wheel_dir = cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    out: list[Wheel] = []
    for name, version in requirements(source):
        found = _find(wheel_dir, name, version)
        if found is None:
            log.info("downloading wheel %s==%s (aarch64, cp311)", name, version)
            cmd: list[str | Path] = [
                sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "-d", wheel_dir,
            ]  # fmt: skip
            for plat in PLATFORMS:
                cmd += ["--platform", plat]
            run([*cmd, f"{name}=={version}"], what=f"pip download {name}=={version}")
            found = _find(wheel_dir, name, version)
            if found is None:
                raise ImageError(f"pip did not download an aarch64 wheel of {name}=={version}")
        out.append(Wheel(name, version, found))
    return out


SCRIPT = """#!/usr/bin/python3
# console script of the {dist} wheel
import sys

from {module} import {func}

sys.exit({func}())
"""


def console_scripts(entry_points: str) -> dict[str, tuple[str, str]]:
    """``[console_scripts]`` of an ``entry_points.txt``: name -> (module, function)."""
    out: dict[str, tuple[str, str]] = {}
    section = ""
    for raw in entry_points.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "console_scripts" and "=" in line:
            name, _, target = line.partition("=")
            module, _, func = target.strip().partition(":")
            if module and func:
                out[name.strip()] = (module.strip(), func.strip().split()[0])
    return out


def install(wheels: list[Wheel], root: Path) -> None:
    """Unzip each wheel into the rootfs' site-packages (``*.data/{purelib,platlib}`` merged in),
    and write its console scripts to ``/usr/local/bin``."""
    site = root / SITE
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel.path) as zf:
            for info in zf.infolist():
                name = info.filename
                first, _, rest = name.partition("/")
                if first.endswith(".data"):
                    kind, _, rest2 = rest.partition("/")
                    if kind not in ("purelib", "platlib") or not rest2:
                        continue
                    name = rest2
                target = site / name
                if not target.resolve().is_relative_to(site.resolve()):
                    raise ImageError(f"{wheel.path.name}: member {info.filename!r} escapes site-packages")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    dst.write(src.read())
                mode = (info.external_attr >> 16) & 0o777
                target.chmod(mode or 0o644)
            for name in zf.namelist():
                if name.endswith(".dist-info/entry_points.txt"):
                    scripts = console_scripts(zf.read(name).decode("utf-8"))
                    bindir = root / "usr/local/bin"
                    bindir.mkdir(parents=True, exist_ok=True)
                    for script, (module, func) in scripts.items():
                        path = bindir / script
                        path.write_text(SCRIPT.format(dist=wheel.name, module=module, func=func))
                        path.chmod(0o755)
